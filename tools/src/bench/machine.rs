//! What the figures were measured on: date, CPUs, memory, kernel, versions.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::python::Peers;

/// The machine and the build behind one run.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub(crate) date: String,
    /// `loky::cpu_count()`: affinity, cgroup quota, `LOKY_MAX_CPU_COUNT`.
    pub(crate) cpu_count: usize,
    /// `loky::cpu_count_physical()`.
    pub(crate) cpu_count_physical: usize,
    /// `std::thread::available_parallelism()`.
    pub(crate) available_parallelism: usize,
    /// The CPU's model name, from `/proc/cpuinfo`.
    pub(crate) cpu_model: Option<String>,
    /// Total memory, from `/proc/meminfo`.
    pub(crate) mem_bytes: Option<u64>,
    /// The kernel's release, from `/proc/sys/kernel/osrelease`.
    pub(crate) kernel: Option<String>,
    pub(crate) arch: &'static str,
    pub(crate) loky_version: &'static str,
    /// `rustc --version` of the compiler that built this binary.
    pub(crate) rustc: Option<&'static str>,
    /// Whether the binary was built with optimisations.
    pub(crate) release: bool,
    pub(crate) workers: usize,
    pub(crate) quick: bool,
}

impl Machine {
    pub(crate) fn probe(workers: usize, quick: bool) -> Self {
        let rustc = env!("LOKY_TOOLS_RUSTC_VERSION");
        Machine {
            date: utc_now(),
            cpu_count: loky::cpu_count(),
            cpu_count_physical: loky::cpu_count_physical(),
            available_parallelism: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model: read_field("/proc/cpuinfo", "model name")
                .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" ")),
            mem_bytes: read_field("/proc/meminfo", "MemTotal").and_then(|m| {
                let kib: u64 = m.trim_end_matches("kB").trim().parse().ok()?;
                Some(kib * 1024)
            }),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_owned()),
            arch: std::env::consts::ARCH,
            // loky-tools shares the workspace's version with loky.
            loky_version: env!("CARGO_PKG_VERSION"),
            rustc: (!rustc.is_empty()).then_some(rustc),
            release: !cfg!(debug_assertions),
            workers,
            quick,
        }
    }

    /// One line for the top of the markdown report.
    pub(crate) fn summary(&self, peers: Option<&Peers>) -> String {
        let mut parts = vec![
            format!("loky {}", self.loky_version),
            self.date.clone(),
            format!(
                "loky::cpu_count() {} (available_parallelism {}, physical cores {})",
                self.cpu_count, self.available_parallelism, self.cpu_count_physical
            ),
        ];
        if let Some(model) = &self.cpu_model {
            parts.push(format!("{} {model}", self.arch));
        } else {
            parts.push(self.arch.to_owned());
        }
        if let Some(mem) = self.mem_bytes {
            parts.push(format!("{:.0} GiB", mem as f64 / (1u64 << 30) as f64));
        }
        if let Some(kernel) = &self.kernel {
            parts.push(format!("Linux {kernel}"));
        }
        if let Some(rustc) = self.rustc {
            parts.push(rustc.to_owned());
        }
        parts.push(format!("{} workers", self.workers));
        if !self.release {
            parts.push("DEBUG build (use --release)".into());
        }
        if self.quick {
            parts.push("--quick".into());
        }
        if let Some(p) = peers {
            parts.push(p.summary());
        }
        parts.join(", ")
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "date": self.date,
            "cpu_count": self.cpu_count,
            "cpu_count_physical": self.cpu_count_physical,
            "available_parallelism": self.available_parallelism,
            "cpu_model": self.cpu_model,
            "mem_bytes": self.mem_bytes,
            "kernel": self.kernel,
            "arch": self.arch,
            "loky_version": self.loky_version,
            "rustc": self.rustc,
            "release": self.release,
            "workers": self.workers,
            "quick": self.quick,
        })
    }
}

/// The value of the first `key: value` line of a `/proc` file.
fn read_field(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    })
}

/// Now, in UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

fn format_utc(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_704_067_199), "2023-12-31T23:59:59Z");
        assert_eq!(format_utc(1_709_251_200 + 3661), "2024-03-01T01:01:01Z");
    }
}
