//! Rate-limited logging for every log line a guest can trigger.
//!
//! The guest is the attacker: a log line per bad register write or malformed descriptor chain
//! would let it fill the host's disk (or stall the loop on a slow stderr) at the rate it can
//! exit. Each call site of [`rl_warn!`](crate::rl_warn) (and its siblings) gets its own
//! [`RateLimiter`]: at most [`BURST`] lines per [`INTERVAL_MS`] window. Lines beyond that are
//! counted, and the next line the site prints in a later window says how many were suppressed
//! (`... (N more suppressed)`).
//!
//! Like Linux's `printk_ratelimited`, the state lives in a `static` per call site, so several
//! devices of the same kind share the budget of the sites they share. The counters are atomics
//! only because statics must be `Sync`; every device runs on the event-loop thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Lines each call site may print per window.
pub const BURST: u64 = 5;
/// Length of a window in milliseconds.
pub const INTERVAL_MS: u64 = 5_000;

/// What a call site may do with the line it is about to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` lines were dropped at this site since the last line it printed.
    Log {
        /// Lines dropped since the previous printed one.
        suppressed: u64,
    },
    /// Drop it (counted).
    Suppress,
}

/// One call site's budget. Build it with [`RateLimiter::new`] in a `static`.
#[derive(Debug)]
pub struct RateLimiter {
    /// The window (milliseconds since the process epoch / INTERVAL_MS) of the last check.
    window: AtomicU64,
    /// Lines printed in `window`.
    printed: AtomicU64,
    /// Lines dropped since the last printed one.
    suppressed: AtomicU64,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    /// A limiter whose first window starts at the first check.
    pub const fn new() -> Self {
        RateLimiter {
            window: AtomicU64::new(u64::MAX),
            printed: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Decides for a line logged now.
    pub fn check(&self) -> Verdict {
        self.check_at(now_ms())
    }

    /// Decides for a line logged at `now_ms` milliseconds (monotonic). Exposed for tests.
    pub fn check_at(&self, now_ms: u64) -> Verdict {
        let window = now_ms / INTERVAL_MS;
        if self.window.swap(window, Ordering::Relaxed) != window {
            self.printed.store(0, Ordering::Relaxed);
        }
        if self.printed.fetch_add(1, Ordering::Relaxed) < BURST {
            Verdict::Log {
                suppressed: self.suppressed.swap(0, Ordering::Relaxed),
            }
        } else {
            // Keep `printed` from wrapping under a flood that lasts a whole window.
            self.printed.store(BURST, Ordering::Relaxed);
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            Verdict::Suppress
        }
    }

    /// Lines dropped since the last printed one.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

/// Milliseconds since the first call in this process (monotonic clock).
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let elapsed = EPOCH.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(elapsed).unwrap_or(u64::MAX)
}

/// Logs at `$level` through a per-call-site [`RateLimiter`]: at most [`BURST`] lines per
/// [`INTERVAL_MS`]; the first line after a suppression says how many were dropped. Lines
/// below the active log level cost one comparison and are not counted.
#[macro_export]
macro_rules! log_ratelimited {
    ($level:expr, $($arg:tt)+) => {{
        let level = $level;
        if $crate::__log::log_enabled!(level) {
            static LIMITER: $crate::ratelimit::RateLimiter = $crate::ratelimit::RateLimiter::new();
            match LIMITER.check() {
                $crate::ratelimit::Verdict::Log { suppressed: 0 } => {
                    $crate::__log::log!(level, $($arg)+)
                }
                $crate::ratelimit::Verdict::Log { suppressed } => $crate::__log::log!(
                    level,
                    "{} ({suppressed} more suppressed)",
                    format_args!($($arg)+)
                ),
                $crate::ratelimit::Verdict::Suppress => {}
            }
        }
    }};
}

/// [`log::error!`] through [`log_ratelimited!`](crate::log_ratelimited).
#[macro_export]
macro_rules! rl_error {
    ($($arg:tt)+) => { $crate::log_ratelimited!($crate::__log::Level::Error, $($arg)+) };
}

/// [`log::warn!`] through [`log_ratelimited!`](crate::log_ratelimited).
#[macro_export]
macro_rules! rl_warn {
    ($($arg:tt)+) => { $crate::log_ratelimited!($crate::__log::Level::Warn, $($arg)+) };
}

/// [`log::debug!`] through [`log_ratelimited!`](crate::log_ratelimited).
#[macro_export]
macro_rules! rl_debug {
    ($($arg:tt)+) => { $crate::log_ratelimited!($crate::__log::Level::Debug, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_per_window_then_suppressed_count_on_the_next_line() {
        let limiter = RateLimiter::new();
        let t0 = 7 * INTERVAL_MS + 1;
        for _ in 0..BURST {
            assert_eq!(limiter.check_at(t0), Verdict::Log { suppressed: 0 });
        }
        for i in 0..1000u64 {
            assert_eq!(limiter.check_at(t0 + i % 100), Verdict::Suppress);
        }
        assert_eq!(limiter.suppressed(), 1000);
        // Next window: the first line reports the drops, then the budget is full again.
        let t1 = t0 + INTERVAL_MS;
        assert_eq!(limiter.check_at(t1), Verdict::Log { suppressed: 1000 });
        for _ in 1..BURST {
            assert_eq!(limiter.check_at(t1), Verdict::Log { suppressed: 0 });
        }
        assert_eq!(limiter.check_at(t1), Verdict::Suppress);
        assert_eq!(limiter.suppressed(), 1);
    }

    #[test]
    fn a_quiet_site_is_not_limited() {
        let limiter = RateLimiter::new();
        for window in 0..20 {
            assert_eq!(
                limiter.check_at(window * INTERVAL_MS),
                Verdict::Log { suppressed: 0 }
            );
        }
    }
}
