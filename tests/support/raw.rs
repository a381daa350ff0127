//! A raw TCP upstream on 127.0.0.1 that writes hand-made HTTP/1.1 bytes: answers
//! a well-behaved server would never send (a body shorter than its
//! `Content-Length`, a close-delimited body cut short, a stream closed cleanly
//! without its terminal event, a stream held open forever).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One step of a raw answer.
#[derive(Clone, Debug)]
pub enum Raw {
    /// Write these bytes.
    Write(Vec<u8>),
    /// Wait (paused-time friendly).
    Wait(Duration),
    /// Keep the connection open, silent, until the client goes away.
    Hold,
}

impl Raw {
    pub fn text(text: &str) -> Raw {
        Raw::Write(text.as_bytes().to_vec())
    }

    /// A response head with `Connection: close` and these extra header lines.
    pub fn head(status: u16, headers: &[(&str, &str)]) -> Raw {
        let mut head = format!("HTTP/1.1 {status} X\r\nconnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        Raw::Write(head.into_bytes())
    }

    /// The head of a close-delimited event stream (no length, not chunked).
    pub fn sse_head() -> Raw {
        Raw::head(200, &[("content-type", "text/event-stream")])
    }
}

/// A running raw upstream: each connection gets the same steps, then is closed
/// (cleanly, with FIN) unless a step holds it.
#[derive(Clone)]
pub struct RawUpstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl RawUpstream {
    pub async fn start(steps: Vec<Raw>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let steps = steps.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, &steps, &counter).await;
                });
            }
        });
        RawUpstream { addr, hits }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn serve(mut stream: TcpStream, steps: &[Raw], hits: &AtomicUsize) -> std::io::Result<()> {
    read_request(&mut stream).await?;
    hits.fetch_add(1, Ordering::SeqCst);
    for step in steps {
        match step {
            Raw::Write(bytes) => stream.write_all(bytes).await?,
            Raw::Wait(wait) => tokio::time::sleep(*wait).await,
            Raw::Hold => {
                // Until the client closes its side.
                let mut sink = [0u8; 256];
                while stream.read(&mut sink).await? > 0 {}
                return Ok(());
            }
        }
    }
    stream.shutdown().await
}

/// Read one request: its head, then as many body bytes as it announces.
async fn read_request(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}
