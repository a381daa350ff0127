//! A FallbackLayer whose primary answers allocates nothing per call beyond what
//! cloning the request costs. (One test in its own binary: the counting allocator
//! is process-wide.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use tower::{service_fn, Layer, Service, ServiceExt};
use tower_llm_resilience::classify::ErrorOnlyClassifier;
use tower_llm_resilience::fallback::{FallbackLayer, Marked};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

async fn allocations_per_call<S>(svc: &mut S) -> usize
where
    S: Service<&'static str, Response = Marked<&'static str>>,
    S::Error: std::fmt::Debug,
{
    let answer = svc.ready().await.unwrap().call("hi").await.unwrap();
    assert!(answer.degraded.is_none());
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for _ in 0..1000 {
        svc.ready().await.unwrap().call("hi").await.unwrap();
    }
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

#[test]
fn no_allocation_per_call_when_the_primary_answers() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let answer = |req: &'static str| async move { Ok::<_, std::io::Error>(Marked::new(req)) };
        let layer = FallbackLayer::builder()
            .classifier(ErrorOnlyClassifier)
            .alternate("secondary", service_fn(answer))
            .final_responder("template", |_| Marked::new("sorry"))
            .build()
            .unwrap();
        let mut plain = layer.layer(service_fn(answer));
        assert_eq!(allocations_per_call(&mut plain).await, 0);

        // The same with a failing primary allocates (boxed alternate call, marker):
        // the counter does see this layer's allocations.
        let failing = |_: &'static str| async {
            Err::<Marked<&'static str>, _>(std::io::Error::other("down"))
        };
        let mut degraded = layer.layer(service_fn(failing));
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        let answer = degraded.ready().await.unwrap().call("hi").await.unwrap();
        assert!(answer.degraded.is_some());
        assert!(ALLOCATIONS.load(Ordering::SeqCst) > before);
    });
}
