//! Time as the host writes it: the wall clock behind a trait (tests bring
//! their own) and RFC 3339 timestamps for records and answers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The host's wall clock, in milliseconds since the Unix epoch; tests give
/// their own.
pub trait Clock: Send + Sync {
    /// Now.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// RFC 3339 in UTC with microseconds.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// RFC 3339 of `ms` milliseconds since the epoch.
pub fn ms_time(ms: u64) -> String {
    timestamp(UNIX_EPOCH + Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        assert_eq!(ms_time(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(ms_time(1_500), "1970-01-01T00:00:01.500000Z");
    }

    #[test]
    fn the_system_clock_is_past_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
