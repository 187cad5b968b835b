//! CPU counts and topology (placeholder, being written).

/// Number of CPUs usable by this process.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Number of physical cores usable by this process.
pub fn cpu_count_physical() -> usize {
    cpu_count()
}
