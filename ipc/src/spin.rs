//! Bounded spinning before a futex sleep.

use std::time::{Duration, Instant};

/// Spins (with `spin_loop` hints) until `ready()` holds or `budget` has
/// passed; returns whether it became ready. The clock is read once every 32
/// polls, so the overshoot is a few hundred nanoseconds.
pub fn spin_until(budget: Duration, mut ready: impl FnMut() -> bool) -> bool {
    if ready() {
        return true;
    }
    if budget.is_zero() {
        return false;
    }
    let start = Instant::now();
    loop {
        for _ in 0..32 {
            std::hint::spin_loop();
            if ready() {
                return true;
            }
        }
        if start.elapsed() >= budget {
            return ready();
        }
    }
}
