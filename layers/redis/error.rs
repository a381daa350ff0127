use std::fmt;

/// A setting a Redis backend's builder refused, or the Redis client could not be
/// set up. Connecting itself never fails a build: backends connect lazily and keep
/// retrying.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// A rate outside `0.0..=1.0` (or NaN).
    RateOutOfRange(&'static str, f64),
    /// A count that must be at least 1 was 0.
    Zero(&'static str),
    /// A duration that must be positive was zero.
    ZeroDuration(&'static str),
    /// The key prefix is empty.
    EmptyPrefix,
    /// The Redis client refused its settings.
    Redis(redis::RedisError),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::RateOutOfRange(what, v) => {
                write!(f, "redis backend: {what} must be within 0.0..=1.0, got {v}")
            }
            ConfigError::Zero(what) => write!(f, "redis backend: {what} must be at least 1"),
            ConfigError::ZeroDuration(what) => {
                write!(f, "redis backend: {what} must be longer than zero")
            }
            ConfigError::EmptyPrefix => write!(f, "redis backend: the key prefix is empty"),
            ConfigError::Redis(e) => write!(f, "redis backend: {e}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Redis(e) => Some(e),
            _ => None,
        }
    }
}

impl From<redis::RedisError> for ConfigError {
    fn from(e: redis::RedisError) -> Self {
        ConfigError::Redis(e)
    }
}
