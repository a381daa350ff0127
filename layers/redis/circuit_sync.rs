//! The work behind a `RedisCircuitSync`: publish local transitions, apply remote
//! ones, flush outcome counts, resync after an outage.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redis::Script;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::circuit_breaker::{CircuitEvent, CircuitRef, CircuitState, Handle, TransitionCause};

use super::link::Link;
use super::subscriber::Listener;
use super::sync_key::{SharedTrip, SyncKey};

/// Open: write the shared state (it expires when the open period ends), clear the
/// shared counts of the current window, tell everyone.
static OPEN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        redis.call('DEL', KEYS[2])
        redis.call('PUBLISH', ARGV[3], ARGV[1])
        return 1",
    )
});

/// After an outage: write a local open state only where Redis has none.
static OPEN_IF_ABSENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
            redis.call('PUBLISH', ARGV[3], ARGV[1])
            return 1
        end
        return 0",
    )
});

/// Closed: no shared state means closed.
static CLOSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        redis.call('DEL', KEYS[1])
        redis.call('PUBLISH', ARGV[2], ARGV[1])
        return 1",
    )
});

/// Add one instance's outcomes to the window; open everywhere when the shared
/// failure rate is reached and no open state exists yet (so exactly one instance
/// trips it).
static FLUSH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local calls = redis.call('HINCRBY', KEYS[1], 'calls', ARGV[1])
        local failures = redis.call('HINCRBY', KEYS[1], 'failures', ARGV[2])
        redis.call('PEXPIRE', KEYS[1], ARGV[3])
        local rate = tonumber(ARGV[4])
        if failures > 0 and calls >= tonumber(ARGV[5]) and failures >= rate * calls then
            if redis.call('SET', KEYS[2], ARGV[6], 'NX', 'PX', ARGV[7]) then
                redis.call('DEL', KEYS[1])
                redis.call('PUBLISH', ARGV[8], ARGV[6])
                return 1
            end
        end
        return 0",
    )
});

/// What goes on the channel, and into a state key.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    origin: String,
    /// The encoded key; `None` for the single (or overflow) circuit.
    key: Option<String>,
    state: Shared,
    /// For `open`: how long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    open_for_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Shared {
    Open,
    Closed,
}

pub(crate) struct Syncer<K> {
    handle: Handle<K>,
    conn: ConnectionManager,
    link: Arc<Link>,
    instance: String,
    /// `{prefix}:cb:{name}`
    base: String,
    channel: String,
    shared: Option<SharedTrip>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl<K: SyncKey> Syncer<K> {
    pub(crate) fn new(
        handle: Handle<K>,
        conn: ConnectionManager,
        link: Arc<Link>,
        prefix: &str,
        name: &str,
        shared: Option<SharedTrip>,
    ) -> Self {
        let base = format!("{prefix}:cb:{name}");
        Self {
            handle,
            conn,
            link,
            instance: format!("{:016x}", fastrand::u64(..)),
            channel: format!("{base}:events"),
            base,
            shared,
        }
    }

    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    pub(crate) fn listener(self: &Arc<Self>) -> RemoteStates<K> {
        RemoteStates(self.clone())
    }

    /// `_` for the single circuit, `k:{key}` for a keyed one.
    fn circuit_id(key: Option<&str>) -> String {
        match key {
            None => "_".to_owned(),
            Some(key) => format!("k:{key}"),
        }
    }

    fn state_key(&self, key: Option<&str>) -> String {
        format!("{}:{}:state", self.base, Self::circuit_id(key))
    }

    /// The shared counts of the current fixed window.
    fn window_key(&self, key: Option<&str>) -> String {
        let index = self.shared.map_or(0, |s| unix_ms() / millis(s.window));
        format!("{}:{}:w:{index}", self.base, Self::circuit_id(key))
    }

    /// Every circuit of the layer, with its encoded key.
    fn circuits(&self) -> Vec<(Option<String>, CircuitRef<K>)> {
        crate::backend::circuits(&self.handle)
    }

    /// The local circuit an encoded key names, created if the key can be decoded.
    fn find(&self, key: Option<&str>) -> Option<CircuitRef<K>> {
        crate::backend::find_circuit(&self.handle, key)
    }

    fn message(&self, key: Option<String>, state: Shared, open_for: Option<Duration>) -> String {
        serde_json::to_string(&Message {
            origin: self.instance.clone(),
            key,
            state,
            open_for_ms: open_for.map(millis),
        })
        .expect("a circuit message serialises")
    }

    /// Publish local transitions as they happen.
    pub(crate) async fn publish_events(
        self: Arc<Self>,
        mut events: broadcast::Receiver<CircuitEvent<K>>,
    ) {
        loop {
            match events.recv().await {
                Ok(event) => self.publish(event).await,
                // Missed some: publish where every circuit stands instead.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.push_local().await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    async fn publish(&self, event: CircuitEvent<K>) {
        // Remote changes came from Redis; forced states are one operator's decision
        // for one instance; half-open is each instance's own probing.
        if matches!(
            event.cause,
            TransitionCause::Remote | TransitionCause::Forced
        ) {
            return;
        }
        let key = event.key.as_ref().map(SyncKey::encode);
        let state_key = self.state_key(key.as_deref());
        let mut conn = self.conn.clone();
        let result = match (event.to, event.open_for) {
            (CircuitState::Open, Some(open_for)) => {
                let window_key = self.window_key(key.as_deref());
                let message = self.message(key, Shared::Open, Some(open_for));
                OPEN.key(state_key)
                    .key(window_key)
                    .arg(message)
                    .arg(millis(open_for))
                    .arg(&self.channel)
                    .invoke_async::<i64>(&mut conn)
                    .await
            }
            (CircuitState::Closed, _) => {
                let message = self.message(key, Shared::Closed, None);
                CLOSE
                    .key(state_key)
                    .arg(message)
                    .arg(&self.channel)
                    .invoke_async::<i64>(&mut conn)
                    .await
            }
            _ => return,
        };
        if self.link.observe(result).is_ok() {
            tracing::debug!(circuit = %self.base, to = %event.to, "circuit state published");
        }
    }

    /// Write local open states that Redis does not have (after an outage, or after
    /// missing events). `false` when Redis could not be reached.
    async fn push_local(&self) -> bool {
        let mut conn = self.conn.clone();
        for (key, circuit) in self.circuits() {
            let snapshot = circuit.snapshot();
            let remaining = match (snapshot.state, snapshot.forced, snapshot.retry_after) {
                (CircuitState::Open, false, Some(left)) if !left.is_zero() => left,
                _ => continue,
            };
            let state_key = self.state_key(key.as_deref());
            let message = self.message(key, Shared::Open, Some(remaining));
            let result = OPEN_IF_ABSENT
                .key(state_key)
                .arg(message)
                .arg(millis(remaining))
                .arg(&self.channel)
                .invoke_async::<i64>(&mut conn)
                .await;
            if self.link.observe(result).is_err() {
                return false;
            }
        }
        true
    }

    /// Read every shared open state and apply it.
    async fn pull_remote(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}:*:state", self.base);
        let mut cursor = 0u64;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(200)
                .query_async(&mut conn)
                .await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        for state_key in keys {
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(&state_key).cmd("PTTL").arg(&state_key);
            let (payload, ttl): (Option<String>, i64) = pipe.query_async(&mut conn).await?;
            let (Some(payload), Ok(ttl)) = (payload, u64::try_from(ttl)) else {
                continue; // gone meanwhile, or no expiry (not ours)
            };
            let Ok(message) = serde_json::from_str::<Message>(&payload) else {
                continue;
            };
            if message.state != Shared::Open {
                continue;
            }
            if let Some(circuit) = self.find(message.key.as_deref()) {
                circuit.apply_remote(CircuitState::Open, Some(Duration::from_millis(ttl)));
            }
        }
        Ok(())
    }

    /// A message from the channel.
    fn apply(&self, payload: &[u8]) {
        let Ok(message) = serde_json::from_slice::<Message>(payload) else {
            tracing::debug!(circuit = %self.base, "ignoring an unreadable circuit message");
            return;
        };
        if message.origin == self.instance {
            return;
        }
        let Some(circuit) = self.find(message.key.as_deref()) else {
            return;
        };
        match message.state {
            Shared::Open => circuit.apply_remote(
                CircuitState::Open,
                message.open_for_ms.map(Duration::from_millis),
            ),
            Shared::Closed => circuit.apply_remote(CircuitState::Closed, None),
        }
    }

    /// Add the outcomes of every closed circuit to the shared window, every
    /// `interval`.
    pub(crate) async fn flush_outcomes(self: Arc<Self>, interval: Duration) {
        let Some(trip) = self.shared else { return };
        // Outcomes from before the sync started are not shared.
        let mut seen: HashMap<Option<String>, (u64, u64)> = self
            .circuits()
            .into_iter()
            .map(|(key, c)| {
                let s = c.snapshot();
                (key, (s.calls, s.failures))
            })
            .collect();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing_since = None;
        loop {
            ticker.tick().await;
            self.flush(trip, &mut seen, &mut failing_since).await;
        }
    }

    /// Send each closed circuit's outcomes since the last flush. Counts Redis
    /// did not take are sent with the next flush, unless Redis has been
    /// unreachable for longer than the window (`failing_since`): late counts
    /// would then land in the wrong window, and are dropped.
    async fn flush(
        &self,
        trip: SharedTrip,
        seen: &mut HashMap<Option<String>, (u64, u64)>,
        failing_since: &mut Option<tokio::time::Instant>,
    ) {
        let mut conn = self.conn.clone();
        let mut current = HashMap::with_capacity(seen.len());
        let mut reachable = true;
        let keep_unsent = failing_since.is_none_or(|since| since.elapsed() < trip.window);
        for (key, circuit) in self.circuits() {
            let snapshot = circuit.snapshot();
            let (calls_before, failures_before) = seen.get(&key).copied().unwrap_or((0, 0));
            current.insert(key.clone(), (snapshot.calls, snapshot.failures));
            // A circuit re-created after eviction starts its counters at zero.
            let delta = |now: u64, before: u64| if now >= before { now - before } else { now };
            let calls = delta(snapshot.calls, calls_before);
            let failures = delta(snapshot.failures, failures_before);
            // Only outcomes of closed circuits say something about the shared rate
            // (probes are each instance's own).
            if (calls == 0 && failures == 0)
                || snapshot.state != CircuitState::Closed
                || snapshot.forced
            {
                continue;
            }
            if !reachable {
                if keep_unsent {
                    current.insert(key, (calls_before, failures_before));
                }
                continue;
            }
            let unsent = (key.clone(), (calls_before, failures_before));
            let open_for = self.handle.cooldown();
            let window_key = self.window_key(key.as_deref());
            let state_key = self.state_key(key.as_deref());
            let message = self.message(key, Shared::Open, Some(open_for));
            let result = FLUSH
                .key(window_key)
                .key(state_key)
                .arg(calls)
                .arg(failures)
                .arg(millis(trip.window) * 2)
                .arg(trip.failure_rate)
                .arg(trip.minimum_calls)
                .arg(message)
                .arg(millis(open_for))
                .arg(&self.channel)
                .invoke_async::<i64>(&mut conn)
                .await;
            match self.link.observe(result) {
                Ok(1) => {
                    tracing::warn!(circuit = %self.base, "shared failure rate reached; opening on every instance");
                    circuit.apply_remote(CircuitState::Open, Some(open_for));
                }
                Ok(_) => {}
                Err(_) => {
                    reachable = false;
                    if keep_unsent {
                        current.insert(unsent.0, unsent.1);
                    }
                }
            }
        }
        *failing_since = match (reachable, *failing_since) {
            (true, _) => None,
            (false, Some(since)) => Some(since),
            (false, None) => Some(tokio::time::Instant::now()),
        };
        *seen = current;
    }
}

/// How many times a resync after reconnecting is tried (about 10 s in all).
const RESYNC_ATTEMPTS: u32 = 25;

/// The subscriber's side of a sync.
pub(crate) struct RemoteStates<K>(Arc<Syncer<K>>);

impl<K: SyncKey> Listener for RemoteStates<K> {
    async fn subscribed(&mut self) {
        // Subscribed first, then read: a change after the read arrives as a
        // message. After an outage the command connection may still be
        // reconnecting when the subscription is back: try again for a while,
        // or this instance's open states would never reach the others.
        let mut wait = Duration::from_millis(20);
        for _ in 0..RESYNC_ATTEMPTS {
            let pulled = self.0.pull_remote().await;
            if self.0.link.observe(pulled).is_ok() && self.0.push_local().await {
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(500));
        }
        tracing::warn!(circuit = %self.0.base, "could not resync circuit states after reconnecting");
    }

    fn message(&mut self, payload: &[u8]) {
        self.0.apply(payload);
    }
}
