//! TLS to PostgreSQL through rustls, chosen by the URL's `sslmode`, against a
//! real server with a certificate signed by a throwaway CA.
#![cfg(feature = "postgres")]

#[path = "support/postgres.rs"]
mod postgres_server;

use std::time::Duration;

use postgres_server::{PostgresServer, TestDb, PASSWORD, USER};
use tower_llm_resilience::postgres::Postgres;

fn url(server: &PostgresServer, db: &str, sslmode: &str) -> String {
    format!(
        "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{db}?sslmode={sslmode}",
        server.port()
    )
}

/// (connections of ours, how many of them use TLS), as the server sees them.
fn our_connections(server: &PostgresServer, db: &str) -> String {
    server.psql(
        db,
        "SELECT count(*) || ',' || count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a
         JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'tower-llm-resilience'",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_selects_tls_and_the_certificate_is_verified() {
    let server = PostgresServer::start_tls();
    let db = server.create_database();

    // require + the CA: a verified TLS connection.
    let pg = Postgres::builder(&url(&server, &db, "require"))
        .system_roots(false)
        .root_certificates_pem(&server.ca_pem())
        .unwrap()
        .build()
        .unwrap();
    pg.migrate().await.expect("TLS with the right CA");
    assert_eq!(
        our_connections(&server, &db),
        "1,1",
        "the pooled connection uses TLS"
    );

    // require without trusting the CA: refused, with no secret in the error.
    let untrusted = Postgres::builder(&url(&server, &db, "require"))
        .system_roots(false)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let error = untrusted.migrate().await.unwrap_err();
    assert!(!error.to_string().contains(PASSWORD), "{error}");
    assert!(!untrusted.is_connected());

    // disable: plain TCP even though the server offers TLS.
    drop(pg);
    let db2 = server.create_database();
    let plain = Postgres::new(&url(&server, &db2, "disable")).unwrap();
    plain.migrate().await.unwrap();
    assert_eq!(our_connections(&server, &db2), "1,0");

    // A certificate that is not PEM is refused at build time.
    assert!(Postgres::builder(&url(&server, &db, "require"))
        .root_certificates_pem(b"not a certificate")
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_a_server_without_tls() {
    let db = TestDb::fresh();
    let pg = Postgres::new(&url(&db.server, &db.name, "require")).unwrap();
    let error = pg.migrate().await.unwrap_err();
    assert!(!error.to_string().contains(PASSWORD), "{error}");
    // prefer (the default) falls back to plain TCP.
    let prefer = Postgres::new(&url(&db.server, &db.name, "prefer")).unwrap();
    prefer.migrate().await.unwrap();
}
