//! The floor for `bench/load.sh`: a bare hyper forwarder with nothing in
//! between (no parsing, no layers, no metrics), served the way `llm-proxy`
//! serves (one current-thread runtime, listener and upstream pool per worker).
//! Whatever it adds to the upstream's latency is the cost of one more hop on
//! the machine, not of the proxy's work.
//!
//! ```text
//! cargo run --release -p llm-proxy --example bare_forward -- http://127.0.0.1:9001 [WORKERS]
//! ```
//! It prints `listening on http://ADDR` and forwards every request, method,
//! path and body, to the upstream.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower_llm_resilience::BoxError;

type Upstream = Client<HttpConnector, Full<Bytes>>;

async fn forward(
    client: Upstream,
    upstream: http::uri::Authority,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, BoxError> {
    let (mut parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = http::Uri::builder()
        .scheme("http")
        .authority(upstream)
        .path_and_query(path)
        .build()?;
    parts.headers.remove(http::header::HOST);
    let response = client
        .request(hyper::Request::from_parts(parts, Full::new(body)))
        .await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(hyper::Response::from_parts(parts, Full::new(body)))
}

async fn serve(listener: std::net::TcpListener, upstream: http::uri::Authority) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                forward(client.clone(), upstream.clone(), request)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let upstream: http::Uri = args
        .next()
        .ok_or("usage: bare_forward http://UPSTREAM [WORKERS]")?
        .parse()?;
    let upstream = upstream
        .authority()
        .cloned()
        .ok_or("the upstream needs a host and port")?;
    let workers: usize = match args.next() {
        Some(n) => n.parse()?,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let listeners = llm_proxy::bind_listeners(SocketAddr::from(([127, 0, 0, 1], 0)), workers)?;
    let addr = listeners[0].local_addr()?;
    println!("listening on http://{addr}");
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    runtime.block_on(serve(listener, upstream));
                }
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}
