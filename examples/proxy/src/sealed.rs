//! Escalation snapshots encrypted at rest: a store wrapper.
//!
//! Escalations keep the request under review (prompts, often personal data),
//! the answer under review and a human's answer. With
//! `[escalation] encryption_key_env` set, [`SealedStore`] encrypts those three
//! with XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`) before they reach
//! the durable store (SQLite or Redis) and decrypts them on the way back; ids,
//! statuses, times and reasons stay readable, so the store can still list and
//! compare-and-swap records. Each sealed value is bound to its escalation id and
//! field (associated data): moving a ciphertext to another record fails to open.
//!
//! The key: 32 random bytes, base64, in the environment variable
//! `encryption_key_env` names (`openssl rand -base64 32`). A missing, empty or
//! malformed key is a startup error.
//!
//! Rotation: put the new key in `encryption_key_env` and the old one(s),
//! comma separated, in the variable `previous_encryption_keys_env` names.
//! New and updated records are sealed with the new key; records sealed with an
//! old key are still read (each sealed value names its key by id). Keep an
//! old key until the records sealed with it have expired and been resolved,
//! then drop it. Records written before encryption was turned on are read as
//! they are and sealed when next updated.
//!
//! A record that cannot be opened (unknown key, tampered data) is skipped by
//! `list` and counted in `llm_proxy_sealed_unreadable_total`; `get` reports it
//! as a corrupt record.

use std::sync::Arc;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower_llm_resilience::escalation::store::{ChangeFuture, StoreFuture, Update};
use tower_llm_resilience::escalation::{
    AuditAction, AuditEntry, Decision, EscalationId, EscalationRecord, EscalationStore, Status,
    StoreError,
};

use crate::config::ConfigError;

/// The member that marks a sealed value.
const MARK: &str = "$sealed";
const ALGORITHM: &str = "xchacha20poly1305";

/// The keys: one to seal with, older ones to open with.
pub(crate) struct Keyring {
    current: (String, XChaCha20Poly1305),
    previous: Vec<(String, XChaCha20Poly1305)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.0)
            .field(
                "previous",
                &self.previous.iter().map(|k| &k.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn parse_key(setting: &str, text: &str) -> Result<(String, XChaCha20Poly1305), ConfigError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| {
            ConfigError(format!(
                "{setting}: the key must be 32 random bytes in base64 (openssl rand -base64 32)"
            ))
        })?;
    let id = Sha256::digest(&bytes)[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
        .map_err(|_| ConfigError(format!("{setting}: not a 32-byte key")))?;
    Ok((id, cipher))
}

impl Keyring {
    /// A keyring from base64 keys: `current`, and `previous` still readable.
    pub(crate) fn new(current: &str, previous: &[&str]) -> Result<Self, ConfigError> {
        Ok(Self {
            current: parse_key("escalation.encryption_key_env", current)?,
            previous: previous
                .iter()
                .map(|k| parse_key("escalation.previous_encryption_keys_env", k))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The keyring the environment variables name (`None`: encryption off).
    pub(crate) fn from_env(
        current_env: Option<&str>,
        previous_env: Option<&str>,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(var) = current_env else {
            if previous_env.is_some() {
                return Err(ConfigError(
                    "escalation.previous_encryption_keys_env needs encryption_key_env".into(),
                ));
            }
            return Ok(None);
        };
        let read = |var: &str| match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => Ok(value),
            Ok(_) => Err(ConfigError(format!("environment variable {var} is empty"))),
            Err(_) => Err(ConfigError(format!(
                "environment variable {var} is not set"
            ))),
        };
        let current = read(var)?;
        let previous = match previous_env {
            Some(var) => read(var)?,
            None => String::new(),
        };
        let previous: Vec<&str> = previous
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect();
        Self::new(&current, &previous).map(Some)
    }

    fn seal(&self, id: &EscalationId, field: &str, value: &Value) -> Result<Value, StoreError> {
        let plain = serde_json::to_vec(value).map_err(|e| StoreError::Backend(e.into()))?;
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce)
            .map_err(|_| StoreError::Backend("the random source is unavailable".into()))?;
        let aad = format!("{id}/{field}");
        let sealed = self
            .current
            .1
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Backend("encryption failed".into()))?;
        let mut data = nonce.to_vec();
        data.extend_from_slice(&sealed);
        Ok(json!({
            MARK: ALGORITHM,
            "key_id": self.current.0,
            "data": base64::engine::general_purpose::STANDARD.encode(data),
        }))
    }

    fn open(&self, id: &EscalationId, field: &str, value: Value) -> Result<Value, StoreError> {
        let Some(sealed) = value.get(MARK) else {
            // Written before encryption was turned on.
            return Ok(value);
        };
        let corrupt = |why: &str| StoreError::Corrupt(format!("escalation {id}: {field}: {why}"));
        if sealed != ALGORITHM {
            return Err(corrupt("unknown encryption"));
        }
        let key_id = value
            .get("key_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let cipher = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|(id, _)| id == key_id)
            .map(|(_, cipher)| cipher)
            .ok_or_else(|| corrupt("sealed with a key that is not configured"))?;
        let data = value
            .get("data")
            .and_then(Value::as_str)
            .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
            .filter(|d| d.len() > 24)
            .ok_or_else(|| corrupt("malformed sealed value"))?;
        let aad = format!("{id}/{field}");
        let plain = cipher
            .decrypt(
                XNonce::from_slice(&data[..24]),
                Payload {
                    msg: &data[24..],
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| corrupt("cannot be decrypted (wrong key or altered)"))?;
        serde_json::from_slice(&plain).map_err(|_| corrupt("not JSON once decrypted"))
    }

    fn map_decision(
        &self,
        id: &EscalationId,
        decision: &mut Decision,
        seal: bool,
    ) -> Result<(), StoreError> {
        if let Decision::Answer { payload } = decision {
            let value = std::mem::take(payload);
            *payload = if seal {
                self.seal(id, "answer", &value)?
            } else {
                self.open(id, "answer", value)?
            };
        }
        Ok(())
    }

    fn map_record(
        &self,
        mut record: EscalationRecord,
        seal: bool,
    ) -> Result<EscalationRecord, StoreError> {
        let id = record.id.clone();
        let request = std::mem::take(&mut record.request);
        record.request = if seal {
            self.seal(&id, "request", &request)?
        } else {
            self.open(&id, "request", request)?
        };
        if let Some(result) = record.result.take() {
            record.result = Some(if seal {
                self.seal(&id, "result", &result)?
            } else {
                self.open(&id, "result", result)?
            });
        }
        if let Some(resolution) = &mut record.resolution {
            self.map_decision(&id, &mut resolution.decision, seal)?;
        }
        Ok(record)
    }

    fn map_audit(&self, mut entry: AuditEntry, seal: bool) -> Result<AuditEntry, StoreError> {
        let id = entry.escalation_id.clone();
        match &mut entry.action {
            AuditAction::Resolved { resolution } | AuditAction::TimeoutDefault { resolution } => {
                self.map_decision(&id, &mut resolution.decision, seal)?;
            }
            _ => {}
        }
        Ok(entry)
    }
}

/// An [`EscalationStore`] that seals snapshots before `inner` stores them.
#[derive(Debug)]
pub(crate) struct SealedStore<S> {
    inner: S,
    keys: Arc<Keyring>,
}

impl<S: EscalationStore> SealedStore<S> {
    /// Seal what goes into `inner` with `keys`.
    pub(crate) fn new(inner: S, keys: Keyring) -> Self {
        Self {
            inner,
            keys: Arc::new(keys),
        }
    }
}

fn unreadable(e: &StoreError) {
    metrics::counter!("llm_proxy_sealed_unreadable_total").increment(1);
    tracing::warn!(error = %e, "skipping an escalation that cannot be decrypted");
}

impl<S: EscalationStore> EscalationStore for SealedStore<S> {
    fn insert(&self, record: EscalationRecord, audit: AuditEntry) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let record = self.keys.map_record(record, true)?;
            let audit = self.keys.map_audit(audit, true)?;
            self.inner.insert(record, audit).await
        })
    }

    fn get<'a>(&'a self, id: &'a EscalationId) -> StoreFuture<'a, Option<EscalationRecord>> {
        Box::pin(async move {
            match self.inner.get(id).await? {
                Some(record) => Ok(Some(self.keys.map_record(record, false)?)),
                None => Ok(None),
            }
        })
    }

    fn update(
        &self,
        expected_version: u64,
        record: EscalationRecord,
        audit: AuditEntry,
    ) -> StoreFuture<'_, Update> {
        Box::pin(async move {
            let record = self.keys.map_record(record, true)?;
            let audit = self.keys.map_audit(audit, true)?;
            match self.inner.update(expected_version, record, audit).await? {
                Update::Applied => Ok(Update::Applied),
                Update::Conflict(None) => Ok(Update::Conflict(None)),
                Update::Conflict(Some(now)) => Ok(Update::Conflict(Some(Box::new(
                    self.keys.map_record(*now, false)?,
                )))),
            }
        })
    }

    fn list(&self, status: Option<Status>) -> StoreFuture<'_, Vec<EscalationRecord>> {
        Box::pin(async move {
            let records = self.inner.list(status).await?;
            let mut out = Vec::with_capacity(records.len());
            for record in records {
                match self.keys.map_record(record, false) {
                    Ok(record) => out.push(record),
                    Err(e) => unreadable(&e),
                }
            }
            Ok(out)
        })
    }

    fn audit<'a>(&'a self, id: Option<&'a EscalationId>) -> StoreFuture<'a, Vec<AuditEntry>> {
        Box::pin(async move {
            let entries = self.inner.audit(id).await?;
            let mut out = Vec::with_capacity(entries.len());
            for entry in entries {
                match self.keys.map_audit(entry, false) {
                    Ok(entry) => out.push(entry),
                    Err(e) => unreadable(&e),
                }
            }
            Ok(out)
        })
    }

    fn watch(&self, id: &EscalationId) -> Option<ChangeFuture> {
        self.inner.watch(id)
    }
}

/// `store`, sealed when the config names an encryption key.
pub(crate) fn seal_if_configured<S: EscalationStore>(
    store: S,
    config: &crate::config::EscalationConfig,
) -> Result<Arc<dyn EscalationStore>, ConfigError> {
    match Keyring::from_env(
        config.encryption_key_env.as_deref(),
        config.previous_encryption_keys_env.as_deref(),
    )? {
        Some(keys) => Ok(Arc::new(SealedStore::new(store, keys))),
        None => Ok(Arc::new(store)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY_B: &str = "HxceHRwbGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgE=";

    #[test]
    fn values_round_trip_bound_to_their_record_and_key() {
        let keys = Keyring::new(KEY_A, &[]).unwrap();
        let id = EscalationId::new("esc_1");
        let value = json!({"body": {"messages": [{"content": "my card is 4111"}]}});
        let sealed = keys.seal(&id, "request", &value).unwrap();
        assert!(!sealed.to_string().contains("4111"));
        assert_eq!(keys.open(&id, "request", sealed.clone()).unwrap(), value);
        // Another record or field: refused.
        assert!(keys
            .open(&EscalationId::new("esc_2"), "request", sealed.clone())
            .is_err());
        assert!(keys.open(&id, "result", sealed.clone()).is_err());
        // After rotation the old key still opens it; without it, it does not.
        let rotated = Keyring::new(KEY_B, &[KEY_A]).unwrap();
        assert_eq!(rotated.open(&id, "request", sealed.clone()).unwrap(), value);
        let fresh = rotated.seal(&id, "request", &value).unwrap();
        assert_ne!(fresh["key_id"], sealed["key_id"]);
        let forgotten = Keyring::new(KEY_B, &[]).unwrap();
        assert!(forgotten.open(&id, "request", sealed).is_err());
        // Plain values (written before encryption) are read as they are.
        assert_eq!(keys.open(&id, "request", value.clone()).unwrap(), value);
        assert!(Keyring::new("c2hvcnQ=", &[]).is_err());
    }
}
