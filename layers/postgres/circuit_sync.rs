//! [`PostgresCircuitSync`]: one circuit state for many instances, through
//! PostgreSQL.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::circuit_breaker::{CircuitEvent, CircuitState, Handle, SyncKey, TransitionCause};

use super::connect::Postgres;
use super::error::{ConfigError, PgError};
use super::link::Link;
use super::listen::{AbortOnDrop, Hub, SharedListener, Subscription, MAX_PAYLOAD};

/// The notification channel of circuit decisions (payload: a [`Message`]).
const CHANNEL: &str = "tower_llm_circuit";
/// Keys longer than this are not shared (their message would not fit a
/// notification); such circuits decide on local state alone.
const MAX_KEY: usize = 512;

/// Open: the row says until when; everyone hears it.
const OPEN: &str = "
WITH up AS (
    INSERT INTO tower_llm_circuits (name, circuit, open_until, origin)
    VALUES ($1, $2, now() + $3::float8 * interval '1 millisecond', $4)
    ON CONFLICT (name, circuit) DO UPDATE
    SET open_until = EXCLUDED.open_until, origin = EXCLUDED.origin
    RETURNING 1
)
SELECT pg_notify($5, $6) FROM up";

/// After an outage: write a local open state only where none is in force.
const OPEN_IF_ABSENT: &str = "
WITH up AS (
    INSERT INTO tower_llm_circuits (name, circuit, open_until, origin)
    VALUES ($1, $2, now() + $3::float8 * interval '1 millisecond', $4)
    ON CONFLICT (name, circuit) DO UPDATE
    SET open_until = EXCLUDED.open_until, origin = EXCLUDED.origin
    WHERE tower_llm_circuits.open_until <= now()
    RETURNING 1
)
SELECT pg_notify($5, $6) FROM up";

/// Closed: no row means closed.
const CLOSE: &str = "
WITH gone AS (DELETE FROM tower_llm_circuits WHERE name = $1 AND circuit = $2)
SELECT pg_notify($3, $4)";

/// Every open state in force, with what is left of it (database clock).
const OPEN_STATES: &str = "
SELECT circuit, (extract(epoch FROM open_until - now()) * 1000)::bigint
FROM tower_llm_circuits WHERE name = $1 AND open_until > now()";

/// What goes on the channel.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    origin: String,
    name: String,
    /// The encoded key; `None` for the single (or overflow) circuit.
    key: Option<String>,
    open: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    open_for_ms: Option<u64>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `_` for the single circuit, `k:{key}` for a keyed one.
fn circuit_id(key: Option<&str>) -> String {
    key.map_or_else(|| "_".to_owned(), |key| format!("k:{key}"))
}

fn key_of(circuit_id: &str) -> Option<Option<&str>> {
    match circuit_id {
        "_" => Some(None),
        id => id.strip_prefix("k:").map(Some),
    }
}

/// Shares the open/closed decisions of one
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer)'s circuits with every
/// other instance attached to the same database under the same name.
///
/// - **The closed path stays local**: a call reads the circuit's atomic state,
///   as without Postgres, and never waits on the network. The sync works beside
///   it in spawned tasks.
/// - **Transitions are published at once.** When a circuit opens (failures, a
///   failed probe, a slow-call rate) the sync upserts its row in
///   `tower_llm_circuits` (open until when, by the database's clock) and sends
///   `NOTIFY tower_llm_circuit` in the same statement; a recovery deletes the row
///   and notifies `closed`. Every other instance applies it with
///   [`CircuitRef::apply_remote`](crate::circuit_breaker::CircuitRef::apply_remote).
///   Applied and forced states are not published again; half-open is each
///   instance's own probing.
/// - **Keyed circuits** are shared per key ([`SyncKey`]), keys up to 512 bytes.
/// - **When Postgres is unreachable** no call fails because of it: circuits
///   keep deciding on local state. The listening connection reconnects with
///   backoff; once back it reads every open state in force and applies it, then
///   writes the local open states the table does not have, so decisions taken
///   during the outage reach the others. A `closed` sent during an outage can be
///   missed; the other side then recovers through its own probes.
///
/// Every sync attached through one [`Postgres`] handle (or its clones) shares
/// one listening connection, so an instance with many circuits holds one, not
/// one per circuit (metrics: `llm_postgres_connected{component="circuit_listen",
/// name=<the handle's name>}`).
///
/// Unlike the Redis sync, failure counts are not added up across instances:
/// each trips on its own outcomes. Stops when dropped.
pub struct PostgresCircuitSync {
    instance: String,
    link: Arc<Link>,
    _listening: Subscription,
    _tasks: Vec<AbortOnDrop>,
}

impl fmt::Debug for PostgresCircuitSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresCircuitSync")
            .field("instance", &self.instance)
            .field("listening", &self.link.is_up())
            .finish_non_exhaustive()
    }
}

impl PostgresCircuitSync {
    /// Start sharing the state of `handle`'s circuits under the layer's name.
    /// Must be called inside a tokio runtime; never waits for Postgres.
    pub fn attach<K: SyncKey>(pg: &Postgres, handle: &Handle<K>) -> Result<Self, ConfigError> {
        Self::attach_as(pg, handle, handle.name())
    }

    /// [`attach`](Self::attach) under another name: instances with the same name
    /// share state.
    pub fn attach_as<K: SyncKey>(
        pg: &Postgres,
        handle: &Handle<K>,
        name: &str,
    ) -> Result<Self, ConfigError> {
        if name.is_empty() || name.len() > MAX_KEY {
            return Err(ConfigError::InvalidName(name.len()));
        }
        let syncer = Arc::new(Syncer {
            handle: handle.clone(),
            pg: pg.clone(),
            instance: format!("{:016x}", fastrand::u64(..)),
            name: name.to_owned(),
        });
        let tasks = vec![AbortOnDrop(tokio::spawn(
            syncer.clone().publish_events(handle.subscribe()),
        ))];
        // Every sync of this database handle listens through one connection.
        let listening = Hub::subscribe(
            pg,
            CHANNEL,
            "circuit_listen",
            Arc::new(RemoteStates(syncer.clone())),
        );
        Ok(Self {
            instance: syncer.instance.clone(),
            link: listening.link().clone(),
            _listening: listening,
            _tasks: tasks,
        })
    }

    /// Whether the connection listening for other instances' decisions is up.
    pub fn is_listening(&self) -> bool {
        self.link.is_up()
    }

    /// This instance's random id, carried by what it sends so that it can
    /// ignore its own notifications.
    pub fn instance_id(&self) -> &str {
        &self.instance
    }
}

struct Syncer<K> {
    handle: Handle<K>,
    pg: Postgres,
    instance: String,
    name: String,
}

impl<K: SyncKey> Syncer<K> {
    fn message(&self, key: Option<String>, open_for: Option<Duration>) -> String {
        serde_json::to_string(&Message {
            origin: self.instance.clone(),
            name: self.name.clone(),
            key,
            open: open_for.is_some(),
            open_for_ms: open_for.map(millis),
        })
        .unwrap_or_default()
    }

    /// Publish local transitions as they happen.
    async fn publish_events(self: Arc<Self>, mut events: broadcast::Receiver<CircuitEvent<K>>) {
        loop {
            match events.recv().await {
                Ok(event) => self.publish(event).await,
                // Missed some: write where every circuit stands instead.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = self.push_local().await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    async fn publish(&self, event: CircuitEvent<K>) {
        if matches!(
            event.cause,
            TransitionCause::Remote | TransitionCause::Forced
        ) {
            return;
        }
        let key = event.key.as_ref().map(SyncKey::encode);
        if key.as_ref().is_some_and(|k| k.len() > MAX_KEY) {
            return;
        }
        let circuit = circuit_id(key.as_deref());
        let result = match (event.to, event.open_for) {
            (CircuitState::Open, Some(open_for)) => {
                let message = self.message(key, Some(open_for));
                self.write(OPEN, &circuit, open_for, &message).await
            }
            (CircuitState::Closed, _) => {
                let message = self.message(key, None);
                self.pg
                    .run(|client| async move {
                        client
                            .execute(CLOSE, &[&self.name, &circuit, &CHANNEL, &message])
                            .await?;
                        Ok(())
                    })
                    .await
            }
            _ => return,
        };
        if result.is_ok() {
            tracing::debug!(circuit = %self.name, to = %event.to, "circuit state published");
        }
    }

    async fn write(
        &self,
        statement: &'static str,
        circuit: &str,
        open_for: Duration,
        message: &str,
    ) -> Result<(), PgError> {
        let open_ms = open_for.as_secs_f64() * 1000.0;
        self.pg
            .run(|client| async move {
                client
                    .execute(
                        statement,
                        &[
                            &self.name,
                            &circuit,
                            &open_ms,
                            &self.instance,
                            &CHANNEL,
                            &message,
                        ],
                    )
                    .await?;
                Ok(())
            })
            .await
    }

    /// Write local open states that the table does not have (after an outage,
    /// or after missing events).
    async fn push_local(&self) -> Result<(), PgError> {
        for (key, circuit) in crate::backend::circuits(&self.handle) {
            let snapshot = circuit.snapshot();
            let remaining = match (snapshot.state, snapshot.forced, snapshot.retry_after) {
                (CircuitState::Open, false, Some(left)) if !left.is_zero() => left,
                _ => continue,
            };
            if key.as_ref().is_some_and(|k| k.len() > MAX_KEY) {
                continue;
            }
            let id = circuit_id(key.as_deref());
            let message = self.message(key, Some(remaining));
            self.write(OPEN_IF_ABSENT, &id, remaining, &message).await?;
        }
        Ok(())
    }

    /// Read every open state in force and apply it.
    async fn pull_remote(&self) -> Result<(), PgError> {
        let rows = self
            .pg
            .run(|client| async move {
                let rows = client.query(OPEN_STATES, &[&self.name]).await?;
                Ok(rows
                    .iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                    .collect::<Vec<_>>())
            })
            .await?;
        for (id, left_ms) in rows {
            let (Some(key), Ok(left_ms)) = (key_of(&id), u64::try_from(left_ms)) else {
                continue;
            };
            if let Some(circuit) = crate::backend::find_circuit(&self.handle, key) {
                circuit.apply_remote(CircuitState::Open, Some(Duration::from_millis(left_ms)));
            }
        }
        Ok(())
    }

    /// A notification from another instance.
    fn apply(&self, payload: &str) {
        let Ok(message) = serde_json::from_str::<Message>(payload) else {
            tracing::debug!(circuit = %self.name, "ignoring an unreadable circuit message");
            return;
        };
        if message.origin == self.instance || message.name != self.name {
            return;
        }
        let Some(circuit) = crate::backend::find_circuit(&self.handle, message.key.as_deref())
        else {
            return;
        };
        if message.open {
            let open_for = message.open_for_ms.map(Duration::from_millis);
            circuit.apply_remote(CircuitState::Open, open_for);
        } else {
            circuit.apply_remote(CircuitState::Closed, None);
        }
    }
}

/// How many times a resync after reconnecting is tried (about 10 s in all).
const RESYNC_ATTEMPTS: u32 = 25;

/// The listening side of a sync.
struct RemoteStates<K>(Arc<Syncer<K>>);

impl<K: SyncKey> SharedListener for RemoteStates<K> {
    fn subscribed(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(self.resync())
    }

    fn message(&self, payload: &str) {
        if payload.len() <= MAX_PAYLOAD {
            self.0.apply(payload);
        }
    }
}

impl<K: SyncKey> RemoteStates<K> {
    async fn resync(&self) {
        // Listening first, then read: a change after the read arrives as a
        // notification. After an outage the pool's first operations may fail
        // while it reconnects: try again for a while, or this instance's open
        // states would never reach the others.
        let mut wait = Duration::from_millis(20);
        for _ in 0..RESYNC_ATTEMPTS {
            if self.0.pull_remote().await.is_ok() && self.0.push_local().await.is_ok() {
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(500));
        }
        tracing::warn!("could not resync circuit states after reconnecting to postgres");
    }
}
