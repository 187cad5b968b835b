//! The scheduler affinity mask: the CPUs this thread may run on.

use std::path::Path;

use rustix::thread::{sched_getaffinity, CpuSet};

use super::cpulist;
use super::read::read_text;

/// Reads the calling thread's mask with `sched_getaffinity`.
///
/// The fixed-size mask holds [`CpuSet::MAX_CPU`] (1024) CPUs; on larger
/// machines the call fails and the caller falls back to [`from_status`].
pub(crate) fn live() -> Result<Vec<usize>, String> {
    let set = sched_getaffinity(None).map_err(|e| format!("sched_getaffinity: {e}"))?;
    Ok((0..CpuSet::MAX_CPU)
        .filter(|&cpu| set.is_set(cpu))
        .collect())
}

/// Reads `Cpus_allowed_list` from `<procfs>/self/status` (the mask of the
/// main thread, in the kernel's list format, without a size limit).
/// `Ok(None)` if the file or the field is missing.
pub(crate) fn from_status(procfs: &Path) -> Result<Option<(String, Vec<usize>)>, String> {
    let path = procfs.join("self/status");
    let text = match read_text(&path) {
        Ok(Some(text)) => text,
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let Some(list) = text
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
    else {
        return Ok(None);
    };
    let cpus = cpulist::parse(list).map_err(|why| format!("malformed Cpus_allowed_list: {why}"))?;
    Ok(Some((list.trim().to_owned(), cpus)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn live_mask_is_not_empty() {
        let cpus = super::live().unwrap_or_default();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
    }
}
