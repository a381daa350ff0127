//! The [`JobStore`] contract, run against each implementation (memory, Redis,
//! PostgreSQL). Include with
//! `#[path = "support/job_store_contract.rs"] mod contract;`.
#![allow(dead_code)]

use std::time::{Duration, SystemTime};

use tower_llm_resilience::classify::FailureKind;
use tower_llm_resilience::jobs::{Claim, ItemState, JobStore, JOB_MAX_PAGE};
use tower_llm_resilience::partial_batch::ItemFailure;

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("item-{i:04}")).collect()
}

fn failure(kind: FailureKind) -> ItemFailure {
    ItemFailure {
        kind,
        message: "boom".into(),
        fatal: true,
    }
}

/// The store contract, run against each implementation.
pub async fn contract(store: &dyn JobStore) {
    let lease = Duration::from_secs(30);
    assert_eq!(store.progress("b").await.unwrap(), None, "unknown batch");
    let opened = store.open("b", &keys(3)).await.unwrap();
    assert_eq!(opened.to_submit, keys(3));
    let progress = store.progress("b").await.unwrap().unwrap();
    assert_eq!((progress.total, progress.pending), (3, 3));

    // One claim at a time; the holder renews; another owner waits.
    assert_eq!(
        store.claim("b", "item-0000", "w1/a", lease).await.unwrap(),
        Claim::Claimed {
            attempts: 0,
            paused_for: Duration::ZERO
        }
    );
    match store.claim("b", "item-0000", "w2/b", lease).await.unwrap() {
        Claim::Held(wait) => assert!(wait <= lease && wait > Duration::from_secs(25), "{wait:?}"),
        other => panic!("held expected, got {other:?}"),
    }
    assert!(store
        .renew("b", "item-0000", "w1/a", lease, true)
        .await
        .unwrap());
    assert!(!store
        .renew("b", "item-0000", "w2/b", lease, true)
        .await
        .unwrap());
    let progress = store.progress("b").await.unwrap().unwrap();
    assert_eq!((progress.in_flight, progress.pending), (1, 2));

    // Recorded once; a second success is not kept.
    assert!(store
        .succeed("b", "item-0000", "\"first\"", 1)
        .await
        .unwrap());
    assert!(!store
        .succeed("b", "item-0000", "\"second\"", 2)
        .await
        .unwrap());
    assert!(!store
        .fail("b", "item-0000", &failure(FailureKind::ServerError), 2)
        .await
        .unwrap());
    assert_eq!(
        store.claim("b", "item-0000", "w2/b", lease).await.unwrap(),
        Claim::Done
    );

    // A failure is final for this run; a release gives an item back.
    assert!(matches!(
        store.claim("b", "item-0001", "w1/c", lease).await.unwrap(),
        Claim::Claimed { .. }
    ));
    assert!(store
        .fail("b", "item-0001", &failure(FailureKind::BadRequest), 1)
        .await
        .unwrap());
    assert_eq!(
        store.claim("b", "item-0001", "w1/d", lease).await.unwrap(),
        Claim::Failed
    );
    assert!(matches!(
        store.claim("b", "item-0002", "w1/e", lease).await.unwrap(),
        Claim::Claimed { .. }
    ));
    store.release("b", "item-0002", "w1/e").await.unwrap();
    assert_eq!(
        store.claim("b", "item-0002", "w2/f", lease).await.unwrap(),
        Claim::Claimed {
            attempts: 1,
            paused_for: Duration::ZERO
        }
    );
    assert_eq!(
        store.claim("b", "missing", "w2/f", lease).await.unwrap(),
        Claim::Unknown
    );
    let progress = store.progress("b").await.unwrap().unwrap();
    assert_eq!(
        (
            progress.total,
            progress.done,
            progress.failed,
            progress.in_flight,
            progress.pending
        ),
        (3, 1, 1, 1, 0)
    );

    // Re-opened: done and running items are left alone, the failed one runs again.
    let again = store.open("b", &keys(3)).await.unwrap();
    assert_eq!(again.to_submit, ["item-0001"]);
    assert_eq!((again.already_done, again.running), (1, 1));

    // Items in key order, paged; the states carry results and attempts.
    let first = store.items("b", None, 2).await.unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.items[0].0, "item-0000");
    assert_eq!(
        first.items[0].1,
        ItemState::Done {
            response_json: "\"first\"".into(),
            attempts: 1
        }
    );
    assert_eq!(first.items[1].1, ItemState::Pending { attempts: 1 });
    let next = first.next.expect("a second page");
    let second = store.items("b", Some(&next), 2).await.unwrap();
    assert_eq!(second.items.len(), 1);
    assert_eq!(second.items[0].0, "item-0002");
    assert!(matches!(second.items[0].1, ItemState::Running { .. }));
    assert_eq!(second.next, None);

    // A pause: the later one wins, a past one is none.
    assert_eq!(store.paused_until("b").await.unwrap(), None);
    let soon = SystemTime::now() + Duration::from_secs(2);
    store.pause("b", soon).await.unwrap();
    store
        .pause("b", SystemTime::now() + Duration::from_secs(1))
        .await
        .unwrap();
    let until = store.paused_until("b").await.unwrap().expect("paused");
    let off = until.duration_since(soon).unwrap_or_else(|e| e.duration());
    assert!(off < Duration::from_millis(5), "{off:?}");
    // A claim says how long the batch is still paused.
    match store.claim("b", "item-0001", "w3/g", lease).await.unwrap() {
        Claim::Claimed { paused_for, .. } => assert!(
            paused_for > Duration::from_millis(1500) && paused_for <= Duration::from_secs(2),
            "{paused_for:?}"
        ),
        other => panic!("{other:?}"),
    }

    // Bounds: keys up to 512 bytes.
    let long = "k".repeat(513);
    assert!(store.open("b", std::slice::from_ref(&long)).await.is_err());
    assert!(store.open(&long, &keys(1)).await.is_err());

    // Pages: at most JOB_MAX_PAGE items, however many are asked; at least one.
    let many: Vec<String> = (0..=JOB_MAX_PAGE).map(|i| format!("item-{i:05}")).collect();
    store.open("big", &many).await.unwrap();
    let page = store.items("big", None, usize::MAX).await.unwrap();
    assert_eq!(page.items.len(), JOB_MAX_PAGE);
    let next = page.next.expect("one more item");
    let last = store.items("big", Some(&next), usize::MAX).await.unwrap();
    assert_eq!(last.items.len(), 1);
    assert_eq!(last.next, None);
    assert_eq!(store.items("big", None, 0).await.unwrap().items.len(), 1);
}
