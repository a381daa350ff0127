//! The PostgreSQL test harness itself: a server per binary, a fresh database per
//! test, data kept across a crash and restart.

#[path = "support/postgres.rs"]
mod postgres_server;

use postgres_server::{PostgresServer, TestDb};

#[test]
fn databases_are_fresh_and_the_server_is_shared() {
    let a = TestDb::fresh();
    let b = TestDb::fresh();
    assert_ne!(a.name, b.name);
    assert!(std::sync::Arc::ptr_eq(&a.server, &b.server));
    a.server.psql(&a.name, "CREATE TABLE t (n int)");
    a.server.psql(&a.name, "INSERT INTO t VALUES (7)");
    assert_eq!(a.server.psql(&a.name, "SELECT n FROM t"), "7");
    // The other database has no such table.
    assert_eq!(
        b.server.psql(
            &b.name,
            "SELECT count(*) FROM pg_tables WHERE tablename = 't'"
        ),
        "0"
    );
    assert!(a.url().contains("127.0.0.1"));
}

#[test]
fn the_server_runs_unprivileged_and_keeps_data_across_a_crash() {
    let db = TestDb::on_own_server();
    let user = db
        .server
        .psql(&db.name, "SELECT current_setting('data_directory')");
    assert!(!user.is_empty());
    // Postgres refuses root: it started, so it runs as an unprivileged user.
    db.server.psql(&db.name, "CREATE TABLE kept (n int)");
    db.server.psql(&db.name, "INSERT INTO kept VALUES (1), (2)");
    db.server.restart();
    assert_eq!(db.server.psql(&db.name, "SELECT sum(n) FROM kept"), "3");
    let port = db.server.port();
    drop(db);
    // Stopped on drop: nothing listens on its port any more.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn a_server_of_its_own_is_not_the_shared_one() {
    let shared = PostgresServer::shared();
    let own = TestDb::on_own_server();
    assert_ne!(shared.port(), own.server.port());
}
