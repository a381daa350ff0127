//! Review-page sign-ins: random, expiring, revocable server-side sessions, and
//! the per-address throttle of sign-in attempts.
//!
//! A session is 32 random bytes (the cookie value); the proxy keeps only their
//! SHA-256, with an expiry and a CSRF token of its own. Signing out removes it,
//! so the cookie stops working at once; it also stops working after
//! `auth.admin_session_secs`, and when `auth.max_admin_sessions` newer sign-ins
//! push it out. Sessions live in the process: a restart, or another proxy
//! behind the same load balancer, asks for a new sign-in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The cookie holding the session token.
pub(crate) const SESSION_COOKIE: &str = "llm_proxy_session";

/// The operating system's random source failed.
#[derive(Debug)]
pub(crate) struct RandomUnavailable;

impl std::fmt::Display for RandomUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the operating system's random source is unavailable")
    }
}

impl std::error::Error for RandomUnavailable {}

/// 32 random bytes as 64 hex digits.
pub(crate) fn random_token() -> Result<String, RandomUnavailable> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| RandomUnavailable)?;
    Ok(super::keys::hex(&bytes))
}

/// A signed-in admin, as a request sees it. `Debug` hides the CSRF token.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Session {
    /// The id of the admin key that signed in (see
    /// [`client_key_id`](crate::client_id::client_key_id)).
    pub(crate) admin_id: String,
    /// The token state-changing requests may carry in `x-csrf-token`.
    pub(crate) csrf_token: String,
    /// When it ends.
    pub(crate) expires_at: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("admin_id", &self.admin_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The sessions of this process. `Debug` shows how many, never a token.
pub(crate) struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
    lifetime: Duration,
    max: usize,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.by_hash.lock().map_or(0, |map| map.len());
        f.debug_struct("Sessions")
            .field("count", &count)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Sessions {
    /// Sessions lasting `lifetime`, at most `max` at once.
    pub(crate) fn new(lifetime: Duration, max: usize) -> Self {
        Self {
            by_hash: Mutex::new(HashMap::new()),
            lifetime,
            max: max.max(1),
        }
    }

    /// How long a session lasts.
    pub(crate) fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A new session for `admin_id`: its token (the cookie value) and itself.
    pub(crate) fn create(
        &self,
        admin_id: String,
        now: Instant,
    ) -> Result<(String, Session), RandomUnavailable> {
        let token = random_token()?;
        let session = Session {
            admin_id,
            csrf_token: random_token()?,
            expires_at: now + self.lifetime,
        };
        let mut map = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.expires_at > now);
        while map.len() >= self.max {
            // Full of live sessions: the one that ends first goes.
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| *k)
            else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(token_hash(&token), session.clone());
        Ok((token, session))
    }

    /// The live session of `token`; an expired one is removed.
    pub(crate) fn get(&self, token: &str, now: Instant) -> Option<Session> {
        let hash = token_hash(token);
        let mut map = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&hash) {
            Some(session) if session.expires_at > now => Some(session.clone()),
            Some(_) => {
                map.remove(&hash);
                None
            }
            None => None,
        }
    }

    /// Ends the session of `token`; whether there was one.
    pub(crate) fn end(&self, token: &str) -> bool {
        let mut map = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&token_hash(token)).is_some()
    }

    /// Sessions alive now.
    #[cfg(test)]
    fn live(&self, now: Instant) -> usize {
        let map = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|s| s.expires_at > now).count()
    }
}

/// Sign-in attempts per client address: at most `per_minute` in each
/// one-minute window, then 429 with the time left in the window.
#[derive(Debug)]
pub(crate) struct LoginThrottle {
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    per_minute: u32,
}

/// The most addresses tracked at once; when every slot holds an address whose
/// window is still running, new addresses wait for a slot (sign-ins fail
/// closed rather than letting a flood of addresses reset the counts).
pub(crate) const MAX_THROTTLED_ADDRESSES: usize = 10_000;

const WINDOW: Duration = Duration::from_secs(60);

impl LoginThrottle {
    /// `per_minute` attempts per address per minute.
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            windows: Mutex::new(HashMap::new()),
            per_minute: per_minute.max(1),
        }
    }

    /// Counts an attempt from `addr`; `Err` is how long until it may try again.
    pub(crate) fn attempt(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut map = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&addr) && map.len() >= MAX_THROTTLED_ADDRESSES {
            map.retain(|_, (start, _)| now.saturating_duration_since(*start) < WINDOW);
            if map.len() >= MAX_THROTTLED_ADDRESSES {
                let next_free = map
                    .values()
                    .map(|(start, _)| (*start + WINDOW).saturating_duration_since(now))
                    .min()
                    .unwrap_or(WINDOW);
                return Err(next_free);
            }
        }
        let (start, count) = map.entry(addr).or_insert((now, 0));
        if now.saturating_duration_since(*start) >= WINDOW {
            *start = now;
            *count = 0;
        }
        if *count >= self.per_minute {
            return Err((*start + WINDOW).saturating_duration_since(now));
        }
        *count += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_end_and_are_bounded() {
        let sessions = Sessions::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        let (a, session) = sessions.create("admin".into(), t0).unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(session.csrf_token, a);
        assert_eq!(sessions.get(&a, t0).unwrap().admin_id, "admin");
        assert!(sessions.get("not a session", t0).is_none());
        // Expired at its end.
        assert!(sessions.get(&a, t0 + Duration::from_secs(60)).is_none());
        // Ended by signing out.
        let (b, _) = sessions.create("admin".into(), t0).unwrap();
        assert!(sessions.end(&b));
        assert!(sessions.get(&b, t0).is_none());
        assert!(!sessions.end(&b));
        // The third live one pushes out the one that ends first.
        let (c, _) = sessions.create("x".into(), t0).unwrap();
        let (d, _) = sessions
            .create("y".into(), t0 + Duration::from_secs(1))
            .unwrap();
        let (e, _) = sessions
            .create("z".into(), t0 + Duration::from_secs(2))
            .unwrap();
        let now = t0 + Duration::from_secs(2);
        assert!(sessions.get(&c, now).is_none());
        assert!(sessions.get(&d, now).is_some() && sessions.get(&e, now).is_some());
        assert_eq!(sessions.live(now), 2);
        let shown = format!("{sessions:?} {:?}", sessions.get(&d, now).unwrap());
        assert!(
            !shown.contains(&session.csrf_token) && !shown.contains(&d),
            "{shown}"
        );
    }

    #[test]
    fn the_throttle_counts_per_address_and_minute() {
        let throttle = LoginThrottle::new(3);
        let t0 = Instant::now();
        let one: IpAddr = [10, 0, 0, 1].into();
        let two: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..3 {
            throttle.attempt(one, t0).unwrap();
        }
        let wait = throttle
            .attempt(one, t0 + Duration::from_secs(20))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(40));
        throttle.attempt(two, t0).unwrap();
        throttle.attempt(one, t0 + WINDOW).unwrap();
    }

    #[test]
    fn the_throttle_tracks_a_bounded_number_of_addresses() {
        let throttle = LoginThrottle::new(3);
        let t0 = Instant::now();
        let address = |i: usize| IpAddr::from(std::net::Ipv6Addr::from(i as u128 + 1));
        for i in 0..MAX_THROTTLED_ADDRESSES {
            throttle.attempt(address(i), t0).unwrap();
        }
        // Full of running windows: a new address waits for the first to end,
        // and nothing is added.
        let later = t0 + Duration::from_secs(10);
        let wait = throttle
            .attempt(address(MAX_THROTTLED_ADDRESSES), later)
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert_eq!(
            throttle.windows.lock().unwrap().len(),
            MAX_THROTTLED_ADDRESSES
        );
        // A known address still counts as usual.
        throttle.attempt(address(0), later).unwrap();
        // Once the windows have run out, their slots are freed.
        throttle
            .attempt(address(MAX_THROTTLED_ADDRESSES), t0 + WINDOW)
            .unwrap();
        assert_eq!(throttle.windows.lock().unwrap().len(), 1);
    }
}
