//! [`RangeSet`]: a set of byte ranges, kept merged.

use std::collections::BTreeMap;
use std::ops::Range;

/// A set of non-overlapping, non-adjacent half-open ranges of `u64`.
///
/// Used to record which bytes of an item have been received and verified,
/// so that a chunk placed twice (a retry, a resumed or parallel transfer) is
/// harmless and the missing ranges can be asked for again (SPEC.md §8.4).
///
/// ```
/// use tensorwire::recv::RangeSet;
/// let mut s = RangeSet::new();
/// s.insert(0..10);
/// s.insert(20..30);
/// s.insert(5..25);
/// assert_eq!(s.iter().collect::<Vec<_>>(), vec![0..30]);
/// assert_eq!(s.gaps(0..40), vec![30..40]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    // start -> end, disjoint and not touching.
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `r`, merging it with the ranges it overlaps or touches.
    pub fn insert(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let (mut start, mut end) = (r.start, r.end);
        // A range starting at or before `start` may overlap or touch it.
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        // Every range starting within [start, end] is absorbed.
        let absorbed: Vec<u64> = self.map.range(start..=end).map(|(&s, _)| s).collect();
        for s in absorbed {
            if let Some(e) = self.map.remove(&s) {
                end = end.max(e);
            }
        }
        self.map.insert(start, end);
    }

    /// Whether every byte of `r` is in the set.
    pub fn contains(&self, r: Range<u64>) -> bool {
        r.is_empty() || self.map.range(..=r.start).next_back().is_some_and(|(_, &e)| e >= r.end)
    }

    /// The parts of `within` that are not in the set, in order.
    pub fn gaps(&self, within: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut at = within.start;
        for (&s, &e) in &self.map {
            if e <= at {
                continue;
            }
            if s >= within.end {
                break;
            }
            if s > at {
                out.push(at..s);
            }
            at = at.max(e);
        }
        if at < within.end {
            out.push(at..within.end);
        }
        out
    }

    /// Total bytes in the set.
    pub fn len(&self) -> u64 {
        self.map.iter().map(|(s, e)| e - s).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The ranges, in order.
    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(&s, &e)| s..e)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The naive reference model: one bool per byte.
    #[derive(Debug)]
    struct Bitmap(Vec<bool>);

    impl Bitmap {
        fn insert(&mut self, r: Range<u64>) {
            for b in &mut self.0[r.start as usize..r.end as usize] {
                *b = true;
            }
        }

        fn ranges(&self) -> Vec<Range<u64>> {
            let mut out: Vec<Range<u64>> = Vec::new();
            for (i, &b) in self.0.iter().enumerate() {
                let i = i as u64;
                match (b, out.last_mut()) {
                    (true, Some(last)) if last.end == i => last.end = i + 1,
                    (true, _) => out.push(i..i + 1),
                    _ => {}
                }
            }
            out
        }

        fn gaps(&self) -> Vec<Range<u64>> {
            Bitmap(self.0.iter().map(|b| !b).collect()).ranges()
        }
    }

    proptest! {
        #[test]
        fn matches_reference_model(ops in prop::collection::vec((0u64..200, 0u64..40), 0..60)) {
            let mut set = RangeSet::new();
            let mut model = Bitmap(vec![false; 240]);
            for (start, len) in ops {
                set.insert(start..start + len);
                model.insert(start..start + len);
                prop_assert_eq!(set.iter().collect::<Vec<_>>(), model.ranges());
            }
            prop_assert_eq!(set.gaps(0..240), model.gaps());
            prop_assert_eq!(set.len(), model.0.iter().filter(|b| **b).count() as u64);
            for r in model.ranges() {
                prop_assert!(set.contains(r.clone()));
            }
            for g in model.gaps() {
                prop_assert!(!set.contains(g.start..g.start + 1));
            }
        }
    }
}
