//! CPU bandwidth quotas and memory limits of the process's own cgroup (v1
//! and v2).
//!
//! The cgroup is found the way the kernel describes it, not by guessing
//! paths: `/proc/self/cgroup` names our cgroup within each hierarchy, and
//! `/proc/self/mountinfo` says where that hierarchy is mounted and which
//! part of it the mount shows (its root, e.g. `/docker/<id>` inside an old
//! container). From our cgroup we walk up to the mount point and read the
//! quota (or the memory limit) at every level, because a parent's limit
//! bounds its children too.

use std::path::{Path, PathBuf};

use super::explain::{CpuLimit, LimitKind, LimitValue};
use super::read::{read_or_log, read_text};

/// Period the kernel uses when `cpu.max` gives only a quota.
const DEFAULT_PERIOD_US: u64 = 100_000;

/// Reads every cgroup CPU quota that applies to this process, v2 first,
/// each hierarchy from its outermost level to our own cgroup.
pub(crate) fn limits(root: &Path, procfs: &Path) -> Vec<CpuLimit> {
    let Some((membership, mounts)) = read_membership(procfs) else {
        return Vec::new();
    };
    let mut limits = Vec::new();
    if let Some(path) = &membership.v2 {
        let mount = mounts.iter().filter(|m| m.fstype == "cgroup2");
        for dir in hierarchy(root, mount, path) {
            limits.extend(read_v2(&dir));
        }
    }
    if let Some(path) = &membership.v1_cpu {
        let mount = mounts
            .iter()
            .filter(|m| m.fstype == "cgroup" && has_item(&m.super_options, "cpu"));
        for dir in hierarchy(root, mount, path) {
            limits.extend(read_v1(&dir));
        }
    }
    limits
}

/// A cgroup memory limit and the file it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemoryLimit {
    /// The limit in bytes.
    pub(crate) bytes: u64,
    /// The file that set it (`memory.max` or `memory.limit_in_bytes`).
    pub(crate) source: PathBuf,
}

/// The smallest memory limit on this process's cgroup and its ancestors,
/// over both hierarchies (v2 `memory.max`, v1 `memory.limit_in_bytes`);
/// `None` if no level has one. Unreadable or malformed files are skipped
/// with a warning, as for the CPU quotas.
pub(crate) fn memory_limit(root: &Path, procfs: &Path) -> Option<MemoryLimit> {
    let (membership, mounts) = read_membership(procfs)?;
    let mut limits = Vec::new();
    if let Some(path) = &membership.v2 {
        let mount = mounts.iter().filter(|m| m.fstype == "cgroup2");
        for dir in hierarchy(root, mount, path) {
            limits.extend(read_memory(dir.join("memory.max"), parse_memory_max));
        }
    }
    if let Some(path) = &membership.v1_memory {
        let mount = mounts
            .iter()
            .filter(|m| m.fstype == "cgroup" && has_item(&m.super_options, "memory"));
        for dir in hierarchy(root, mount, path) {
            limits.extend(read_memory(
                dir.join("memory.limit_in_bytes"),
                parse_limit_in_bytes,
            ));
        }
    }
    limits.into_iter().min_by_key(|limit| limit.bytes)
}

/// The limit in the file at `path`, if it exists and sets one.
fn read_memory(
    path: PathBuf,
    parse: fn(&str) -> Result<Option<u64>, String>,
) -> Option<MemoryLimit> {
    let text = match read_text(&path) {
        Ok(Some(text)) => text,
        // The root cgroup, or a cgroup without the memory controller.
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the cgroup memory limit; ignored");
            return None;
        }
    };
    match parse(&text) {
        Ok(limit) => limit.map(|bytes| MemoryLimit {
            bytes,
            source: path,
        }),
        Err(why) => {
            tracing::warn!(path = %path.display(), content = %text.trim(), "malformed memory limit ({why}); ignored");
            None
        }
    }
}

/// Our cgroups and the mount table, from `procfs`; `None` (logged) if
/// either file cannot be read.
fn read_membership(procfs: &Path) -> Option<(Membership, Vec<Mount>)> {
    let cgroups = read_or_log(&procfs.join("self/cgroup"), "cgroup membership")?;
    let mountinfo = read_or_log(&procfs.join("self/mountinfo"), "mount table")?;
    Some((Membership::parse(&cgroups), parse_mountinfo(&mountinfo)))
}

/// Our cgroup in each hierarchy, from `/proc/self/cgroup`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Membership {
    /// Path in the unified (v2) hierarchy: the `0::<path>` line.
    v2: Option<String>,
    /// Path in the v1 hierarchy that has the `cpu` controller.
    v1_cpu: Option<String>,
    /// Path in the v1 hierarchy that has the `memory` controller.
    v1_memory: Option<String>,
}

impl Membership {
    fn parse(text: &str) -> Membership {
        let mut membership = Membership::default();
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            // hierarchy-id:controller-list:path (the path may contain ':')
            let mut fields = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                tracing::debug!(line, "unrecognised line in /proc/self/cgroup; skipped");
                continue;
            };
            if id == "0" && controllers.is_empty() {
                membership.v2 = Some(path.to_owned());
                continue;
            }
            // One v1 hierarchy may carry both controllers (co-mounted).
            if has_item(controllers, "cpu") {
                membership.v1_cpu = Some(path.to_owned());
            }
            if has_item(controllers, "memory") {
                membership.v1_memory = Some(path.to_owned());
            }
        }
        membership
    }
}

fn has_item(list: &str, item: &str) -> bool {
    list.split(',').any(|x| x == item)
}

/// The fields of a `/proc/self/mountinfo` line that we need.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    /// The part of the filesystem the mount shows (field 4).
    root: String,
    /// Where it is mounted (field 5).
    mount_point: String,
    fstype: String,
    super_options: String,
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point options [optional...] - fstype source super-options
            // The source may be empty (`mount -t tmpfs "" /x`), which
            // leaves two fields after the fstype's instead of three: the
            // super options are the last field either way.
            let fields: Vec<&str> = line.split_whitespace().collect();
            let sep = fields.iter().position(|&f| f == "-")?;
            if sep < 6 || fields.len() < sep + 3 {
                tracing::debug!(line, "unrecognised line in mountinfo; skipped");
                return None;
            }
            Some(Mount {
                root: unescape(fields[3]),
                mount_point: unescape(fields[4]),
                fstype: fields[sep + 1].to_owned(),
                super_options: fields[fields.len() - 1].to_owned(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directories of our cgroup and its ancestors, outermost first, as
/// seen through the best-matching mount of the hierarchy.
fn hierarchy<'a>(
    root: &Path,
    mounts: impl Iterator<Item = &'a Mount>,
    cgroup: &str,
) -> Vec<PathBuf> {
    let path = components(cgroup);
    // The mount whose root is the longest prefix of our path shows our cgroup.
    let mut best: Option<(&Mount, usize)> = None;
    let mut fallback = None;
    for mount in mounts {
        fallback.get_or_insert(mount);
        let mount_root = components(&mount.root);
        if path.starts_with(&mount_root) && best.map_or(true, |(_, len)| mount_root.len() > len) {
            best = Some((mount, mount_root.len()));
        }
    }
    let (mount, relative) = match best {
        Some((mount, len)) if path[len..].iter().all(|c| *c != ".." && *c != ".") => {
            (mount, &path[len..])
        }
        _ => {
            let Some(mount) = fallback else {
                tracing::debug!(cgroup, "no mount for this cgroup hierarchy");
                return Vec::new();
            };
            // Our cgroup is outside what the mount shows (e.g. a cgroup
            // namespace view): the mount point is the closest we can see.
            tracing::debug!(cgroup, mount_root = %mount.root, "cgroup is not below the mount root; reading the mount point only");
            (mount, &[][..])
        }
    };
    let mount_point = root.join(mount.mount_point.trim_start_matches('/'));
    if !mount_point.is_dir() {
        tracing::debug!(path = %mount_point.display(), "cgroup mount point not found");
        return Vec::new();
    }
    (0..=relative.len())
        .map(|depth| {
            relative[..depth]
                .iter()
                .fold(mount_point.clone(), |dir, c| dir.join(c))
        })
        .collect()
}

fn components(path: &str) -> Vec<&str> {
    path.split('/').filter(|c| !c.is_empty()).collect()
}

/// The cgroup v2 quota of one level, if it has a `cpu.max`.
fn read_v2(dir: &Path) -> Option<CpuLimit> {
    let path = dir.join("cpu.max");
    let source = path.display().to_string();
    let text = match read_text(&path) {
        Ok(Some(text)) => text,
        // The root cgroup, or a cgroup without the cpu controller.
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(path = %source, error = %e, "cannot read cpu.max; ignored");
            return Some(CpuLimit::new(
                LimitKind::CgroupV2,
                source,
                None,
                LimitValue::Unavailable(e.to_string()),
            ));
        }
    };
    let value = match parse_cpu_max(&text) {
        Ok(Some(cpus)) => LimitValue::Cpus(cpus),
        Ok(None) => LimitValue::Unlimited,
        Err(why) => {
            tracing::warn!(path = %source, content = %text.trim(), "malformed cpu.max ({why}); ignored");
            LimitValue::Unavailable(why)
        }
    };
    Some(CpuLimit::new(
        LimitKind::CgroupV2,
        source,
        Some(&text),
        value,
    ))
}

/// The cgroup v1 quota of one level, if it has `cpu.cfs_quota_us`.
fn read_v1(dir: &Path) -> Option<CpuLimit> {
    let quota_path = dir.join("cpu.cfs_quota_us");
    let period_path = dir.join("cpu.cfs_period_us");
    let source = quota_path.display().to_string();
    let read = |path: &Path| match read_text(path) {
        Ok(Some(text)) => Ok(Some(text)),
        Ok(None) => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    };
    let (quota, period) = match (read(&quota_path), read(&period_path)) {
        (Ok(None), _) => return None,
        (Ok(Some(quota)), Ok(Some(period))) => (quota, period),
        (Ok(Some(quota)), Ok(None)) => {
            let why = format!("{} not found", period_path.display());
            tracing::warn!(path = %source, "{why}; quota ignored");
            return Some(CpuLimit::new(
                LimitKind::CgroupV1,
                source,
                Some(&quota),
                LimitValue::Unavailable(why),
            ));
        }
        (Err(why), _) | (_, Err(why)) => {
            tracing::warn!(path = %source, "{why}; quota ignored");
            return Some(CpuLimit::new(
                LimitKind::CgroupV1,
                source,
                None,
                LimitValue::Unavailable(why),
            ));
        }
    };
    let raw = format!("{} / {}", quota.trim(), period.trim());
    let value = match parse_cfs(&quota, &period) {
        Ok(Some(cpus)) => LimitValue::Cpus(cpus),
        Ok(None) => LimitValue::Unlimited,
        Err(why) => {
            tracing::warn!(path = %source, content = %raw, "malformed CFS quota ({why}); ignored");
            LimitValue::Unavailable(why)
        }
    };
    Some(CpuLimit::new(
        LimitKind::CgroupV1,
        source,
        Some(&raw),
        value,
    ))
}

/// Parses cgroup v2 `cpu.max` (`"<quota> <period>"`, `"max <period>"`):
/// `Ok(None)` is no quota. An empty file is an error, not a panic
/// (Python loky issue #478 crashed on one).
fn parse_cpu_max(text: &str) -> Result<Option<usize>, String> {
    let mut tokens = text.split_whitespace();
    let quota = match tokens.next() {
        None => return Err("empty file".to_owned()),
        Some("max") => None,
        Some(quota) => Some(positive(quota, "quota")?),
    };
    let period = match tokens.next() {
        None => DEFAULT_PERIOD_US,
        Some(period) => positive(period, "period")?,
    };
    if tokens.next().is_some() {
        return Err("expected \"<quota> <period>\"".to_owned());
    }
    Ok(quota.map(|quota| cpus_for(quota, period)))
}

/// Parses cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`: `Ok(None)`
/// is no quota (`-1`).
fn parse_cfs(quota: &str, period: &str) -> Result<Option<usize>, String> {
    let quota: i64 = quota
        .trim()
        .parse()
        .map_err(|_| format!("quota {:?} is not an integer", quota.trim()))?;
    let period = positive(period.trim(), "period")?;
    match u64::try_from(quota) {
        Err(_) => Ok(None), // -1: no quota
        Ok(0) => Err("quota is 0".to_owned()),
        Ok(quota) => Ok(Some(cpus_for(quota, period))),
    }
}

fn positive(text: &str, what: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{what} {text:?} is not a positive integer")),
    }
}

/// Parses cgroup v2 `memory.max` (bytes, or `max` for none).
fn parse_memory_max(text: &str) -> Result<Option<u64>, String> {
    match text.trim() {
        "max" => Ok(None),
        bytes => bytes
            .parse()
            .map(Some)
            .map_err(|_| format!("{bytes:?} is neither a byte count nor \"max\"")),
    }
}

/// Values of `memory.limit_in_bytes` at or above this mean "no limit": the
/// kernel shows an unset limit as the largest page-aligned `i64`
/// (9223372036854771712 with 4 KiB pages, a little less with larger
/// pages), and no machine has 4 EiB of memory.
const V1_UNLIMITED_FROM: u64 = 1 << 62;

/// Parses cgroup v1 `memory.limit_in_bytes`: `Ok(None)` is no limit.
fn parse_limit_in_bytes(text: &str) -> Result<Option<u64>, String> {
    let text = text.trim();
    if text == "-1" {
        return Ok(None);
    }
    let bytes: u64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count"))?;
    Ok((bytes < V1_UNLIMITED_FROM).then_some(bytes))
}

/// CPUs needed to use a quota fully: quota / period, rounded up, at least 1.
fn cpus_for(quota: u64, period: u64) -> usize {
    let cpus = quota / period + u64::from(quota % period != 0);
    usize::try_from(cpus).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max() {
        assert_eq!(parse_cpu_max("max 100000\n"), Ok(None));
        assert_eq!(parse_cpu_max("max"), Ok(None));
        assert_eq!(parse_cpu_max("200000 100000"), Ok(Some(2)));
        assert_eq!(parse_cpu_max("150000 100000"), Ok(Some(2)));
        assert_eq!(parse_cpu_max("50000 100000"), Ok(Some(1)));
        assert_eq!(parse_cpu_max("1 100000"), Ok(Some(1)));
        assert_eq!(parse_cpu_max("300000"), Ok(Some(3)));
        assert_eq!(
            parse_cpu_max(&format!("{} 1", u64::MAX)),
            Ok(Some(usize::try_from(u64::MAX).unwrap_or(usize::MAX)))
        );
        for bad in [
            "",
            "\n",
            "abc 100000",
            "100000 0",
            "0 100000",
            "-1 100000",
            "1 2 3",
            "max abc",
        ] {
            assert!(parse_cpu_max(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn cfs() {
        assert_eq!(parse_cfs("-1\n", "100000\n"), Ok(None));
        assert_eq!(parse_cfs("150000", "100000"), Ok(Some(2)));
        assert_eq!(parse_cfs("400000", "100000"), Ok(Some(4)));
        for (q, p) in [
            ("", "100000"),
            ("abc", "100000"),
            ("0", "100000"),
            ("100", "0"),
            ("100", ""),
        ] {
            assert!(parse_cfs(q, p).is_err(), "{q:?}/{p:?} should be rejected");
        }
    }

    #[test]
    fn membership_hybrid_and_v2() {
        let hybrid = "9:name=systemd:/\n4:memory:/x\n2:cpu,cpuacct:/user.slice\n1:cpuset:/\n0::/user.slice/a\n";
        assert_eq!(
            Membership::parse(hybrid),
            Membership {
                v2: Some("/user.slice/a".into()),
                v1_cpu: Some("/user.slice".into()),
                v1_memory: Some("/x".into()),
            }
        );
        assert_eq!(
            Membership::parse("0::/a:b\n"),
            Membership {
                v2: Some("/a:b".into()),
                v1_cpu: None,
                v1_memory: None,
            }
        );
        // cpuacct and cpuset are not cpu.
        assert_eq!(
            Membership::parse("3:cpuacct:/a\n4:cpuset:/b\ngarbage\n"),
            Membership::default()
        );
    }

    #[test]
    fn mountinfo_lines() {
        let text = "\
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:7 master:1 - cgroup cgroup rw,cpu,cpuacct
50 27 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw
51 27 0:41 / /mnt/nameless rw - tmpfs  rw,size=64k
52 27 0:42 / /mnt/cut rw - tmpfs
garbage line
";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[3].mount_point, "/mnt/nameless");
        assert_eq!(mounts[3].super_options, "rw,size=64k");
        assert_eq!(mounts[0].fstype, "cgroup2");
        assert_eq!(mounts[1].root, "/docker/abc");
        assert_eq!(mounts[1].mount_point, "/sys/fs/cgroup/cpu,cpuacct");
        assert!(has_item(&mounts[1].super_options, "cpu"));
        assert_eq!(mounts[2].mount_point, "/mnt/with space");
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\040b\\011c\\134d"), "a b\tc\\d");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
        assert_eq!(unescape("\\999"), "\\999");
    }

    #[test]
    fn memory_files() {
        assert_eq!(parse_memory_max("max\n"), Ok(None));
        assert_eq!(parse_memory_max("1073741824\n"), Ok(Some(1 << 30)));
        assert_eq!(parse_memory_max("0"), Ok(Some(0)));
        assert_eq!(parse_limit_in_bytes("536870912\n"), Ok(Some(512 << 20)));
        // Unset, as 4 KiB and 64 KiB page kernels show it, or as written.
        assert_eq!(parse_limit_in_bytes("9223372036854771712\n"), Ok(None));
        assert_eq!(parse_limit_in_bytes("9223372036854710272"), Ok(None));
        assert_eq!(parse_limit_in_bytes("-1"), Ok(None));
        for bad in ["", "\n", "abc", "-1", "1G", "1 2"] {
            assert!(parse_memory_max(bad).is_err(), "{bad:?} should be rejected");
        }
        for bad in ["", "abc", "-2", "1G"] {
            assert!(
                parse_limit_in_bytes(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    /// A fake system root in a temporary directory, removed on drop.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Tree {
            let root = std::env::temp_dir()
                .join(format!("loky-cgroup-memory-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).expect("create temp tree");
            Tree(root)
        }

        fn file(&self, path: &str, contents: &str) -> &Tree {
            let path = self.0.join(path);
            std::fs::create_dir_all(path.parent().expect("file has a parent"))
                .expect("create dirs");
            std::fs::write(&path, contents).expect("write fixture file");
            self
        }

        fn memory_limit(&self) -> Option<(u64, String)> {
            memory_limit(&self.0, &self.0.join("proc")).map(|limit| {
                let source = limit.source.strip_prefix(&self.0).map(Path::to_path_buf);
                (
                    limit.bytes,
                    source.unwrap_or(limit.source).display().to_string(),
                )
            })
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const V2_MOUNT: &str =
        "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
    const V1_MOUNTS: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";

    #[test]
    fn v2_memory_limit_is_the_smallest_up_the_tree() {
        let t = Tree::new("v2");
        t.file("proc/self/cgroup", "0::/user.slice/job\n")
            .file("proc/self/mountinfo", V2_MOUNT)
            .file("sys/fs/cgroup/user.slice/memory.max", "2147483648\n")
            .file("sys/fs/cgroup/user.slice/job/memory.max", "max\n");
        assert_eq!(
            t.memory_limit(),
            Some((2 << 30, "sys/fs/cgroup/user.slice/memory.max".into()))
        );
        t.file("sys/fs/cgroup/user.slice/job/memory.max", "1073741824\n");
        assert_eq!(
            t.memory_limit(),
            Some((1 << 30, "sys/fs/cgroup/user.slice/job/memory.max".into()))
        );
        // A malformed level is skipped, not taken as 0 or as no limit at all.
        t.file("sys/fs/cgroup/user.slice/job/memory.max", "lots\n");
        assert_eq!(t.memory_limit().map(|l| l.0), Some(2 << 30));
        t.file("sys/fs/cgroup/user.slice/memory.max", "max\n");
        assert_eq!(t.memory_limit(), None);
    }

    #[test]
    fn v1_memory_limit_ignores_unlimited_and_spans_both_hierarchies() {
        let t = Tree::new("v1");
        t.file(
            "proc/self/cgroup",
            "5:memory:/batch/7\n4:cpu,cpuacct:/batch\n0::/batch\n",
        )
        .file("proc/self/mountinfo", V1_MOUNTS)
        .file(
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        )
        .file(
            "sys/fs/cgroup/memory/batch/memory.limit_in_bytes",
            "9223372036854771712\n",
        )
        .file(
            "sys/fs/cgroup/memory/batch/7/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        assert_eq!(t.memory_limit(), None, "all unlimited");
        t.file(
            "sys/fs/cgroup/memory/batch/memory.limit_in_bytes",
            "3221225472\n",
        );
        assert_eq!(
            t.memory_limit(),
            Some((
                3 << 30,
                "sys/fs/cgroup/memory/batch/memory.limit_in_bytes".into()
            ))
        );
        // A limit in the unified hierarchy too (systemd "hybrid"): the
        // smaller of the two wins.
        t.file("sys/fs/cgroup/unified/batch/memory.max", "1073741824\n");
        assert_eq!(
            t.memory_limit(),
            Some((1 << 30, "sys/fs/cgroup/unified/batch/memory.max".into()))
        );
        // The cpu hierarchy's files are not memory limits.
        t.file(
            "sys/fs/cgroup/cpu,cpuacct/batch/memory.limit_in_bytes",
            "4096\n",
        );
        assert_eq!(t.memory_limit().map(|l| l.0), Some(1 << 30));
    }

    #[test]
    fn no_memory_limit_without_cgroup_files() {
        let t = Tree::new("none");
        assert_eq!(t.memory_limit(), None, "no /proc at all");
        t.file("proc/self/cgroup", "0::/\n")
            .file("proc/self/mountinfo", V2_MOUNT)
            .file("sys/fs/cgroup/cgroup.procs", "");
        assert_eq!(t.memory_limit(), None, "the root cgroup has no memory.max");
    }

    #[test]
    fn rounds_up() {
        assert_eq!(cpus_for(1, 100_000), 1);
        assert_eq!(cpus_for(100_000, 100_000), 1);
        assert_eq!(cpus_for(100_001, 100_000), 2);
    }
}
