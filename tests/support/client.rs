//! A real HTTP client tier for tests: a tower service that sends an
//! `http::Request<Bytes>` to a test upstream over loopback (hyper-util's client).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::Service;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A streaming response body.
pub type Body = BoxBody<Bytes, BoxError>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// Sends each request to `base` (keeping the request's path), streaming the answer.
#[derive(Clone, Debug)]
pub struct HttpTier {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

/// A tier that calls `base` (`http://127.0.0.1:PORT`).
pub fn http_tier(base: impl Into<String>) -> HttpTier {
    HttpTier {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base: base.into(),
    }
}

impl HttpTier {
    /// The same tier, reading each answer's whole body before returning it.
    pub fn buffered(self) -> BufferedTier {
        BufferedTier(self)
    }
}

impl Service<http::Request<Bytes>> for HttpTier {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Bytes>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let client = self.client.clone();
        let uri = format!("{}{}", self.base, path);
        Box::pin(async move {
            parts.uri = uri.parse()?;
            let request = http::Request::from_parts(parts, Full::new(body));
            let response = client.request(request).await?;
            Ok(response.map(|body| body.map_err(BoxError::from).boxed()))
        })
    }
}

/// An [`HttpTier`] whose responses are fully read (`http::Response<Bytes>`), for
/// classifiers that read bodies.
#[derive(Clone, Debug)]
pub struct BufferedTier(HttpTier);

impl Service<http::Request<Bytes>> for BufferedTier {
    type Response = http::Response<Bytes>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Bytes>) -> Self::Future {
        let response = self.0.call(request);
        Box::pin(async move {
            let (parts, body) = response.await?.into_parts();
            let bytes = body.collect().await?.to_bytes();
            Ok(http::Response::from_parts(parts, bytes))
        })
    }
}

/// A chat-completion request for `model`.
pub fn chat(model: &str) -> http::Request<Bytes> {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
    });
    http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap()
}

/// `http://127.0.0.1:PORT` where nothing listens: connecting is refused.
pub fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// The whole body as text.
pub async fn text<B>(response: http::Response<B>) -> Result<String, BoxError>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(Into::into)?
        .to_bytes();
    Ok(String::from_utf8(bytes.to_vec())?)
}
