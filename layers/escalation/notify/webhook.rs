use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::Notification;
use crate::escalation::id::EscalationId;
use crate::escalation::record::{to_rfc3339, Stage};

/// The header carrying `sha256=<hex HMAC-SHA256 of the body>` under the shared secret.
pub const SIGNATURE_HEADER: &str = "x-escalation-signature";

/// The JSON body a webhook receives. `text` makes it a valid Slack incoming-webhook
/// message; the other fields are for programs. No token, no snapshot, no secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WebhookPayload {
    /// Human-readable summary (Slack's `text`).
    pub text: String,
    /// Always `"escalation.created"`.
    pub event: &'static str,
    /// The escalation.
    pub escalation_id: EscalationId,
    /// Approval gate or response review.
    pub stage: Stage,
    /// The policy's reason.
    pub reason: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC.
    pub expires_at: String,
    /// Where to review it, if configured.
    pub review_url: Option<String>,
}

impl WebhookPayload {
    /// The payload for a notification.
    pub fn new(notification: &Notification) -> Self {
        let expires_at = to_rfc3339(notification.expires_at);
        let what = match notification.stage {
            Stage::Request => "needs approval",
            Stage::Response => "needs review",
        };
        let mut text = format!(
            "Escalation {} {what}: {}. Expires {expires_at}.",
            notification.id, notification.reason
        );
        if let Some(url) = &notification.review_url {
            text.push_str(&format!(" Review: {url}"));
        }
        Self {
            text,
            event: "escalation.created",
            escalation_id: notification.id.clone(),
            stage: notification.stage,
            reason: notification.reason.clone(),
            created_at: to_rfc3339(notification.created_at),
            expires_at,
            review_url: notification.review_url.clone(),
        }
    }
}

fn mac(secret: &[u8], body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(body);
    mac
}

/// The [`SIGNATURE_HEADER`] value for `body`: `sha256=` and the lower-case hex
/// HMAC-SHA256 of the exact body bytes under `secret`.
pub fn sign_body(secret: &[u8], body: &[u8]) -> String {
    let tag = mac(secret, body).finalize().into_bytes();
    format!("sha256={}", crate::escalation::token::hex(&tag))
}

/// Checks a [`SIGNATURE_HEADER`] value against `body`, in constant time. For
/// receivers.
///
/// ```
/// use tower_llm_resilience::escalation::notify::{sign_body, verify_signature};
///
/// let signature = sign_body(b"shared secret", b"{\"text\":\"hi\"}");
/// assert!(verify_signature(b"shared secret", b"{\"text\":\"hi\"}", &signature));
/// assert!(!verify_signature(b"other secret", b"{\"text\":\"hi\"}", &signature));
/// ```
pub fn verify_signature(secret: &[u8], body: &[u8], header_value: &str) -> bool {
    let Some(hex) = header_value.strip_prefix("sha256=") else {
        return false;
    };
    if hex.len() != 64 || !hex.is_ascii() {
        return false;
    }
    let mut tag = [0u8; 32];
    for (i, byte) in tag.iter_mut().enumerate() {
        match u8::from_str_radix(&hex[2 * i..2 * i + 2], 16) {
            Ok(b) => *byte = b,
            Err(_) => return false,
        }
    }
    mac(secret, body).verify_slice(&tag).is_ok()
}

#[cfg(feature = "reqwest")]
mod client {
    use std::fmt;

    use super::{sign_body, WebhookPayload, SIGNATURE_HEADER};
    use crate::escalation::error::BuildError;
    use crate::escalation::notify::{Notification, Notifier, NotifyError, NotifyFuture};

    /// POSTs a signed [`WebhookPayload`] to a URL (feature `reqwest`).
    ///
    /// The body is JSON with a Slack-compatible `text`; [`SIGNATURE_HEADER`] carries
    /// its HMAC-SHA256 under the shared secret (check it with
    /// [`verify_signature`](super::verify_signature)). Any 2xx is a delivery; the
    /// layer retries anything else with backoff. `Debug` hides the secret.
    #[derive(Clone)]
    pub struct WebhookNotifier {
        url: reqwest::Url,
        secret: Vec<u8>,
        client: reqwest::Client,
    }

    impl WebhookNotifier {
        /// A notifier for an `https` URL (or `http` on loopback: `localhost`,
        /// `127.0.0.0/8`, `[::1]`) and a non-empty shared secret, with a default
        /// client (https needs the `rustls` feature).
        ///
        /// Notifications carry the escalation's reason and review link, and the
        /// signature proves who sent them: over plain HTTP on a network both can
        /// be read and the request replayed, so only loopback may skip TLS.
        pub fn new(url: &str, secret: impl Into<Vec<u8>>) -> Result<Self, BuildError> {
            Self::with_client(url, secret, reqwest::Client::new())
        }

        /// The same, with your client (proxies, TLS settings).
        pub fn with_client(
            url: &str,
            secret: impl Into<Vec<u8>>,
            client: reqwest::Client,
        ) -> Result<Self, BuildError> {
            let url =
                reqwest::Url::parse(url).map_err(|e| BuildError(format!("webhook URL: {e}")))?;
            match url.scheme() {
                "https" => {}
                "http" if is_loopback(&url) => {}
                "http" => {
                    return Err(BuildError(
                        "webhook URL must be https (plain http only on loopback)".into(),
                    ))
                }
                _ => return Err(BuildError("webhook URL must be https".into())),
            }
            let secret = secret.into();
            if secret.is_empty() {
                return Err(BuildError("webhook secret must not be empty".into()));
            }
            Ok(Self {
                url,
                secret,
                client,
            })
        }
    }

    fn is_loopback(url: &reqwest::Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    impl fmt::Debug for WebhookNotifier {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("WebhookNotifier")
                .field("host", &self.url.host_str())
                .finish_non_exhaustive()
        }
    }

    impl Notifier for WebhookNotifier {
        fn notify<'a>(&'a self, notification: &'a Notification) -> NotifyFuture<'a> {
            Box::pin(async move {
                let body = serde_json::to_vec(&WebhookPayload::new(notification))
                    .map_err(|e| NotifyError::Transport(Box::new(e)))?;
                let response = self
                    .client
                    .post(self.url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(SIGNATURE_HEADER, sign_body(&self.secret, &body))
                    .body(body)
                    .send()
                    .await
                    // Without the URL: it may carry a Slack webhook secret path.
                    .map_err(|e| NotifyError::Transport(Box::new(e.without_url())))?;
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(NotifyError::Rejected {
                        status: status.as_u16(),
                    })
                }
            })
        }
    }
}

#[cfg(feature = "reqwest")]
pub use self::client::WebhookNotifier;
