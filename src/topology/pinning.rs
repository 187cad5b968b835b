//! Where workers run: the `pin` option of the executor builder.

/// How workers are placed on CPUs (builder option
/// [`pin`](crate::ProcessPoolExecutorBuilder::pin)).
///
/// A worker is pinned to one CPU of the process's affinity mask for its
/// whole life; a worker that replaces a dead or retired one takes its
/// predecessor's CPU. With more workers than CPUs the plan wraps around.
///
/// ```
/// use loky::{Pinning, ProcessPoolExecutor};
/// let ex = ProcessPoolExecutor::builder().max_workers(1).pin(Pinning::Cores).build()?;
/// assert_eq!(ex.submit(|x: u8| x, 1)?.result()?, 1);
/// # Ok::<(), loky::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Pinning {
    /// No pinning: the kernel places workers (the default).
    #[default]
    None,
    /// One worker per CPU of the affinity mask, in CPU order.
    Cores,
    /// One worker per physical core first (one SMT sibling each), then the
    /// remaining SMT siblings.
    PhysicalCores,
    /// Spread workers across NUMA nodes, physical cores first within each
    /// node. Needs the `hwloc` feature to see NUMA nodes; without it this is
    /// [`Pinning::PhysicalCores`] (with a warning).
    Numa,
}

/// The CPU of each worker slot under `pinning`, or `None` for no pinning.
pub(crate) fn plan_for(pinning: Pinning, slots: usize) -> Option<Vec<usize>> {
    let plan = match pinning {
        Pinning::None => return None,
        Pinning::Cores => super::pinning_plan(slots, false),
        Pinning::PhysicalCores => super::pinning_plan(slots, true),
        Pinning::Numa => numa_plan(slots),
    };
    if plan.is_empty() {
        tracing::warn!(
            ?pinning,
            "no CPU could be read for pinning; workers are not pinned"
        );
        return None;
    }
    Some(plan)
}

#[cfg(not(feature = "hwloc"))]
fn numa_plan(slots: usize) -> Vec<usize> {
    tracing::warn!("Pinning::Numa needs the `hwloc` feature to see NUMA nodes; pinning to physical cores instead");
    super::pinning_plan(slots, true)
}

#[cfg(feature = "hwloc")]
fn numa_plan(slots: usize) -> Vec<usize> {
    match super::hwloc::numa_spread_plan(slots) {
        Ok(plan) => plan,
        Err(e) => {
            tracing::warn!(error = %e, "hwloc topology unavailable; pinning to physical cores instead");
            super::pinning_plan(slots, true)
        }
    }
}
