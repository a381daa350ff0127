//! `[telemetry]`: traces exported over OTLP. Each exporter is off unless
//! configured.

use super::*;

/// Where traces go.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// An OTLP/HTTP (protobuf) traces endpoint, e.g.
    /// `http://otel-collector:4318/v1/traces`. Unset: no traces are exported
    /// (and no span is built for them).
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The environment variable holding extra headers for the exporter
    /// (`name=value,name2=value2`, e.g. a vendor's API key).
    #[serde(default)]
    pub otlp_headers_env: Option<String>,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share of new traces kept (0 to 1); a client's `traceparent`
    /// decides for the traces it continues.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// The environment variable holding a Sentry DSN (it holds a key): server
    /// errors the proxy answers (every tier failed, store outages, escalation
    /// failures) and panics are reported, tagged with the request's trace id;
    /// never a prompt, an answer or a key. Unset: nothing is reported.
    #[serde(default)]
    pub sentry_dsn_env: Option<String>,
    /// Sentry's `environment` (e.g. `production`).
    #[serde(default)]
    pub sentry_environment: Option<String>,
}

fn default_service_name() -> String {
    "llm-proxy".into()
}

fn default_sample_ratio() -> f64 {
    1.0
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_headers_env: None,
            service_name: default_service_name(),
            sample_ratio: default_sample_ratio(),
            sentry_dsn_env: None,
            sentry_environment: None,
        }
    }
}

impl TelemetryConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return err("telemetry.sample_ratio must be between 0 and 1");
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let uri: Result<http::Uri, _> = endpoint.parse();
            let ok = uri.is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
            });
            if !ok {
                return err("telemetry.otlp_endpoint must be an http(s) URL");
            }
        }
        if self.service_name.is_empty() {
            return err("telemetry.service_name must not be empty");
        }
        Ok(())
    }
}
