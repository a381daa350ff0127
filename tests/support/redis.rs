//! A real `redis-server` for one test: random free port, no persistence unless
//! asked, killed on drop. Include with
//! `#[path = "support/redis.rs"] mod redis_server;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server may take before the test gives up.
const START_DEADLINE: Duration = Duration::from_secs(20);

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// With persistence: the directory of the append-only file (kept across restarts).
    dir: Option<tempfile::TempDir>,
}

/// The `redis-server` binary, if installed.
pub fn binary() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/bin/redis-server");
    if debian.exists() {
        return Some(debian);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.exists())
    })
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}

impl RedisServer {
    /// A throwaway server: `--save "" --appendonly no`.
    pub fn start() -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: None,
        };
        server.spawn();
        server
    }

    /// A server that writes every change through to an append-only file
    /// (`appendfsync always`), so a crash loses nothing acknowledged.
    pub fn start_persistent() -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: Some(tempfile::tempdir().expect("a temp dir")),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let binary = binary().expect("redis-server is installed (apt-get install redis-server)");
        let mut cmd = Command::new(binary);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .arg("--loglevel")
            .arg("warning")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match &self.dir {
            Some(dir) => {
                cmd.arg("--dir")
                    .arg(dir.path())
                    .arg("--appendonly")
                    .arg("yes")
                    .arg("--appendfsync")
                    .arg("always");
            }
            None => {
                cmd.arg("--appendonly").arg("no");
            }
        }
        self.child = Some(cmd.spawn().expect("start redis-server"));
        self.wait_ready();
    }

    /// Polls until the server answers PING (bounded; short real waits).
    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("redis-server exited at start: {status}");
            }
            if self.ping() {
                return;
            }
            assert!(
                started.elapsed() < START_DEADLINE,
                "redis-server did not start within {START_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a valid redis url")
    }

    /// Kills the server (SIGKILL: a crash, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (and, if persistent, the same data).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
