//! loky: a robust, reusable process-pool executor with a shared-memory data plane.
#![cfg(target_os = "linux")]

pub mod topology;

pub use topology::{cpu_count, cpu_count_physical, cpu_count_report};
