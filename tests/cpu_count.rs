//! cpu_count, cpu_count_physical, the report and the pinning plan, on fake
//! sysfs/procfs/cgroup trees built in temporary directories, plus a few
//! checks against the real machine.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use loky::topology::{CpuProbe, LimitKind, LimitValue};

/// A fake system root in a temporary directory, removed on drop.
struct Tree {
    root: PathBuf,
}

impl Tree {
    fn new(name: &str) -> Tree {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let root =
            std::env::temp_dir().join(format!("loky-cpu-count-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create temp tree");
        Tree { root }
    }

    fn file(&self, path: &str, contents: &str) -> &Tree {
        let path = self.root.join(path);
        std::fs::create_dir_all(path.parent().expect("file has a parent")).expect("create dirs");
        std::fs::write(&path, contents).expect("write fixture file");
        self
    }

    fn dir(&self, path: &str) -> &Tree {
        std::fs::create_dir_all(self.root.join(path)).expect("create dir");
        self
    }

    fn path(&self, path: &str) -> String {
        self.root.join(path).display().to_string()
    }

    fn probe(&self) -> CpuProbe {
        CpuProbe::with_root(&self.root)
    }

    /// `online` CPUs, each a core of its own.
    fn cpus(&self, online: &str, n: usize) -> &Tree {
        self.file("sys/devices/system/cpu/online", online);
        for cpu in 0..n {
            self.cpu(cpu, 0, cpu, &cpu.to_string());
        }
        self
    }

    fn cpu(&self, cpu: usize, package: usize, core_id: usize, siblings: &str) -> &Tree {
        let dir = format!("sys/devices/system/cpu/cpu{cpu}/topology");
        self.file(
            &format!("{dir}/physical_package_id"),
            &format!("{package}\n"),
        )
        .file(&format!("{dir}/core_id"), &format!("{core_id}\n"))
        .file(
            &format!("{dir}/thread_siblings_list"),
            &format!("{siblings}\n"),
        )
    }

    /// 8 logical CPUs on 4 cores, siblings (0,4) (1,5) (2,6) (3,7), like x86.
    fn smt_far(&self) -> &Tree {
        self.file("sys/devices/system/cpu/online", "0-7\n");
        for cpu in 0..8 {
            let core = cpu % 4;
            self.cpu(cpu, 0, core, &format!("{core},{}", core + 4));
        }
        self
    }

    /// 8 logical CPUs on 4 cores, siblings (0,1) (2,3) (4,5) (6,7).
    fn smt_adjacent(&self) -> &Tree {
        self.file("sys/devices/system/cpu/online", "0-7\n");
        for cpu in 0..8 {
            let first = cpu & !1;
            self.cpu(cpu, 0, cpu / 2, &format!("{first}-{}", first + 1));
        }
        self
    }

    /// A pure cgroup v2 system; we are in `/user.slice/job`.
    fn cgroup_v2(&self, parent_max: Option<&str>, leaf_max: Option<&str>) -> &Tree {
        self.file("proc/self/cgroup", "0::/user.slice/job\n")
            .file(
                "proc/self/mountinfo",
                "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                 30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
            )
            .dir("sys/fs/cgroup/user.slice/job");
        if let Some(max) = parent_max {
            self.file("sys/fs/cgroup/user.slice/cpu.max", max);
        }
        if let Some(max) = leaf_max {
            self.file("sys/fs/cgroup/user.slice/job/cpu.max", max);
        }
        self
    }

    /// A cgroup v1 system with `cpu,cpuacct` co-mounted; we are in `/batch`.
    fn cgroup_v1(&self, quota: &str, period: &str) -> &Tree {
        self.file("proc/self/cgroup", "5:memory:/batch\n4:cpu,cpuacct:/batch\n3:cpuset:/\n")
            .file(
                "proc/self/mountinfo",
                "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:7 - cgroup cgroup rw,cpu,cpuacct\n\
                 35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n",
            )
            .file("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
            .file("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
            .file("sys/fs/cgroup/cpu,cpuacct/batch/cpu.cfs_quota_us", quota)
            .file("sys/fs/cgroup/cpu,cpuacct/batch/cpu.cfs_period_us", period)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn kinds(probe: &CpuProbe, kind: LimitKind) -> Vec<LimitValue> {
    probe
        .report()
        .limits
        .into_iter()
        .filter(|l| l.kind == kind)
        .map(|l| l.value)
        .collect()
}

// ---------------------------------------------------------------- cgroup v2

#[test]
fn v2_quota_rounds_up() {
    let t = Tree::new("v2");
    t.cpus("0-7", 8).cgroup_v2(None, Some("250000 100000\n"));
    let report = t.probe().report();
    assert_eq!(report.logical, 3);
    assert_eq!(report.physical, 3);
    let applied = report.applied().expect("a limit applied");
    assert_eq!(applied.kind, LimitKind::CgroupV2);
    assert_eq!(
        applied.source,
        t.path("sys/fs/cgroup/user.slice/job/cpu.max")
    );
    assert_eq!(applied.raw.as_deref(), Some("250000 100000"));
    assert_eq!(
        report.physical_limited_by().map(|l| l.kind),
        Some(LimitKind::CgroupV2)
    );
}

#[test]
fn v2_max_is_unlimited() {
    let t = Tree::new("v2-max");
    t.cpus("0-7", 8)
        .cgroup_v2(Some("max 100000\n"), Some("max\n"));
    let probe = t.probe();
    assert_eq!(probe.cpu_count(), 8);
    assert_eq!(
        kinds(&probe, LimitKind::CgroupV2),
        vec![LimitValue::Unlimited, LimitValue::Unlimited]
    );
    assert_eq!(
        probe.report().applied().map(|l| l.kind),
        Some(LimitKind::Online)
    );
}

#[test]
fn v2_empty_cpu_max_does_not_crash() {
    // Python loky issue #478: an empty cpu.max crashed cpu_count().
    let t = Tree::new("v2-empty");
    t.cpus("0-7", 8).cgroup_v2(None, Some(""));
    let probe = t.probe();
    assert_eq!(probe.cpu_count(), 8);
    assert!(matches!(
        kinds(&probe, LimitKind::CgroupV2)[..],
        [LimitValue::Unavailable(_)]
    ));
}

#[test]
fn v2_nested_parent_quota_is_smaller() {
    let t = Tree::new("v2-nested");
    t.cpus("0-7", 8)
        .cgroup_v2(Some("100000 100000\n"), Some("400000 100000\n"));
    let report = t.probe().report();
    assert_eq!(report.logical, 1);
    assert_eq!(report.physical, 1);
    let cgroups: Vec<_> = report
        .limits
        .iter()
        .filter(|l| l.kind == LimitKind::CgroupV2)
        .collect();
    assert_eq!(cgroups.len(), 2);
    // Outermost first; the parent's quota is the one that applies.
    assert_eq!(
        cgroups[0].source,
        t.path("sys/fs/cgroup/user.slice/cpu.max")
    );
    assert_eq!(cgroups[0].value, LimitValue::Cpus(1));
    assert!(cgroups[0].applied);
    assert_eq!(cgroups[1].value, LimitValue::Cpus(4));
    assert!(!cgroups[1].applied);
}

#[test]
fn v2_root_cgroup_has_no_quota() {
    let t = Tree::new("v2-root");
    t.cpus("0-3", 4)
        .file("proc/self/cgroup", "0::/\n")
        .file(
            "proc/self/mountinfo",
            "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        )
        .dir("sys/fs/cgroup");
    assert_eq!(t.probe().cpu_count(), 4);
    assert!(kinds(&t.probe(), LimitKind::CgroupV2).is_empty());
}

#[test]
fn v2_cgroup_outside_the_mount_reads_the_mount_point() {
    // A cgroup-namespace view where our path is not below the mount root.
    let t = Tree::new("v2-ns");
    t.cpus("0-7", 8)
        .file("proc/self/cgroup", "0::/../sibling\n")
        .file(
            "proc/self/mountinfo",
            "30 23 0:26 /ns /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        )
        .file("sys/fs/cgroup/cpu.max", "200000 100000\n");
    assert_eq!(t.probe().cpu_count(), 2);
}

// ---------------------------------------------------------------- cgroup v1

#[test]
fn v1_quota_rounds_up() {
    let t = Tree::new("v1");
    t.cpus("0-7", 8).cgroup_v1("150000\n", "100000\n");
    let report = t.probe().report();
    assert_eq!(report.logical, 2);
    let applied = report.applied().expect("a limit applied");
    assert_eq!(applied.kind, LimitKind::CgroupV1);
    assert_eq!(
        applied.source,
        t.path("sys/fs/cgroup/cpu,cpuacct/batch/cpu.cfs_quota_us")
    );
    assert_eq!(applied.raw.as_deref(), Some("150000 / 100000"));
    // The root level has no quota (-1).
    assert_eq!(
        kinds(&t.probe(), LimitKind::CgroupV1),
        vec![LimitValue::Unlimited, LimitValue::Cpus(2)]
    );
}

#[test]
fn v1_no_quota() {
    let t = Tree::new("v1-none");
    t.cpus("0-7", 8).cgroup_v1("-1\n", "100000\n");
    assert_eq!(t.probe().cpu_count(), 8);
}

#[test]
fn v1_container_mount_root() {
    // An old Docker container: the mount shows only our cgroup, /docker/abc.
    let t = Tree::new("v1-docker");
    t.cpus("0-7", 8)
        .file("proc/self/cgroup", "4:cpu,cpuacct:/docker/abc\n")
        .file(
            "proc/self/mountinfo",
            "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct\n",
        )
        .file("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "300000\n")
        .file("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    let report = t.probe().report();
    assert_eq!(report.logical, 3);
    assert_eq!(
        report.applied().map(|l| l.source.clone()),
        Some(t.path("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us"))
    );
}

#[test]
fn hybrid_v1_cpu_with_unified_hierarchy() {
    // systemd "hybrid": the cpu controller lives in v1; the unified
    // hierarchy is mounted but has no cpu.max.
    let t = Tree::new("hybrid");
    t.cpus("0-7", 8)
        .file("proc/self/cgroup", "4:cpu,cpuacct:/batch\n0::/batch\n")
        .file(
            "proc/self/mountinfo",
            "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
             41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
        )
        .dir("sys/fs/cgroup/unified/batch")
        .file(
            "sys/fs/cgroup/cpu,cpuacct/batch/cpu.cfs_quota_us",
            "500000\n",
        )
        .file(
            "sys/fs/cgroup/cpu,cpuacct/batch/cpu.cfs_period_us",
            "100000\n",
        );
    let probe = t.probe();
    assert_eq!(probe.cpu_count(), 5);
    assert!(kinds(&probe, LimitKind::CgroupV2).is_empty());
}

// ---------------------------------------------------------------- sysfs

#[test]
fn offline_cpus() {
    let t = Tree::new("offline");
    t.cpus("0-3,6\n", 8);
    let report = t.probe().affinity(0..8).report();
    assert_eq!(report.logical, 5);
    assert_eq!(report.usable_cpus, vec![0, 1, 2, 3, 6]);
    assert_eq!(report.physical, 5);
    assert_eq!(report.applied().map(|l| l.kind), Some(LimitKind::Online));
    assert_eq!(t.probe().topology().cpus(), vec![0, 1, 2, 3, 6]);
    // Offline CPUs are never planned.
    assert_eq!(
        t.probe().affinity(0..8).pinning_plan(6, true),
        vec![0, 1, 2, 3, 6, 0]
    );
}

#[test]
fn smt_8_logical_4_physical() {
    let t = Tree::new("smt");
    t.smt_far();
    let probe = t.probe();
    assert_eq!(probe.cpu_count(), 8);
    assert_eq!(probe.cpu_count_physical(), 4);
    let topo = probe.topology();
    assert_eq!(topo.packages.len(), 1);
    let cores: Vec<Vec<usize>> = topo.cores().map(|c| c.cpus.clone()).collect();
    assert_eq!(cores, vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]);
    assert_eq!(probe.pinning_plan(4, true), vec![0, 1, 2, 3]);
    assert_eq!(probe.pinning_plan(8, true), vec![0, 1, 2, 3, 4, 5, 6, 7]);
}

#[test]
fn smt_adjacent_siblings_plan_spreads_over_cores() {
    let t = Tree::new("smt-adj");
    t.smt_adjacent();
    let probe = t.probe();
    assert_eq!(probe.cpu_count_physical(), 4);
    assert_eq!(probe.pinning_plan(4, true), vec![0, 2, 4, 6]);
    assert_eq!(probe.pinning_plan(8, true), vec![0, 2, 4, 6, 1, 3, 5, 7]);
    assert_eq!(probe.pinning_plan(4, false), vec![0, 1, 2, 3]);
    assert_eq!(
        probe.pinning_plan(10, true),
        vec![0, 2, 4, 6, 1, 3, 5, 7, 0, 2]
    );
}

#[test]
fn core_cpus_list_is_preferred_and_packages_are_separate() {
    let t = Tree::new("packages");
    t.file("sys/devices/system/cpu/online", "0-3\n");
    for cpu in 0..4 {
        let dir = format!("sys/devices/system/cpu/cpu{cpu}/topology");
        // Two packages, each one core with two threads; core_id repeats.
        t.file(
            &format!("{dir}/physical_package_id"),
            &(cpu / 2).to_string(),
        )
        .file(&format!("{dir}/core_id"), "0")
        .file(
            &format!("{dir}/core_cpus_list"),
            &format!("{}-{}", cpu & !1, (cpu & !1) + 1),
        )
        .file(&format!("{dir}/thread_siblings_list"), "garbage");
    }
    let topo = t.probe().topology();
    assert_eq!(topo.packages.len(), 2);
    assert_eq!(topo.packages[1].id, 1);
    assert_eq!(topo.packages[1].cores[0].cpus, vec![2, 3]);
    assert_eq!(t.probe().cpu_count_physical(), 2);
}

#[test]
fn affinity_restricts_physical_cores() {
    let t = Tree::new("smt-mask");
    t.smt_far();
    let report = t.probe().affinity([0, 4]).report();
    assert_eq!((report.logical, report.physical), (2, 1));
    assert_eq!(report.applied().map(|l| l.kind), Some(LimitKind::Affinity));
    let report = t.probe().affinity([0, 1, 4]).report();
    assert_eq!((report.logical, report.physical), (3, 2));
    assert_eq!(t.probe().affinity([4, 1, 0]).affinity_cpus(), vec![0, 1, 4]);
    assert_eq!(
        t.probe().affinity([0, 1, 4]).pinning_plan(3, true),
        vec![0, 1, 4]
    );
}

#[test]
fn affinity_from_proc_status() {
    let t = Tree::new("status");
    t.cpus("0-7", 8).file(
        "proc/self/status",
        "Name:\ttest\nCpus_allowed:\t03\nCpus_allowed_list:\t0-1\nMems_allowed_list:\t0\n",
    );
    let report = t.probe().report();
    assert_eq!(report.logical, 2);
    assert_eq!(report.applied().map(|l| l.kind), Some(LimitKind::Affinity));
}

#[test]
fn an_affinity_mask_naming_offline_cpus_counts_only_the_online_ones() {
    // Online 0-3 and 6-7; the mask allows 2-7: of its six CPUs, 2, 3, 6
    // and 7 are online.
    let t = Tree::new("mask-offline");
    t.cpus("0-3,6-7\n", 8);
    let report = t.probe().affinity(2..8).report();
    assert_eq!(report.usable_cpus, vec![2, 3, 6, 7]);
    assert_eq!(report.logical, 4);
    assert_eq!(report.applied().map(|l| l.kind), Some(LimitKind::Affinity));
}

#[test]
fn an_affinity_mask_disjoint_from_the_online_list_is_not_read_as_one_cpu() {
    // A virtualised sysfs can show CPUs the mask does not name at all.
    let t = Tree::new("mask-disjoint");
    t.cpus("0-3\n", 4);
    let report = t.probe().affinity(8..16).report();
    assert_eq!(report.logical, 4, "the online count still caps it");
    assert_eq!(report.usable_cpus, (8..16).collect::<Vec<_>>());
}

#[test]
fn quota_caps_physical_count() {
    let t = Tree::new("smt-quota");
    t.smt_far().cgroup_v2(None, Some("300000 100000"));
    let report = t.probe().report();
    assert_eq!((report.logical, report.physical), (3, 3));
    assert_eq!(report.physical_cores, Some(4));
    let t = Tree::new("smt-quota-big");
    t.smt_far().cgroup_v2(None, Some("600000 100000"));
    let report = t.probe().report();
    assert_eq!((report.logical, report.physical), (6, 4));
    assert_eq!(report.physical_limited_by(), None);
}

// ---------------------------------------------------------------- env

#[test]
fn env_valid() {
    let t = Tree::new("env");
    t.smt_far();
    let report = t.probe().max_cpu_count_env(Some("3")).report();
    assert_eq!((report.logical, report.physical), (3, 3));
    assert_eq!(report.applied().map(|l| l.kind), Some(LimitKind::Env));
    let report = t.probe().max_cpu_count_env(Some(" 2\n")).report();
    assert_eq!((report.logical, report.physical), (2, 2));
    // A cap above the machine changes nothing.
    let report = t.probe().max_cpu_count_env(Some("64")).report();
    assert_eq!((report.logical, report.physical), (8, 4));
    assert_eq!(report.applied().map(|l| l.kind), Some(LimitKind::Online));
}

#[test]
fn env_invalid_or_zero_is_ignored() {
    let t = Tree::new("env-bad");
    t.cpus("0-3", 4);
    for bad in ["three", "0", "-2", "", "1.5"] {
        let probe = t.probe().max_cpu_count_env(Some(bad));
        assert_eq!(probe.cpu_count(), 4, "{bad:?}");
        assert!(
            matches!(
                kinds(&probe, LimitKind::Env)[..],
                [LimitValue::Unavailable(_)]
            ),
            "{bad:?}"
        );
    }
    assert_eq!(
        kinds(&t.probe(), LimitKind::Env),
        vec![LimitValue::Unlimited]
    );
}

// ---------------------------------------------------------------- broken trees

#[test]
fn malformed_files_fall_back() {
    let t = Tree::new("malformed");
    t.file("sys/devices/system/cpu/online", "zero to three\n")
        .file("sys/devices/system/cpu/cpu0/topology/core_id", "x")
        .file(
            "sys/devices/system/cpu/cpu0/topology/physical_package_id",
            "\u{0}\u{1}",
        )
        .file(
            "sys/devices/system/cpu/cpu0/topology/thread_siblings_list",
            "0-",
        )
        .file("sys/devices/system/cpu/cpu1/topology/core_id", "")
        .cgroup_v2(Some("lots of cpu\n"), Some("0 100000\n"))
        .file("proc/self/status", "Cpus_allowed_list:\tnope\n");
    let probe = t.probe();
    let report = probe.report();
    // Nothing usable: the count falls back to 1.
    assert_eq!((report.logical, report.physical), (1, 1));
    assert_eq!(report.applied(), None);
    assert!(report.limits.iter().all(|l| l.value.cpus().is_none()));
    // The topology comes from the cpuN directories; CPUs without readable
    // ids are cores of their own.
    assert_eq!(probe.topology().cores().count(), 2);
    // With an injected mask the count recovers.
    assert_eq!(t.probe().affinity([0, 1]).cpu_count(), 2);
    assert_eq!(t.probe().affinity([0, 1]).cpu_count_physical(), 2);
}

#[test]
fn malformed_cgroup_tables_are_skipped() {
    let t = Tree::new("bad-tables");
    t.cpus("0-3", 4)
        .file("proc/self/cgroup", "garbage\n:::\n0::\n")
        .file("proc/self/mountinfo", "garbage\n1 2 3\n- - -\n");
    assert_eq!(t.probe().cpu_count(), 4);
    let t = Tree::new("bad-cfs");
    t.cpus("0-3", 4).cgroup_v1("lots\n", "100000\n");
    assert_eq!(t.probe().cpu_count(), 4);
    let t = Tree::new("bad-period");
    t.cpus("0-3", 4).cgroup_v1("200000\n", "0\n");
    assert_eq!(t.probe().cpu_count(), 4);
}

#[test]
fn missing_files() {
    let t = Tree::new("empty");
    let probe = t.probe();
    let report = probe.report();
    assert_eq!((report.logical, report.physical), (1, 1));
    assert_eq!(report.physical_cores, None);
    assert!(probe.topology().packages.is_empty());
    assert!(probe.pinning_plan(4, true).is_empty());
    assert!(probe.affinity_cpus().is_empty());
    // Display works on an empty report too.
    assert!(report.to_string().contains("defaulting to 1"));

    // sysfs only, no procfs, no cgroup mounts, no topology directories.
    let t = Tree::new("sysfs-only");
    t.file("sys/devices/system/cpu/online", "0-5");
    let report = t.probe().report();
    assert_eq!((report.logical, report.physical), (6, 6));
    assert_eq!(t.probe().pinning_plan(2, true), vec![0, 1]);

    // A cgroup table pointing at a mount that is not there.
    let t = Tree::new("no-mount");
    t.cpus("0-3", 4).file("proc/self/cgroup", "0::/a\n").file(
        "proc/self/mountinfo",
        "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
    );
    assert_eq!(t.probe().cpu_count(), 4);

    // A v1 quota without its period.
    let t = Tree::new("no-period");
    t.cpus("0-3", 4)
        .file("proc/self/cgroup", "4:cpu:/\n")
        .file(
            "proc/self/mountinfo",
            "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n",
        )
        .file("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "100000\n");
    assert_eq!(t.probe().cpu_count(), 4);
    assert!(matches!(
        kinds(&t.probe(), LimitKind::CgroupV1)[..],
        [LimitValue::Unavailable(_)]
    ));
}

// ---------------------------------------------------------------- explanation

#[test]
fn report_display_names_every_source() {
    let t = Tree::new("display");
    t.smt_far()
        .cgroup_v2(Some("max 100000"), Some("200000 100000"));
    let text = t
        .probe()
        .max_cpu_count_env(Some("nope"))
        .report()
        .to_string();
    assert!(
        text.contains("logical CPUs:   2 (set by cgroup v2"),
        "{text}"
    );
    assert!(text.contains("physical cores: 2"), "{text}");
    assert!(
        text.contains(&t.path("sys/devices/system/cpu/online")),
        "{text}"
    );
    assert!(
        text.contains(&t.path("sys/fs/cgroup/user.slice/job/cpu.max")),
        "{text}"
    );
    assert!(text.contains("unlimited"), "{text}");
    assert!(text.contains("LOKY_MAX_CPU_COUNT"), "{text}");
    assert!(text.contains("not a positive integer"), "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.trim_start().starts_with('*'))
            .count(),
        1,
        "{text}"
    );
}

// ---------------------------------------------------------------- the real machine

fn real_online_count() -> Option<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    let mut n = 0;
    for part in text.trim().split(',') {
        n += match part.split_once('-') {
            Some((lo, hi)) => hi.parse::<usize>().ok()? - lo.parse::<usize>().ok()? + 1,
            None => 1,
        };
    }
    Some(n)
}

#[test]
fn real_machine() {
    let logical = loky::cpu_count();
    let physical = loky::cpu_count_physical();
    assert!(logical >= 1);
    assert!((1..=logical).contains(&physical));
    if let Some(online) = real_online_count() {
        assert!(logical <= online, "{logical} > {online} online");
    }
    let report = loky::cpu_count_report();
    assert_eq!(report.logical, logical, "{report}");
    assert_eq!(report.physical, physical, "{report}");
    let mask = loky::topology::affinity_cpus();
    assert!(!mask.is_empty());
    assert!(logical <= mask.len());
    let topo = loky::topology::topology();
    assert!(topo.cores().count() >= 1);
    let plan = loky::topology::pinning_plan(logical + 1, true);
    assert_eq!(plan.len(), logical + 1);
    assert!(plan.iter().all(|cpu| mask.contains(cpu)));
    assert!(!report.to_string().is_empty());
}

const CHILD: &str = "LOKY_CPU_COUNT_TEST_CHILD";

#[test]
fn real_env_var_is_honoured() {
    // Re-run this test binary with the variable set, rather than mutating
    // this process's environment under other threads.
    let exe = std::env::current_exe().expect("current exe");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "real_env_var_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env(loky::topology::MAX_CPU_COUNT_ENV, "1")
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "child did not run: {stdout}");
}

#[test]
fn real_env_var_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    assert_eq!(loky::cpu_count(), 1);
    assert_eq!(loky::cpu_count_physical(), 1);
    assert_eq!(
        loky::cpu_count_report().applied().map(|l| l.kind),
        Some(LimitKind::Env)
    );
}
