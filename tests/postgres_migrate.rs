//! Embedded migrations on a real PostgreSQL: applied once however many instances
//! start together; an edited migration is refused; the URL's password never shows.
#![cfg(feature = "postgres")]

#[path = "support/postgres.rs"]
mod postgres_server;

use std::time::Duration;

use postgres_server::{TestDb, PASSWORD};
use tower_llm_resilience::postgres::{ConfigError, MigrateError, Postgres, SCHEMA_VERSION};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_leave_one_schema() {
    let db = TestDb::fresh();
    // Two instances (two pools) starting at once, several times over.
    let (a, b) = (db.postgres(), db.postgres());
    let (on_a, on_b, on_a2) = tokio::join!(a.migrate(), b.migrate(), a.migrate());
    let runs = [on_a.unwrap(), on_b.unwrap(), on_a2.unwrap()];
    let all: Vec<i64> = (1..=SCHEMA_VERSION).collect();
    // Exactly one applied everything; the others found nothing to do.
    assert_eq!(
        runs.iter().filter(|r| r.applied == all).count(),
        1,
        "{runs:?}"
    );
    assert_eq!(
        runs.iter().filter(|r| r.applied.is_empty()).count(),
        2,
        "{runs:?}"
    );
    assert!(runs.iter().all(|r| r.current == SCHEMA_VERSION));
    let recorded = db.server.psql(
        &db.name,
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM tower_llm_schema_migrations",
    );
    let expected: Vec<String> = all.iter().map(i64::to_string).collect();
    assert_eq!(recorded, expected.join(","));
    assert_eq!(
        db.server.psql(
            &db.name,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'tower_llm_escalations'"
        ),
        "1"
    );
    // Later starts apply nothing.
    assert!(b.migrate().await.unwrap().applied.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_migration_is_refused() {
    let db = TestDb::fresh();
    let pg = db.migrated().await;
    db.server.psql(
        &db.name,
        "UPDATE tower_llm_schema_migrations SET checksum = 'edited' WHERE version = 1",
    );
    let error = pg.migrate().await.unwrap_err();
    assert!(
        matches!(error, MigrateError::Modified { version: 1 }),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_shows_and_a_dead_server_fails_in_bounded_time() {
    let db = TestDb::fresh();
    let pg = db.migrated().await;
    let shown = format!("{pg:?}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(shown.contains(&db.name), "{shown}");

    // A URL that cannot be parsed is refused without being echoed.
    let bad = format!("postgres://tower:{PASSWORD}@127.0.0.1:notaport/x");
    let error = Postgres::new(&bad).unwrap_err();
    assert!(matches!(error, ConfigError::InvalidUrl(_)));
    assert!(!error.to_string().contains(PASSWORD), "{error}");
    assert!(matches!(
        Postgres::builder(&db.url()).pool_size(0).build(),
        Err(ConfigError::Zero("pool_size"))
    ));

    // Nothing listens on this port: migrate fails with a clear error, quickly.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = Postgres::builder(&format!(
        "postgres://tower:{PASSWORD}@127.0.0.1:{port}/x?sslmode=disable"
    ))
    .connect_timeout(Duration::from_secs(1))
    .build()
    .unwrap();
    let started = std::time::Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(10), dead.migrate())
        .await
        .expect("bounded")
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!error.to_string().contains(PASSWORD), "{error}");
    assert!(!dead.is_connected());
    assert!(dead.ping().await.is_err());
    assert!(pg.is_connected());
    pg.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployments_share_a_database_in_separate_schemas() {
    let db = TestDb::fresh();
    db.server
        .psql(&db.name, "CREATE SCHEMA team_a; CREATE SCHEMA team_b");
    let in_schema = |schema: &str| {
        Postgres::new(&format!("{}&options=-c%20search_path%3D{schema}", db.url())).unwrap()
    };
    let (a, b) = (in_schema("team_a"), in_schema("team_b"));
    assert_eq!(a.migrate().await.unwrap().current, SCHEMA_VERSION);
    assert_eq!(b.migrate().await.unwrap().current, SCHEMA_VERSION);
    assert_eq!(
        db.server.psql(
            &db.name,
            "SELECT string_agg(schemaname, ',' ORDER BY schemaname) FROM pg_tables
             WHERE tablename = 'tower_llm_escalations'"
        ),
        "team_a,team_b"
    );
}
