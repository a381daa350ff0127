//! One circuit state for many instances: [`RedisCircuitSync`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::circuit_breaker::Handle;

use super::circuit_sync::Syncer;
use super::error::ConfigError;
use super::link::{link, manager_config, Link};
use super::subscriber::{self, AbortOnDrop};
use super::sync_key::{SharedTrip, SyncKey};

/// Builds a [`RedisCircuitSync`]; see the [module docs](super) for the design.
///
/// Defaults: key prefix `tower-llm`, the layer's name as the circuit name, outcomes
/// flushed every 250 ms, shared trip at a 50% failure rate over at least 20 calls in
/// a fixed 10 s window.
#[derive(Clone, Debug)]
pub struct RedisCircuitSyncBuilder {
    client: redis::Client,
    name: Option<String>,
    prefix: String,
    flush_interval: Duration,
    shared: Option<SharedTrip>,
}

impl RedisCircuitSyncBuilder {
    /// The name the circuits are shared under (default: the layer's
    /// [`name`](crate::circuit_breaker::Builder::name)). Instances with the same
    /// name and prefix share state.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The prefix of every Redis key and channel (default `tower-llm`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How often each instance adds its outcomes to the shared counts (default
    /// 250 ms). Only the shared failure rate waits for it; state changes are
    /// published at once.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// Open the circuit on every instance when, added up over all instances, at
    /// least `rate` of the calls in a fixed `window` failed, once the window holds
    /// `minimum_calls` calls (default: 0.5, 20, 10 s). This catches an upstream
    /// that fails for everyone while no single instance sees enough to trip.
    pub fn shared_failure_rate(mut self, rate: f64, minimum_calls: u32, window: Duration) -> Self {
        self.shared = Some(SharedTrip {
            failure_rate: rate,
            minimum_calls,
            window,
        });
        self
    }

    /// Share state changes only; each instance trips on its own outcomes.
    pub fn without_shared_failure_rate(mut self) -> Self {
        self.shared = None;
        self
    }

    /// Start sharing the state of `handle`'s circuits. Must be called inside a
    /// tokio runtime; the work runs in spawned tasks until the returned guard is
    /// dropped. Never waits for Redis: if it is down, the circuits run on local
    /// state and catch up once it is back.
    pub fn attach<K: SyncKey>(self, handle: &Handle<K>) -> Result<RedisCircuitSync, ConfigError> {
        if self.prefix.is_empty() {
            return Err(ConfigError::EmptyPrefix);
        }
        if self.flush_interval.is_zero() {
            return Err(ConfigError::ZeroDuration("flush_interval"));
        }
        if let Some(shared) = self.shared {
            if !(0.0..=1.0).contains(&shared.failure_rate) {
                return Err(ConfigError::RateOutOfRange(
                    "shared failure_rate",
                    shared.failure_rate,
                ));
            }
            if shared.minimum_calls == 0 {
                return Err(ConfigError::Zero("shared minimum_calls"));
            }
            if shared.window < Duration::from_millis(1) {
                return Err(ConfigError::ZeroDuration("shared window"));
            }
        }
        let name = self.name.unwrap_or_else(|| handle.name().to_owned());
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(
            self.client.clone(),
            manager_config(),
        )?;
        let link = Arc::new(link("circuit", name.clone()));
        let syncer = Arc::new(Syncer::new(
            handle.clone(),
            conn,
            link.clone(),
            &self.prefix,
            &name,
            self.shared,
        ));
        let mut tasks = vec![
            AbortOnDrop(tokio::spawn(
                syncer.clone().publish_events(handle.subscribe()),
            )),
            AbortOnDrop(tokio::spawn(subscriber::run(
                self.client,
                syncer.channel().to_owned(),
                link.clone(),
                syncer.listener(),
            ))),
        ];
        if self.shared.is_some() {
            handle.count_calls(true);
            tasks.push(AbortOnDrop(tokio::spawn(
                syncer.clone().flush_outcomes(self.flush_interval),
            )));
        }
        let counting = self.shared.is_some();
        let handle = handle.clone();
        Ok(RedisCircuitSync {
            instance: syncer.instance().to_owned(),
            link,
            stop: Some(Box::new(move || {
                if counting {
                    handle.count_calls(false);
                }
            })),
            _tasks: tasks,
        })
    }
}

/// Shares the state of one [`CircuitBreakerLayer`](crate::CircuitBreakerLayer)'s
/// circuits with every other instance attached to the same Redis under the same
/// name. Stops when dropped; see the [module docs](super).
pub struct RedisCircuitSync {
    instance: String,
    link: Arc<Link>,
    stop: Option<Box<dyn FnOnce() + Send + Sync>>,
    _tasks: Vec<AbortOnDrop>,
}

impl RedisCircuitSync {
    /// Configure a sync through `client` (e.g. `redis::Client::open("redis://host/")`).
    pub fn builder(client: redis::Client) -> RedisCircuitSyncBuilder {
        RedisCircuitSyncBuilder {
            client,
            name: None,
            prefix: "tower-llm".to_owned(),
            flush_interval: Duration::from_millis(250),
            shared: Some(SharedTrip {
                failure_rate: 0.5,
                minimum_calls: 20,
                window: Duration::from_secs(10),
            }),
        }
    }

    /// Attach with the defaults; see [`RedisCircuitSyncBuilder::attach`].
    pub fn attach<K: SyncKey>(
        client: redis::Client,
        handle: &Handle<K>,
    ) -> Result<Self, ConfigError> {
        Self::builder(client).attach(handle)
    }

    /// Whether the last exchange with Redis worked (`false` before the first).
    pub fn is_connected(&self) -> bool {
        self.link.is_up()
    }

    /// This instance's random id, carried by what it publishes so that it can
    /// ignore its own messages.
    pub fn instance_id(&self) -> &str {
        &self.instance
    }
}

impl fmt::Debug for RedisCircuitSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCircuitSync")
            .field("instance", &self.instance)
            .field("connected", &self.link.is_up())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisCircuitSync {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}
