//! A real PostgreSQL (Debian's `postgresql` package) for the tests of one binary:
//! `initdb` into a temporary directory, started on a free port as an unprivileged
//! user (postgres refuses to run as root), one fresh database per test, stopped when
//! the last test using it lets go. Include with
//! `#[path = "support/postgres.rs"] mod postgres_server;`.
//!
//! The server listens on 127.0.0.1 only, with a password (scram-sha-256) on TCP, so
//! the stores connect as a deployment would; the harness itself creates databases
//! through the unix socket in the temporary directory.
#![allow(dead_code)]

#[path = "postgres_certs.rs"]
mod certs;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How long a starting server may take before the test gives up.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// The superuser the tests connect as, and its password (a throwaway server).
pub const USER: &str = "tower";
pub const PASSWORD: &str = "pg-test-secret-7f3a";
/// The unprivileged account the server runs as when the tests run as root.
const RUN_AS_UID: u32 = 65534;
const RUN_AS_GID: u32 = 65534;

/// The directory of `initdb`, `postgres`, `psql` and `pg_isready`.
pub fn bindir() -> Option<PathBuf> {
    let has_postgres = |dir: &Path| dir.join("postgres").exists() && dir.join("initdb").exists();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_postgres(&dir) {
            return Some(dir);
        }
    }
    // Debian: /usr/lib/postgresql/<major>/bin, newest first.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, dir)| has_postgres(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A PostgreSQL server in a temporary directory.
pub struct PostgresServer {
    bindir: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Mutex<Option<Child>>,
    as_root: bool,
    databases: AtomicU32,
    /// `fsync=on`: durable against a machine crash (benchmarks), not only a
    /// server crash (tests).
    fsync: bool,
    /// TLS on (a certificate signed by a throwaway CA, for 127.0.0.1).
    tls: bool,
}

/// One test's database on a (shared) server.
pub struct TestDb {
    pub server: Arc<PostgresServer>,
    pub name: String,
}

impl TestDb {
    /// A fresh database on this binary's shared server (started if needed).
    pub fn fresh() -> Self {
        let server = PostgresServer::shared();
        let name = server.create_database();
        Self { server, name }
    }

    /// A fresh database on a server of its own (for tests that stop it).
    pub fn on_own_server() -> Self {
        let server = Arc::new(PostgresServer::start());
        let name = server.create_database();
        Self { server, name }
    }

    /// The connection URL, password included.
    pub fn url(&self) -> String {
        self.server.url(&self.name)
    }
}

impl PostgresServer {
    /// The server of this test binary: started by the first test that asks,
    /// stopped when the last test holding it drops it.
    pub fn shared() -> Arc<Self> {
        static SHARED: Mutex<Weak<PostgresServer>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(server) = shared.upgrade() {
            return server;
        }
        let server = Arc::new(Self::start());
        *shared = Arc::downgrade(&server);
        server
    }

    /// `initdb` and start a server of its own.
    pub fn start() -> Self {
        Self::start_with(false, false)
    }

    /// A server that also accepts TLS, with a certificate for `127.0.0.1` signed
    /// by a throwaway CA ([`ca_pem`](Self::ca_pem)).
    pub fn start_tls() -> Self {
        Self::start_with(false, true)
    }

    /// A server that flushes every commit to disk (`fsync=on`), as in production:
    /// for benchmarks that compare durable stores.
    pub fn start_durable() -> Self {
        Self::start_with(true, false)
    }

    fn start_with(fsync: bool, tls: bool) -> Self {
        let bindir = bindir().expect("PostgreSQL is installed (apt-get install postgresql)");
        let dir = tempfile::Builder::new()
            .prefix("pg")
            .tempdir()
            .expect("a temp dir");
        let as_root = running_as_root();
        let server = Self {
            bindir,
            dir,
            port: free_port(),
            child: Mutex::new(None),
            as_root,
            databases: AtomicU32::new(0),
            fsync,
            tls,
        };
        server.init();
        if tls {
            let owner = as_root.then_some((RUN_AS_UID, RUN_AS_GID));
            certs::make(server.dir.path(), owner);
        }
        server.spawn();
        server
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn socket_dir(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// A command for a PostgreSQL binary, run as the unprivileged user when the
    /// tests run as root.
    fn command(&self, program: &str) -> Command {
        let program = self.bindir.join(program);
        if self.as_root {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={RUN_AS_UID}"))
                .arg(format!("--regid={RUN_AS_GID}"))
                .arg("--clear-groups")
                .arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }

    fn init(&self) {
        let pwfile = self.dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("write the password file");
        if self.as_root {
            for path in [self.dir.path(), pwfile.as_path()] {
                std::os::unix::fs::chown(path, Some(RUN_AS_UID), Some(RUN_AS_GID))
                    .expect("hand the temp dir to the unprivileged user");
            }
        }
        let (data, pwfile) = (self.data_dir(), pwfile.display().to_string());
        let out = self
            .command("initdb")
            .args(["-D", &data, "-U", USER, "--pwfile", &pwfile, "-E", "UTF8"])
            .args([
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-locale",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn spawn(&self) {
        let path = |name: &str| self.dir.path().join(name).display().to_string();
        let mut settings = vec![
            "listen_addresses=127.0.0.1".to_owned(),
            format!("unix_socket_directories={}", self.socket_dir()),
            "max_connections=300".to_owned(),
            // Without fsync: durable against a crash of the server process (the
            // OS keeps its writes), not of the machine; enough for tests, and fast.
            format!("fsync={}", if self.fsync { "on" } else { "off" }),
            "log_min_messages=fatal".to_owned(),
        ];
        if self.tls {
            settings.push("ssl=on".to_owned());
            settings.push(format!("ssl_cert_file={}", path("server.crt")));
            settings.push(format!("ssl_key_file={}", path("server.key")));
        }
        let child = self
            .command("postgres")
            .args(["-D", &self.data_dir(), "-p", &self.port.to_string()])
            .args(settings.iter().flat_map(|setting| ["-c", setting]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        *self.child.lock().unwrap() = Some(child);
        self.wait_ready();
    }

    /// The CA that signed a TLS server's certificate, as PEM.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("ca.crt")).expect("a TLS server has a CA")
    }

    /// Polls `pg_isready` until the server accepts connections (bounded).
    fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("postgres exited at start: {status}");
            }
            let ready = Command::new(self.bindir.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return;
            }
            assert!(
                started.elapsed() < START_DEADLINE,
                "postgres did not start within {START_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name`, password included.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{name}?sslmode=disable",
            self.port
        )
    }

    /// Runs one SQL statement through the unix socket (as the superuser).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let out = Command::new(self.bindir.join("psql"))
            .args([
                "-h",
                &self.socket_dir(),
                "-p",
                &port,
                "-U",
                USER,
                "-d",
                database,
            ])
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Creates a new, empty database and returns its name.
    pub fn create_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("test_{n}");
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// Stops the server at once (immediate shutdown: no checkpoint, as in a
    /// crash; the next start recovers from the write-ahead log).
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            // SIGQUIT: immediate shutdown. The server may run as another user;
            // `kill` as root reaches it.
            let _ = Command::new("kill")
                .arg("-QUIT")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&self) {
        self.stop();
        self.spawn();
    }
}

/// A table of one database held `ACCESS EXCLUSIVE` by another session (a
/// stalled store, for tests), until [`release`](Self::release) or drop.
pub struct TableLock {
    server: Arc<PostgresServer>,
    database: String,
    marker: String,
    session: Option<std::thread::JoinHandle<()>>,
}

impl TableLock {
    /// Locks `table` of `database` from a session of its own and returns once
    /// the lock is granted (within 10 s).
    pub fn hold(server: &Arc<PostgresServer>, database: &str, table: &str) -> TableLock {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // A comment no other query carries: how `release` finds the session.
        let marker = format!(
            "table-lock-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let (holder, name) = (server.clone(), database.to_owned());
        let sql = format!(
            "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; \
             SELECT pg_sleep(60) /* {marker} */; COMMIT;"
        );
        let session = std::thread::spawn(move || {
            // Ended by `release`: psql then fails, as meant.
            let _ = std::panic::catch_unwind(|| holder.psql(&name, &sql));
        });
        let granted = format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE c.relname = '{table}' AND l.mode = 'AccessExclusiveLock' AND l.granted"
        );
        let started = Instant::now();
        while server.psql(database, &granted) != "1" {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{table} is not locked"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        TableLock {
            server: server.clone(),
            database: database.to_owned(),
            marker,
            session: Some(session),
        }
    }

    /// Ends the holding session (its transaction rolls back) and waits for it.
    pub fn release(mut self) {
        self.end();
    }

    fn end(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        self.server.psql(
            &self.database,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE query LIKE '%{}%' AND pid <> pg_backend_pid()",
                self.marker
            ),
        );
        let _ = session.join();
    }
}

impl Drop for TableLock {
    fn drop(&mut self) {
        self.end();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(feature = "postgres")]
impl TestDb {
    /// The library's handle on this database (no connection yet).
    pub fn postgres(&self) -> tower_llm_resilience::postgres::Postgres {
        tower_llm_resilience::postgres::Postgres::builder(&self.url())
            .pool_size(8)
            .connect_timeout(Duration::from_secs(2))
            .op_timeout(Duration::from_secs(5))
            .build()
            .expect("a valid test URL")
    }

    /// [`postgres`](Self::postgres), with the schema migrated.
    pub async fn migrated(&self) -> tower_llm_resilience::postgres::Postgres {
        let pg = self.postgres();
        pg.migrate().await.expect("migrations apply");
        pg
    }
}
