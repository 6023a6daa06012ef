//! Time since the VMM started, for the boot-time figures Volt logs.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();

/// Marks the start of the VMM; the first call wins. `main` calls it first thing.
pub fn mark_start() {
    START.get_or_init(Instant::now);
}

/// Time since [`mark_start`] (or since this first call, when it never ran).
pub fn since_start() -> Duration {
    START.get_or_init(Instant::now).elapsed()
}
