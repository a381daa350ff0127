//! How OpenAI-compatible upstreams are reached: hyper for `http://` (a client
//! per serving thread), reqwest for `https://`, and transport failures
//! classified like reqwest's.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_llm_resilience::classify::{classify_dyn_error, ClassifiedError, FailureKind};
use tower_llm_resilience::BoxError;

use crate::config::ConfigError;

/// The HTTP clients of the upstreams.
///
/// Plain-HTTP upstreams use one hyper client per thread: each serving thread
/// keeps its own upstream connections, driven by its own runtime, so a request
/// never waits on another thread. HTTPS upstreams share one reqwest client.
#[derive(Clone, Debug)]
pub(crate) struct HttpClients {
    pub(super) plain: PoolSettings,
    pub(super) reqwest: reqwest::Client,
}

/// How plain-HTTP pools are set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PoolSettings {
    max_idle: usize,
    connect_timeout: Duration,
}

type PlainClient = hyper_util::client::legacy::Client<HttpConnector, http_body_util::Full<Bytes>>;

thread_local! {
    /// This thread's plain-HTTP clients, by settings (in practice one).
    static PLAIN: RefCell<Vec<(PoolSettings, PlainClient)>> = const { RefCell::new(Vec::new()) };
}

impl PoolSettings {
    fn client(self) -> PlainClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(self.connect_timeout));
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(self.max_idle)
            .pool_timer(TokioTimer::new())
            .build(connector)
    }

    /// Send on this thread's client.
    fn request(
        self,
        request: http::Request<http_body_util::Full<Bytes>>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        PLAIN.with(|clients| {
            let mut clients = clients.borrow_mut();
            let index = match clients.iter().position(|(settings, _)| *settings == self) {
                Some(index) => index,
                None => {
                    clients.push((self, self.client()));
                    clients.len() - 1
                }
            };
            clients[index].1.request(request)
        })
    }
}

impl HttpClients {
    /// Pools of up to `max_idle` idle connections per host; `connect_timeout` for
    /// new connections.
    pub(crate) fn new(max_idle: usize, connect_timeout: Duration) -> Result<Self, ConfigError> {
        let reqwest = reqwest::Client::builder()
            .pool_max_idle_per_host(max_idle)
            .tcp_nodelay(true)
            .connect_timeout(connect_timeout)
            .build()
            .map_err(|e| ConfigError(format!("HTTP client: {e}")))?;
        Ok(Self {
            plain: PoolSettings {
                max_idle,
                connect_timeout,
            },
            reqwest,
        })
    }
}

/// How an OpenAI-compatible upstream is reached.
pub(super) enum Transport {
    /// `http://`: hyper, nothing in between (a client per thread).
    Plain {
        pool: PoolSettings,
        /// The `Host` header, made once (hyper would format it per request).
        host: Option<HeaderValue>,
    },
    /// `https://`: reqwest with rustls.
    Reqwest(reqwest::Client),
}

/// An upstream's response body, whichever the transport.
pub(super) type UpstreamBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

impl Transport {
    /// Send `request`; transport failures come back classified (connect,
    /// timeout...) so the circuit and the fallback judge them like reqwest's.
    pub(super) async fn send(
        &self,
        upstream: &Arc<str>,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<UpstreamBody>, BoxError> {
        match self {
            Transport::Plain { pool, host } => {
                let mut request = request;
                if let Some(host) = host {
                    request
                        .headers_mut()
                        .insert(http::header::HOST, host.clone());
                }
                let response = pool
                    .request(request.map(http_body_util::Full::new))
                    .await
                    .map_err(|e| hyper_client_error(upstream, e))?;
                let name = upstream.clone();
                Ok(response.map(|body| {
                    body.map_err(move |e| hyper_body_error(&name, e))
                        .boxed_unsync()
                }))
            }
            Transport::Reqwest(client) => {
                let request = reqwest::Request::try_from(request)?;
                let response = client.execute(request).await?;
                Ok(http::Response::from(response)
                    .map(|body| body.map_err(BoxError::from).boxed_unsync()))
            }
        }
    }
}

/// The `Host` header for `uri`, as hyper-util writes it: the host, and the port
/// unless it is the scheme's default.
pub(super) fn host_header(uri: &http::Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let value = match uri.port_u16() {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    HeaderValue::try_from(value).ok()
}

/// The kind of a hyper error: timeouts, connections that broke or closed, and
/// answers that are not HTTP.
fn hyper_kind(e: &hyper::Error) -> FailureKind {
    if e.is_timeout() {
        FailureKind::Timeout
    } else if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        FailureKind::InvalidResponse
    } else {
        // Closed, canceled, incomplete message, body write aborted, io errors.
        match std::error::Error::source(e).map(classify_dyn_error) {
            Some(FailureKind::Timeout) => FailureKind::Timeout,
            _ => FailureKind::Connect,
        }
    }
}

fn hyper_client_error(upstream: &str, e: hyper_util::client::legacy::Error) -> BoxError {
    let kind = if e.is_connect() {
        FailureKind::Connect
    } else {
        match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<hyper::Error>()) {
            Some(hyper) => hyper_kind(hyper),
            None => FailureKind::Connect,
        }
    };
    let detail = match std::error::Error::source(&e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    };
    ClassifiedError::new(kind, format!("upstream {upstream}: {detail}")).into()
}

fn hyper_body_error(upstream: &str, e: hyper::Error) -> BoxError {
    // A body that ends before its announced length (or its last chunk) is an
    // answer cut short: invalid, whatever closed the connection.
    let cut_short = e.is_incomplete_message()
        || std::error::Error::source(&e)
            .and_then(|source| source.downcast_ref::<std::io::Error>())
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof);
    let kind = if cut_short {
        FailureKind::InvalidResponse
    } else {
        hyper_kind(&e)
    };
    ClassifiedError::new(
        kind,
        format!("upstream {upstream}: reading the answer: {e}"),
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_name_the_port_unless_it_is_the_default() {
        let host = |uri: &str| host_header(&uri.parse().unwrap()).unwrap();
        assert_eq!(
            host("http://127.0.0.1:9001/v1/chat/completions"),
            "127.0.0.1:9001"
        );
        assert_eq!(
            host("http://models.internal/v1/chat/completions"),
            "models.internal"
        );
        assert_eq!(host("http://models.internal:80/v1"), "models.internal");
        assert_eq!(host("http://[::1]:8000/v1"), "[::1]:8000");
    }
}
