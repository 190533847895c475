//! The web pages' login sessions, kept in memory (design in `docs/ui.md` and
//! `crate::web::session`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A live session: the hash of the token that logged in, and the session's CSRF token.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LiveSession {
    pub token_hash: String,
    pub csrf: String,
}

/// A session unused this long is forgotten.
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// More live sessions than this and the least recently used goes: memory stays bounded whatever
/// a client does with the login form.
const MAX_SESSIONS: usize = 10_000;

struct Session {
    token_hash: String,
    csrf: String,
    last_seen: Instant,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

pub(crate) fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves the map consistent (each operation is one
        // insert or remove), so a poisoned lock is used as it is.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session for a token; returns its id (the cookie's value). Its CSRF token is read
    /// with the session on the next request.
    pub(crate) fn create(&self, token_hash: String) -> String {
        let id = random_hex();
        let csrf = random_hex();
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, s| now.duration_since(s.last_seen) < IDLE);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                token_hash,
                csrf,
                last_seen: now,
            },
        );
        id
    }

    /// The token hash and CSRF token of a live session, which counts as used now.
    pub(crate) fn touch(&self, id: &str) -> Option<LiveSession> {
        let mut map = self.lock();
        let now = Instant::now();
        let s = map.get_mut(id)?;
        if now.duration_since(s.last_seen) >= IDLE {
            map.remove(id);
            return None;
        }
        s.last_seen = now;
        Some(LiveSession {
            token_hash: s.token_hash.clone(),
            csrf: s.csrf.clone(),
        })
    }

    pub(crate) fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_hold_their_csrf_and_forget_on_remove() {
        let s = Sessions::default();
        let id = s.create("h".into());
        let csrf = s.lock()[&id].csrf.clone();
        assert_eq!(csrf.len(), 64);
        assert_eq!(
            s.touch(&id),
            Some(LiveSession {
                token_hash: "h".to_string(),
                csrf
            })
        );
        s.remove(&id);
        assert_eq!(s.touch(&id), None);
        assert_eq!(s.touch("made-up"), None);
    }
}
