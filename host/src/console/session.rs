//! Console sessions. Signing in exchanges an operator credential for a
//! random session id, sent back only in an `HttpOnly`, `SameSite=Strict`
//! cookie (`Secure` on TLS). The server keeps, by the id's SHA-256, the
//! credential itself, so every request authenticates the operator again:
//! a token removed from the configuration or an expired JWT ends the
//! session at once. Each session has its own CSRF token, which every form
//! carries. Sessions live in memory: a restart signs everyone out.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use sha2::{Digest, Sha256};

use crate::identity::constant_time_eq;

/// The session cookie's name.
pub const COOKIE: &str = "arbiter_console";
/// The cookie that carries the sign-in form's CSRF token, before there is
/// a session to hold it.
pub const LOGIN_COOKIE: &str = "arbiter_console_login";

/// How long sessions last, and how many there may be.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Unused this long, a session ends.
    pub idle_ms: u64,
    /// This long after sign-in, a session ends however used.
    pub max_ms: u64,
    /// Sessions at once.
    pub max: usize,
}

/// A message for the next page a session sees, after a form's redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    /// Whether it reports success.
    pub ok: bool,
    /// What to say.
    pub message: String,
}

struct Session {
    credential: String,
    csrf: String,
    created_ms: u64,
    seen_ms: u64,
    flash: Option<Flash>,
}

/// A live session, as one request sees it.
#[derive(Debug)]
pub struct Found {
    /// The operator credential it was opened with.
    pub credential: String,
    /// Its CSRF token.
    pub csrf: String,
    /// A message left for this page, taken.
    pub flash: Option<Flash>,
}

/// Every console session of this server.
pub struct Sessions {
    all: Mutex<HashMap<[u8; 32], Session>>,
    limits: Limits,
}

impl Sessions {
    /// No sessions yet.
    pub fn new(limits: Limits) -> Self {
        Sessions {
            all: Mutex::new(HashMap::new()),
            limits,
        }
    }

    /// Opens a session for `credential`; returns its id and CSRF token.
    /// At the limit, the least recently used session ends first.
    pub fn open(&self, credential: String, now_ms: u64) -> Result<(String, String), String> {
        let id = random_token()?;
        let csrf = random_token()?;
        let mut all = self.lock();
        self.sweep(&mut all, now_ms);
        while all.len() >= self.limits.max {
            let Some(oldest) = all.iter().min_by_key(|(_, s)| s.seen_ms).map(|(k, _)| *k) else {
                break;
            };
            all.remove(&oldest);
        }
        all.insert(
            key(&id),
            Session {
                credential,
                csrf: csrf.clone(),
                created_ms: now_ms,
                seen_ms: now_ms,
                flash: None,
            },
        );
        Ok((id, csrf))
    }

    /// The live session `id` names, now used; `None` for an unknown or
    /// ended one.
    pub fn find(&self, id: &str, now_ms: u64) -> Option<Found> {
        let mut all = self.lock();
        let k = key(id);
        let s = all.get_mut(&k)?;
        if self.expired(s, now_ms) {
            all.remove(&k);
            return None;
        }
        s.seen_ms = now_ms;
        Some(Found {
            credential: s.credential.clone(),
            csrf: s.csrf.clone(),
            flash: s.flash.take(),
        })
    }

    /// Whether session `id` is live, without counting this as a use (a
    /// live view left open does not keep its session from ending).
    pub fn alive(&self, id: &str, now_ms: u64) -> bool {
        self.lock()
            .get(&key(id))
            .is_some_and(|s| !self.expired(s, now_ms))
    }

    /// Leaves `flash` for the next page session `id` sees.
    pub fn flash(&self, id: &str, flash: Flash) {
        if let Some(s) = self.lock().get_mut(&key(id)) {
            s.flash = Some(flash);
        }
    }

    /// Ends session `id`.
    pub fn close(&self, id: &str) {
        self.lock().remove(&key(id));
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expired(&self, s: &Session, now_ms: u64) -> bool {
        now_ms.saturating_sub(s.seen_ms) >= self.limits.idle_ms
            || now_ms.saturating_sub(s.created_ms) >= self.limits.max_ms
    }

    fn sweep(&self, all: &mut HashMap<[u8; 32], Session>, now_ms: u64) {
        all.retain(|_, s| !self.expired(s, now_ms));
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.all.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `given` is `expected`, in constant time.
pub fn same_token(given: &str, expected: &str) -> bool {
    !expected.is_empty() && constant_time_eq(given.as_bytes(), expected.as_bytes())
}

/// 32 random bytes, hex.
pub fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a session: {e}"))?;
    Ok(crate::hex::encode(&bytes))
}

/// Sessions are found by their id's digest, so the map holds nothing a
/// memory dump could replay as a cookie.
fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a hyper::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(max: usize) -> Sessions {
        Sessions::new(Limits {
            idle_ms: 1_000,
            max_ms: 5_000,
            max,
        })
    }

    #[test]
    fn a_session_ends_when_idle_or_old_and_its_flash_is_read_once() {
        let s = sessions(10);
        let (id, csrf) = s.open("token".into(), 0).expect("opens");
        assert_eq!(csrf.len(), 64);
        s.flash(
            &id,
            Flash {
                ok: true,
                message: "done".into(),
            },
        );
        let found = s.find(&id, 900).expect("live");
        assert_eq!((found.credential.as_str(), found.csrf), ("token", csrf));
        assert_eq!(found.flash.map(|f| f.message), Some("done".into()));
        assert!(s.find(&id, 1_000).expect("used at 900").flash.is_none());
        // Idle for a second: gone.
        assert!(s.find(&id, 2_000).is_none());
        let (id, _) = s.open("token".into(), 0).expect("opens");
        for t in (900..5_000).step_by(900) {
            assert!(s.find(&id, t).is_some(), "used at {t}");
        }
        assert!(s.find(&id, 5_000).is_none(), "older than the maximum");
        assert!(s.find("forged", 0).is_none());
    }

    #[test]
    fn at_the_limit_the_least_recently_used_session_ends() {
        let s = sessions(2);
        let (a, _) = s.open("a".into(), 0).expect("opens");
        let (b, _) = s.open("b".into(), 1).expect("opens");
        assert!(s.find(&a, 2).is_some());
        let (c, _) = s.open("c".into(), 3).expect("opens");
        assert!(s.find(&b, 4).is_none());
        assert!(s.find(&a, 4).is_some() && s.find(&c, 4).is_some());
        s.close(&a);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = hyper::HeaderMap::new();
        h.append(
            hyper::header::COOKIE,
            "x_arbiter_console=evil; arbiter_console=abc"
                .parse()
                .expect("header"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), None);
        assert!(!same_token("", ""));
    }
}
