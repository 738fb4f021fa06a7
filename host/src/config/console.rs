//! `[console]`: the operator console on the admin listener.

use serde::Deserialize;

/// `[console]`: sign-in sessions and the names the console answers to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve `/console` on the admin listener. Default: true.
    pub enabled: bool,
    /// Seconds a session lasts without use. Default: 1800.
    pub session_idle_s: u64,
    /// Seconds a session lasts at most, used or not. Default: 43200.
    pub session_max_s: u64,
    /// Sessions at once; past it the least recently used ends. Default: 256.
    pub max_sessions: usize,
    /// Live event streams at once, every session together. Default: 32.
    pub max_streams: usize,
    /// Host names (besides loopback's and the listener's own address) a
    /// browser may call the console by, as behind a proxy. A request naming
    /// another is refused, so a page that rebinds its own name to this
    /// address reaches nothing.
    pub hosts: Vec<String>,
    /// Mark the session cookie `Secure` although the admin listener is
    /// plain HTTP, for a proxy that terminates TLS in front of it.
    pub secure_cookie: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            session_idle_s: 1800,
            session_max_s: 43_200,
            max_sessions: 256,
            max_streams: 32,
            hosts: Vec::new(),
            secure_cookie: false,
        }
    }
}

impl ConsoleConfig {
    pub(super) fn check(&self) -> Result<(), String> {
        if !(60..=86_400).contains(&self.session_idle_s) {
            return Err("`console.session_idle_s` must be from 60 to 86400".into());
        }
        if !(self.session_idle_s..=7 * 86_400).contains(&self.session_max_s) {
            return Err(
                "`console.session_max_s` must be from `console.session_idle_s` to 604800".into(),
            );
        }
        if !(1..=100_000).contains(&self.max_sessions) {
            return Err("`console.max_sessions` must be from 1 to 100000".into());
        }
        if !(1..=1024).contains(&self.max_streams) {
            return Err("`console.max_streams` must be from 1 to 1024".into());
        }
        for h in &self.hosts {
            let ok = !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
            if !ok {
                return Err(format!(
                    "`console.hosts`: `{}` is not a host name (letters, digits, `.` and `-`, without a port)",
                    h.chars().take(80).collect::<String>()
                ));
            }
        }
        Ok(())
    }
}
