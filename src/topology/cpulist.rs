//! The kernel's CPU list format, as in `/sys/devices/system/cpu/online` or
//! `Cpus_allowed_list` in `/proc/self/status`: `0-3,6,8-9`.

/// CPU numbers at or above this are rejected as malformed, so that a corrupt
/// file such as `0-4294967295` cannot make us allocate gigabytes. Linux
/// supports at most 8192 CPUs (`CONFIG_NR_CPUS`) on every architecture today.
pub(crate) const MAX_CPUS: usize = 1 << 16;

/// Parses a CPU list into sorted, deduplicated CPU numbers.
///
/// An empty (or all-whitespace) list is valid and yields no CPUs.
pub(crate) fn parse(text: &str) -> Result<Vec<usize>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut ranges = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (number(lo, part)?, number(hi, part)?),
            None => {
                let n = number(part, part)?;
                (n, n)
            }
        };
        if lo > hi {
            return Err(format!("reversed range {part:?}"));
        }
        if hi >= MAX_CPUS {
            return Err(format!("CPU number in {part:?} is implausibly large"));
        }
        ranges.push((lo, hi));
    }
    // Merge before expanding: a list of many overlapping ranges must not
    // cost more than the CPUs it names.
    ranges.sort_unstable();
    let mut cpus = Vec::new();
    let mut next = 0; // first CPU number not yet emitted
    for (lo, hi) in ranges {
        let lo = lo.max(next);
        if lo <= hi {
            cpus.extend(lo..=hi);
            next = hi + 1;
        }
    }
    Ok(cpus)
}

fn number(text: &str, part: &str) -> Result<usize, String> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{part:?} is not a CPU number or range"));
    }
    text.parse()
        .map_err(|_| format!("CPU number in {part:?} is implausibly large"))
}

/// Formats sorted CPU numbers back into the kernel's list format.
pub(crate) fn format(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let lo = cpus[i];
        let mut hi = lo;
        while i + 1 < cpus.len() && cpus[i + 1] == hi + 1 {
            hi += 1;
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if lo == hi {
            out.push_str(&lo.to_string());
        } else {
            out.push_str(&format!("{lo}-{hi}"));
        }
        i += 1;
    }
    out
}

/// Elements of `a` that are also in `b`; both sorted.
pub(crate) fn intersect(a: &[usize], b: &[usize]) -> Vec<usize> {
    a.iter()
        .copied()
        .filter(|cpu| b.binary_search(cpu).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_and_singles() {
        assert_eq!(parse("0-3,6\n"), Ok(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse("0"), Ok(vec![0]));
        assert_eq!(parse(" 8-9, 2 "), Ok(vec![2, 8, 9]));
        assert_eq!(parse("0-3,2-5,1"), Ok(vec![0, 1, 2, 3, 4, 5]));
    }

    #[test]
    fn empty_list_is_valid() {
        assert_eq!(parse(""), Ok(vec![]));
        assert_eq!(parse("\n"), Ok(vec![]));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "abc", "0-", "-3", "3-1", "0,,1", "0-3:2", "1 2", "0x3", "+1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn rejects_huge_numbers_without_allocating() {
        assert!(parse("0-4294967295").is_err());
        assert!(parse("99999999999999999999999").is_err());
        assert!(parse("0-65536").is_err());
        // Many overlapping ranges cost what the CPUs they name cost.
        let many = vec!["0-65535"; 10_000].join(",");
        assert_eq!(parse(&many).map(|v| v.len()), Ok(65536));
        let many = vec!["0-8191"; 10_000].join(",");
        assert_eq!(parse(&many).map(|v| v.len()), Ok(8192));
    }

    #[test]
    fn formats_back() {
        assert_eq!(format(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(format(&[]), "");
        assert_eq!(format(&[5]), "5");
        assert_eq!(format(&[0, 2, 3, 7, 8, 9]), "0,2-3,7-9");
    }

    #[test]
    fn intersects() {
        assert_eq!(intersect(&[0, 1, 2, 6], &[1, 2, 3, 6, 7]), vec![1, 2, 6]);
    }
}
