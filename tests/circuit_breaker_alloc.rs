//! The closed path of the circuit breaker allocates nothing per call.
//! (One test in its own binary: the counting allocator is process-wide.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use tower::{service_fn, Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::CircuitBreakerLayer;
use tower_llm_resilience::classify::ErrorOnlyClassifier;

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
    S: Service<&'static str>,
    S::Error: std::fmt::Debug,
{
    // Warm up (first keyed call creates its circuit).
    svc.ready().await.unwrap().call("gpt").await.unwrap();
    // The counter is process-wide: another thread of the test harness may
    // allocate during a round. The fewest allocations of three rounds of 1,000
    // calls is 0 unless the calls themselves allocate (then it is >= 1,000).
    let mut fewest = usize::MAX;
    for _ in 0..3 {
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        for _ in 0..1000 {
            svc.ready().await.unwrap().call("gpt").await.unwrap();
        }
        fewest = fewest.min(ALLOCATIONS.load(Ordering::SeqCst) - before);
    }
    fewest
}

#[test]
fn no_allocation_per_call_on_the_closed_path() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let inner = service_fn(|req: &'static str| async move { Ok::<_, std::io::Error>(req) });

        let layer = CircuitBreakerLayer::builder()
            .classifier(ErrorOnlyClassifier)
            .build()
            .unwrap();
        let mut single = layer.layer(inner);
        assert_eq!(allocations_per_call(&mut single).await, 0, "single circuit");

        let keyed = CircuitBreakerLayer::builder()
            .key_by(|model: &&'static str| *model)
            .classifier(ErrorOnlyClassifier)
            .build()
            .unwrap();
        let mut keyed = keyed.layer(inner);
        assert_eq!(allocations_per_call(&mut keyed).await, 0, "keyed circuit");

        // The probe: the counter does see allocations.
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        drop(std::hint::black_box(Box::new(1u64)));
        assert!(ALLOCATIONS.load(Ordering::SeqCst) > before);
    });
}
