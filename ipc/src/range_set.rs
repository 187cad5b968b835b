//! A set of `usize` offsets kept as disjoint half-open ranges: what the
//! arena knows to be committed, so that it asks the kernel only about the
//! rest.

use std::collections::BTreeMap;
use std::ops::Range;

/// Disjoint, non-adjacent ranges (`start → end`), merged on insertion.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RangeSet {
    ranges: BTreeMap<usize, usize>,
}

impl RangeSet {
    /// Whether every offset of `r` is in the set (an empty `r` always is).
    pub(crate) fn contains(&self, r: Range<usize>) -> bool {
        if r.is_empty() {
            return true;
        }
        self.ranges
            .range(..=r.start)
            .next_back()
            .is_some_and(|(_, &end)| end >= r.end)
    }

    /// Adds the offsets of `r`.
    pub(crate) fn insert(&mut self, r: Range<usize>) {
        if r.is_empty() {
            return;
        }
        let (mut start, mut end) = (r.start, r.end);
        // A range that ends at or after `start` and begins before it.
        if let Some((&s, &e)) = self.ranges.range(..start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        // Every range that begins within `[start, end]` merges in.
        let swallowed: Vec<(usize, usize)> = self
            .ranges
            .range(start..=end)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in swallowed {
            self.ranges.remove(&s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
    }

    /// Removes the offsets of `r`.
    pub(crate) fn remove(&mut self, r: Range<usize>) {
        if r.is_empty() {
            return;
        }
        // A range that begins before `r` and reaches into it is cut short
        // (and keeps what lies past `r`).
        if let Some((&s, &e)) = self.ranges.range(..r.start).next_back() {
            if e > r.start {
                self.ranges.insert(s, r.start);
                if e > r.end {
                    self.ranges.insert(r.end, e);
                }
            }
        }
        let inside: Vec<(usize, usize)> = self
            .ranges
            .range(r.start..r.end)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in inside {
            self.ranges.remove(&s);
            if e > r.end {
                self.ranges.insert(r.end, e);
            }
        }
    }

    /// How many separate ranges the set holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The same set as one flag per offset, for offsets below `n`.
    fn flags(set: &RangeSet, n: usize) -> Vec<bool> {
        (0..n).map(|i| set.contains(i..i + 1)).collect()
    }

    #[test]
    fn ranges_merge_split_and_answer_for_whole_spans() {
        let mut s = RangeSet::default();
        s.insert(10..20);
        s.insert(20..30); // adjacent: merged
        s.insert(40..50);
        assert_eq!(s.len(), 2);
        assert!(s.contains(10..30) && s.contains(12..13) && s.contains(5..5));
        assert!(!s.contains(9..12) && !s.contains(25..41) && !s.contains(30..31));
        s.insert(25..45); // bridges both
        assert_eq!(s.len(), 1);
        assert!(s.contains(10..50));
        s.remove(15..18); // a hole in the middle
        assert_eq!(s.len(), 2);
        assert!(s.contains(10..15) && s.contains(18..50) && !s.contains(14..16));
        s.remove(0..100);
        assert_eq!(s.len(), 0);
    }

    proptest::proptest! {
        #[test]
        fn the_set_matches_a_flag_per_offset(ops in proptest::collection::vec((0usize..64, 0usize..64, proptest::bool::ANY), 1..40)) {
            const N: usize = 70;
            let (mut set, mut model) = (RangeSet::default(), [false; N]);
            for (a, b, add) in ops {
                let r = a.min(b)..a.max(b);
                if add { set.insert(r.clone()) } else { set.remove(r.clone()) }
                model[r].iter_mut().for_each(|f| *f = add);
                proptest::prop_assert_eq!(flags(&set, N), model.to_vec());
                for start in 0..N {
                    for end in start..N.min(start + 9) {
                        let whole = model[start..end].iter().all(|&f| f);
                        proptest::prop_assert_eq!(set.contains(start..end), whole, "{}..{}", start, end);
                    }
                }
                // Stored ranges stay disjoint, non-empty and non-adjacent.
                let v: Vec<_> = set.ranges.iter().map(|(&s, &e)| (s, e)).collect();
                proptest::prop_assert!(v.iter().all(|&(s, e)| s < e));
                proptest::prop_assert!(v.windows(2).all(|w| w[0].1 < w[1].0));
            }
        }
    }
}
