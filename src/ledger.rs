//! The ledger: for each pipeline, the next Kafka offset to read for every topic-partition it has
//! ever committed to the table.
//!
//! Invariant (DESIGN.md §1): the ledger changes only in the same atomic catalog commit that adds
//! the data for those offsets, so "rows visible" and "offsets advanced" are one event. It lives in a
//! table property (`floe.ledger.<pipeline>`), because properties are carried forward by every
//! engine's commits and by snapshot expiry, while a snapshot summary is not. Each floe snapshot
//! summary also records the ranges it covers, for audit.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Prefix of the table property holding one pipeline's ledger.
pub const LEDGER_PROPERTY_PREFIX: &str = "floe.ledger.";
/// Snapshot summary key: the pipeline that made the snapshot.
pub const SUMMARY_PIPELINE: &str = "floe.pipeline";
/// Snapshot summary key: the offset ranges the snapshot covers, `topic/partition:start-end,...`.
pub const SUMMARY_OFFSETS: &str = "floe.offsets";
/// Snapshot summary key: a unique id of the commit attempt, to recognise our own commit when the
/// outcome of a swap was unknown (connection lost after the database applied it).
pub const SUMMARY_COMMIT_ID: &str = "floe.commit-id";

/// A Kafka topic-partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// One pipeline's ledger: topic -> partition -> next offset to read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ledger(BTreeMap<String, BTreeMap<i32, i64>>);

/// A contiguous stretch of one partition that a batch covers.
///
/// `expected` is what the ledger said when the batch started reading (None: the partition was not
/// in the ledger); `end` is the next offset to read after the batch. The batch may commit only if
/// the ledger still says `expected` in the exact metadata it commits on top of (DESIGN.md §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRange {
    pub tp: TopicPartition,
    pub expected: Option<i64>,
    /// First offset actually read in this batch (for the audit summary).
    pub first: i64,
    pub end: i64,
}

/// A partition whose ledger entry is not what a batch expected: someone else committed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceViolation {
    pub tp: TopicPartition,
    pub expected: Option<i64>,
    pub found: Option<i64>,
}

impl Ledger {
    /// Reads a pipeline's ledger from table properties. A property that does not parse is an
    /// error: guessing would risk duplicates or loss.
    pub fn from_properties(
        props: &std::collections::HashMap<String, String>,
        pipeline: &str,
    ) -> Result<Ledger, String> {
        match props.get(&property_key(pipeline)) {
            None => Ok(Ledger::default()),
            Some(text) => serde_json::from_str(text).map_err(|e| {
                format!(
                    "table property {} does not hold a valid floe ledger ({e}): {text:?}",
                    property_key(pipeline)
                )
            }),
        }
    }

    /// The property value.
    pub fn to_property(&self) -> String {
        serde_json::to_string(self).expect("a ledger always serializes")
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<i64> {
        self.0.get(&tp.topic).and_then(|p| p.get(&tp.partition)).copied()
    }

    pub fn set(&mut self, tp: &TopicPartition, next: i64) {
        self.0.entry(tp.topic.clone()).or_default().insert(tp.partition, next);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every entry, ordered.
    pub fn entries(&self) -> impl Iterator<Item = (TopicPartition, i64)> + '_ {
        self.0
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |(p, o)| (TopicPartition::new(t.clone(), *p), *o)))
    }

    /// The fence check: every range must start where the ledger stands.
    pub fn check(&self, ranges: &[OffsetRange]) -> Vec<FenceViolation> {
        ranges
            .iter()
            .filter_map(|r| {
                let found = self.get(&r.tp);
                (found != r.expected).then(|| FenceViolation {
                    tp: r.tp.clone(),
                    expected: r.expected,
                    found,
                })
            })
            .collect()
    }

    /// The ledger after a batch's ranges are committed.
    pub fn advanced(&self, ranges: &[OffsetRange]) -> Ledger {
        let mut next = self.clone();
        for r in ranges {
            next.set(&r.tp, r.end);
        }
        next
    }
}

/// The table property holding `pipeline`'s ledger.
pub fn property_key(pipeline: &str) -> String {
    format!("{LEDGER_PROPERTY_PREFIX}{pipeline}")
}

/// All pipelines' ledgers found in a table's properties.
pub fn all_ledgers(
    props: &std::collections::HashMap<String, String>,
) -> BTreeMap<String, Result<Ledger, String>> {
    props
        .keys()
        .filter_map(|k| k.strip_prefix(LEDGER_PROPERTY_PREFIX))
        .map(|p| (p.to_owned(), Ledger::from_properties(props, p)))
        .collect()
}

/// Snapshot summary key: offsets the pipeline could not read because the log no longer held
/// them, `topic/partition:needed->resumed,...` (DESIGN.md §1: data loss is never hidden).
pub const SUMMARY_GAPS: &str = "floe.gaps";
/// Snapshot summary key: the batch's dead letters by kind, `not-json=2,wrong-type=1`.
pub const SUMMARY_DEAD_LETTERS: &str = "floe.dead-letters";
/// Snapshot summary key: rows of the batch that failed each data check, `column:check=rows,...`
/// (whatever the check's action; `floe status` adds them up).
pub const SUMMARY_CHECKS: &str = "floe.checks";

/// The audit form of ranges for a snapshot summary: `topic/partition:first-end` (end exclusive).
/// Ranges that cover no offset (a partition's start recorded before anything was read) are left
/// out.
pub fn ranges_summary(ranges: &[OffsetRange]) -> String {
    ranges
        .iter()
        .filter(|r| r.first < r.end)
        .map(|r| format!("{}:{}-{}", r.tp, r.first, r.end))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn range(topic: &str, p: i32, expected: Option<i64>, end: i64) -> OffsetRange {
        OffsetRange {
            tp: TopicPartition::new(topic, p),
            expected,
            first: expected.unwrap_or(0),
            end,
        }
    }

    #[test]
    fn round_trips_through_a_property() {
        let mut l = Ledger::default();
        l.set(&TopicPartition::new("events", 0), 120);
        l.set(&TopicPartition::new("events", 3), 7);
        l.set(&TopicPartition::new("other.topic", 1), 0);
        let props = HashMap::from([(property_key("p1"), l.to_property())]);
        assert_eq!(Ledger::from_properties(&props, "p1").unwrap(), l);
        assert_eq!(Ledger::from_properties(&props, "p2").unwrap(), Ledger::default());
        assert_eq!(l.to_property(), r#"{"events":{"0":120,"3":7},"other.topic":{"1":0}}"#);
        let all = all_ledgers(&props);
        assert_eq!(all.len(), 1);
        assert_eq!(all["p1"].as_ref().unwrap(), &l);
    }

    #[test]
    fn a_broken_property_is_an_error_not_an_empty_ledger() {
        let props = HashMap::from([(property_key("p"), "{not json".to_owned())]);
        let e = Ledger::from_properties(&props, "p").unwrap_err();
        assert!(e.contains("floe.ledger.p"), "{e}");
    }

    #[test]
    fn fence_check() {
        let mut l = Ledger::default();
        l.set(&TopicPartition::new("t", 0), 100);
        assert!(l.check(&[range("t", 0, Some(100), 150), range("t", 1, None, 10)]).is_empty());
        let v = l.check(&[range("t", 0, Some(90), 150), range("t", 1, Some(5), 10)]);
        assert_eq!(
            v,
            vec![
                FenceViolation { tp: TopicPartition::new("t", 0), expected: Some(90), found: Some(100) },
                FenceViolation { tp: TopicPartition::new("t", 1), expected: Some(5), found: None },
            ]
        );
        // Absent in the batch's view but present now: someone committed it first.
        assert_eq!(l.check(&[range("t", 0, None, 10)]).len(), 1);
    }

    #[test]
    fn summary_format() {
        let r = vec![
            OffsetRange { tp: TopicPartition::new("t", 0), expected: Some(100), first: 100, end: 150 },
            OffsetRange { tp: TopicPartition::new("t", 2), expected: None, first: 7, end: 9 },
        ];
        assert_eq!(ranges_summary(&r), "t/0:100-150,t/2:7-9");
        let pinned = OffsetRange { tp: TopicPartition::new("t", 3), expected: None, first: 40, end: 40 };
        assert_eq!(ranges_summary(&[pinned]), "");
    }

    proptest! {
        /// Against a model: a sequence of batches, each committed only if the fence passes,
        /// leaves the ledger at exactly the end of the last accepted batch per partition, and
        /// never accepts two batches that start at the same position.
        #[test]
        fn fenced_commits_never_overlap(batches in prop::collection::vec((0i32..3, 0i64..5, 1i64..5), 1..60)) {
            let mut ledger = Ledger::default();
            let mut model: BTreeMap<i32, i64> = BTreeMap::new();
            let mut accepted_starts: std::collections::HashSet<(i32, Option<i64>)> = Default::default();
            for (p, start_hint, len) in batches {
                let tp = TopicPartition::new("t", p);
                // A writer believes the ledger is either current or stale.
                let believed = if start_hint == 0 { None } else { Some(start_hint * 3) };
                let end = believed.unwrap_or(0) + len;
                let r = OffsetRange { tp: tp.clone(), expected: believed, first: believed.unwrap_or(0), end };
                if ledger.check(std::slice::from_ref(&r)).is_empty() {
                    prop_assert!(accepted_starts.insert((p, believed)), "two batches accepted from one position");
                    prop_assert_eq!(model.get(&p).copied(), believed);
                    ledger = ledger.advanced(std::slice::from_ref(&r));
                    model.insert(p, end);
                }
                prop_assert_eq!(ledger.get(&tp), model.get(&p).copied());
            }
        }
    }
}
