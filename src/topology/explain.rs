//! Why [`cpu_count`](super::cpu_count) returned what it did: every limit
//! that was consulted, what it said, where it was read, and which one won.

use std::fmt;

/// Which kind of limit a [`CpuLimit`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitKind {
    /// CPUs the kernel has online (`/sys/devices/system/cpu/online`).
    Online,
    /// CPUs in the calling thread's scheduler affinity mask
    /// (`sched_getaffinity`, which also reflects a cgroup `cpuset`).
    Affinity,
    /// A cgroup v1 CFS bandwidth quota (`cpu.cfs_quota_us` / `cpu.cfs_period_us`).
    CgroupV1,
    /// A cgroup v2 bandwidth quota (`cpu.max`).
    CgroupV2,
    /// The `LOKY_MAX_CPU_COUNT` environment variable.
    Env,
}

impl LimitKind {
    /// A short human-readable name, e.g. `"cgroup v2"`.
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::Online => "online",
            LimitKind::Affinity => "affinity",
            LimitKind::CgroupV1 => "cgroup v1",
            LimitKind::CgroupV2 => "cgroup v2",
            LimitKind::Env => "env",
        }
    }

    /// Whether this limit is a CPU-time quota (cgroup) or a user cap (env),
    /// i.e. one that also bounds the physical core count.
    pub(crate) fn caps_physical(self) -> bool {
        matches!(
            self,
            LimitKind::CgroupV1 | LimitKind::CgroupV2 | LimitKind::Env
        )
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// What a limit said.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitValue {
    /// The source caps the count at this many CPUs (always at least 1).
    Cpus(usize),
    /// The source was consulted and sets no cap (`max`, `-1`, variable unset).
    Unlimited,
    /// The source could not be used (missing, unreadable or malformed) and
    /// was ignored; the string says why.
    Unavailable(String),
}

impl LimitValue {
    /// The cap, if this value is one.
    pub fn cpus(&self) -> Option<usize> {
        match self {
            LimitValue::Cpus(n) => Some(*n),
            _ => None,
        }
    }
}

impl fmt::Display for LimitValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitValue::Cpus(n) => f.pad(&n.to_string()),
            LimitValue::Unlimited => f.pad("unlimited"),
            LimitValue::Unavailable(_) => f.pad("ignored"),
        }
    }
}

/// One limit on the number of usable CPUs, as consulted by
/// [`cpu_count_report`](super::cpu_count_report).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CpuLimit {
    /// Which limit this is.
    pub kind: LimitKind,
    /// Where it was read: a file path (e.g. `/sys/fs/cgroup/user.slice/cpu.max`),
    /// a system call (`sched_getaffinity`), an environment variable
    /// (`$LOKY_MAX_CPU_COUNT`), or `injected` for values given to a
    /// [`CpuProbe`](super::CpuProbe).
    pub source: String,
    /// The raw content that was read, trimmed (e.g. `"150000 100000"`), or
    /// `None` if there was nothing to read.
    pub raw: Option<String>,
    /// What the limit amounts to.
    pub value: LimitValue,
    /// Whether this is the limit that set the logical count
    /// ([`CpuCountReport::logical`]). At most one limit is marked.
    pub applied: bool,
}

impl CpuLimit {
    pub(crate) fn new(
        kind: LimitKind,
        source: impl Into<String>,
        raw: Option<&str>,
        value: LimitValue,
    ) -> Self {
        CpuLimit {
            kind,
            source: source.into(),
            raw: raw.map(|raw| raw.trim().to_owned()),
            value,
            applied: false,
        }
    }
}

impl fmt::Display for CpuLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.applied { "*" } else { " " };
        write!(
            f,
            "{mark} {:<9} {:>9}  {}",
            self.kind, self.value, self.source
        )?;
        match (&self.raw, &self.value) {
            (_, LimitValue::Unavailable(why)) => {
                if let Some(raw) = &self.raw {
                    write!(f, " = {raw:?}")?;
                }
                write!(f, " ({why})")?;
            }
            (Some(raw), _) => write!(f, " = {raw:?}")?,
            (None, _) => write!(f, " (not set)")?,
        }
        Ok(())
    }
}

/// The CPU counts together with the reasoning behind them; see
/// [`cpu_count_report`](super::cpu_count_report).
///
/// Its `Display` prints one line per count and one line per limit, the
/// limit that set the logical count marked with `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CpuCountReport {
    /// The logical CPU count: what [`cpu_count`](super::cpu_count) returns.
    pub logical: usize,
    /// The physical core count: what
    /// [`cpu_count_physical`](super::cpu_count_physical) returns.
    pub physical: usize,
    /// Distinct physical cores among [`usable_cpus`](Self::usable_cpus),
    /// before quotas and `LOKY_MAX_CPU_COUNT`; `None` if the topology could
    /// not be read (then `physical` falls back to the logical count).
    pub physical_cores: Option<usize>,
    /// CPUs that are both online and in the affinity mask, sorted.
    pub usable_cpus: Vec<usize>,
    /// Every limit consulted, in the order online, affinity, cgroups (outermost
    /// first), environment.
    pub limits: Vec<CpuLimit>,
}

impl CpuCountReport {
    /// The limit that set the logical count, or `None` if no limit gave a
    /// value (the count then defaults to 1).
    pub fn applied(&self) -> Option<&CpuLimit> {
        self.limits.iter().find(|limit| limit.applied)
    }

    /// The quota or environment limit that brought the physical count below
    /// [`physical_cores`](Self::physical_cores), if one did.
    pub fn physical_limited_by(&self) -> Option<&CpuLimit> {
        let cores = self.physical_cores.unwrap_or(self.logical);
        if self.physical >= cores {
            return None;
        }
        self.limits
            .iter()
            .find(|limit| limit.kind.caps_physical() && limit.value.cpus() == Some(self.physical))
    }
}

impl fmt::Display for CpuCountReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "logical CPUs:   {}", self.logical)?;
        match self.applied() {
            Some(limit) => writeln!(f, " (set by {}: {})", limit.kind, limit.source)?,
            None => writeln!(f, " (no limit could be read; defaulting to 1)")?,
        }
        write!(f, "physical cores: {}", self.physical)?;
        match (self.physical_cores, self.physical_limited_by()) {
            (_, Some(limit)) => writeln!(f, " (set by {}: {})", limit.kind, limit.source)?,
            (Some(cores), None) => writeln!(
                f,
                " ({cores} cores among usable CPUs {})",
                super::cpulist::format(&self.usable_cpus)
            )?,
            (None, None) => writeln!(f, " (topology unknown; same as logical)")?,
        }
        write!(f, "limits:")?;
        for limit in &self.limits {
            write!(f, "\n  {limit}")?;
        }
        Ok(())
    }
}
