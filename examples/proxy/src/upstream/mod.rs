//! One provider as a tower service: `http::Request<Bytes>` (an OpenAI chat
//! completion request) in, `http::Response<ProxyBody>` (in the OpenAI format) out.
//!
//! OpenAI-compatible upstreams get the request as it is (the model already set by
//! the tier): over a plain hyper client for `http://` base URLs (self-hosted
//! models, the mock; the proxy's hot path), over reqwest with rustls for
//! `https://`. Anthropic upstreams go through the library's [`AnthropicClient`](tower_llm_resilience::client::AnthropicClient),
//! and their answers and streams are translated back to the OpenAI format.
//! Failure responses (429, 5xx...) are returned as responses, with their status
//! and rate-limit headers, for the layers' classifier to judge.

//!
//! - [`service`]: [`Upstream`], the service, and the OpenAI-compatible call;
//! - [`transport`]: the HTTP clients (hyper for `http://`, reqwest for
//!   `https://`) and their connection pools;
//! - [`anthropic`]: the translation of requests, answers and streams between
//!   the OpenAI format and Anthropic's Messages API.

mod anthropic;
mod service;
mod transport;

pub(crate) use service::Upstream;
pub(crate) use transport::HttpClients;
