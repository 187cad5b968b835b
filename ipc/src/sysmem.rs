//! How much memory the machine has, for limits on shared memory.

use std::sync::OnceLock;

fn totals() -> (usize, usize) {
    static TOTALS: OnceLock<(usize, usize)> = OnceLock::new();
    *TOTALS.get_or_init(|| {
        let info = rustix::system::sysinfo();
        let unit = u64::from(info.mem_unit);
        let bytes = |n: u64| usize::try_from(unit.saturating_mul(n)).unwrap_or(usize::MAX);
        (bytes(info.totalram as u64), bytes(info.totalswap as u64))
    })
}

/// Physical memory in bytes.
pub fn physical_memory() -> usize {
    totals().0
}

/// Physical memory plus swap in bytes: no shared buffer can usefully be
/// larger.
pub fn memory_and_swap() -> usize {
    let (ram, swap) = totals();
    ram.saturating_add(swap)
}
