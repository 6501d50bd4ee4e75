//! A metadata file's JSON, written so that its cost does not grow with a table's history.
//!
//! The iceberg crate's `Serialize` for `TableMetadata` clones the whole metadata and converts
//! every snapshot (its summary map, its strings) into a serializable copy before writing it. A
//! table committed to every second keeps thousands of snapshots, so every commit paid for
//! thousands of deep copies and their JSON. Here a format v2 metadata file is written field by
//! field from the metadata as it is, and each snapshot's JSON is kept between commits: a snapshot
//! never changes once committed, so its JSON is reused as long as the metadata holds that very
//! snapshot (the same `Arc`, or an equal one read back from a file). A commit then serializes only
//! its new snapshot and copies the others' bytes.
//!
//! The output is the crate's format v2 metadata (every field, the same names and the same
//! omissions), checked by a test against the crate's own serialization. Other format versions
//! are written by the crate.

use std::collections::HashMap;
use std::sync::Mutex;

use iceberg::spec::{FormatVersion, SnapshotRef, SnapshotReference, Summary, TableMetadata};
use serde::Serialize;

/// Each snapshot's JSON, by snapshot id, with the snapshot it was made from.
#[derive(Default)]
pub struct SnapshotJson {
    entries: HashMap<i64, (SnapshotRef, Box<[u8]>)>,
}

/// The JSON of every table's snapshots this process wrote metadata for (one [`SnapshotJson`]
/// per table, at most `max_tables`).
pub struct MetadataJsonCache {
    tables: Mutex<HashMap<String, SnapshotJson>>,
    max_tables: usize,
}

impl MetadataJsonCache {
    pub fn new(max_tables: usize) -> Self {
        MetadataJsonCache { tables: Mutex::default(), max_tables: max_tables.max(1) }
    }

    /// `metadata`'s JSON, reusing the JSON of the snapshots `table`'s last metadata already had.
    pub fn json(&self, table: &str, metadata: &TableMetadata, refs: &HashMap<String, SnapshotReference>) -> Result<Vec<u8>, serde_json::Error> {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if tables.len() >= self.max_tables && !tables.contains_key(table) {
            tables.clear();
        }
        let cache = tables.entry(table.to_owned()).or_default();
        let json = to_json(metadata, refs, cache);
        if json.is_err() {
            // Nothing is known to be wrong with the cache, but keep nothing from a failed write.
            tables.remove(table);
        }
        json
    }
}

/// Writes `m` (with its branches and tags, `refs`) as a metadata file's JSON. Format v2 is
/// written here, reusing and updating `cache`; other versions by the crate. A table without a
/// current snapshot says `"current-snapshot-id": -1`, as Iceberg Java writes it (see
/// [`super::metadata_json`]).
pub fn to_json(
    m: &TableMetadata,
    refs: &HashMap<String, SnapshotReference>,
    cache: &mut SnapshotJson,
) -> Result<Vec<u8>, serde_json::Error> {
    if m.format_version() != FormatVersion::V2 {
        return super::crate_json(m);
    }
    // Snapshots first: their JSON is reused or made, and the cache keeps only this metadata's.
    let mut snapshots: Vec<&[u8]> = Vec::with_capacity(m.snapshots().len());
    let mut snapshot_bytes = 0;
    for s in m.snapshots() {
        let fresh = match cache.entries.get(&s.snapshot_id()) {
            Some((kept, _)) => !(std::sync::Arc::ptr_eq(kept, s) || kept == s),
            None => true,
        };
        if fresh {
            let json = serde_json::to_vec(&SnapshotV2::of(s))?.into_boxed_slice();
            cache.entries.insert(s.snapshot_id(), (s.clone(), json));
        }
    }
    if cache.entries.len() > m.snapshots().len() {
        cache.entries.retain(|id, _| m.snapshot_by_id(*id).is_some());
    }
    for s in m.snapshots() {
        let json = &cache.entries[&s.snapshot_id()].1;
        snapshot_bytes += json.len() + 1;
        snapshots.push(json);
    }

    let mut o = Object::new(Vec::with_capacity(snapshot_bytes + 64 * m.history().len() + 16 * 1024));
    o.field("format-version", &2u8)?;
    o.field("table-uuid", &m.uuid())?;
    o.field("location", m.location())?;
    o.field("last-sequence-number", &m.last_sequence_number())?;
    o.field("last-updated-ms", &m.last_updated_ms())?;
    o.field("last-column-id", &m.last_column_id())?;
    o.seq("schemas", m.schemas_iter().map(|s| s.as_ref()))?;
    o.field("current-schema-id", &m.current_schema_id())?;
    o.seq("partition-specs", m.partition_specs_iter().map(|s| s.as_ref()))?;
    o.field("default-spec-id", &m.default_partition_spec_id())?;
    o.field("last-partition-id", &m.last_partition_id())?;
    if !m.properties().is_empty() {
        o.field("properties", m.properties())?;
    }
    o.field("current-snapshot-id", &m.current_snapshot_id().unwrap_or(-1))?;
    if !m.history().is_empty() {
        o.field("snapshot-log", m.history())?;
    }
    if !m.metadata_log().is_empty() {
        o.field("metadata-log", m.metadata_log())?;
    }
    o.seq("sort-orders", m.sort_orders_iter().map(|s| s.as_ref()))?;
    o.field("default-sort-order-id", &m.default_sort_order_id())?;
    o.field("refs", refs)?;
    if m.statistics_iter().len() > 0 {
        o.seq("statistics", m.statistics_iter())?;
    }
    if m.partition_statistics_iter().len() > 0 {
        o.seq("partition-statistics", m.partition_statistics_iter())?;
    }
    if !snapshots.is_empty() {
        o.key("snapshots")?;
        o.out.push(b'[');
        for (i, json) in snapshots.into_iter().enumerate() {
            if i > 0 {
                o.out.push(b',');
            }
            o.out.extend_from_slice(json);
        }
        o.out.push(b']');
    }
    Ok(o.end())
}

/// A format v2 snapshot as the metadata file holds it (the fields of the crate's `SnapshotV2`).
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct SnapshotV2<'a> {
    snapshot_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_snapshot_id: Option<i64>,
    sequence_number: i64,
    timestamp_ms: i64,
    manifest_list: &'a str,
    summary: &'a Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema_id: Option<i32>,
}

impl<'a> SnapshotV2<'a> {
    fn of(s: &'a SnapshotRef) -> Self {
        SnapshotV2 {
            snapshot_id: s.snapshot_id(),
            parent_snapshot_id: s.parent_snapshot_id(),
            sequence_number: s.sequence_number(),
            timestamp_ms: s.timestamp_ms(),
            manifest_list: s.manifest_list(),
            summary: s.summary(),
            schema_id: s.schema_id(),
        }
    }
}

/// A JSON object written a field at a time.
struct Object {
    out: Vec<u8>,
    empty: bool,
}

impl Object {
    fn new(mut out: Vec<u8>) -> Self {
        out.push(b'{');
        Object { out, empty: true }
    }

    fn key(&mut self, key: &str) -> Result<(), serde_json::Error> {
        if !std::mem::take(&mut self.empty) {
            self.out.push(b',');
        }
        serde_json::to_writer(&mut self.out, key)?;
        self.out.push(b':');
        Ok(())
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), serde_json::Error> {
        self.key(key)?;
        serde_json::to_writer(&mut self.out, value)
    }

    fn seq<T: Serialize>(&mut self, key: &str, values: impl Iterator<Item = T>) -> Result<(), serde_json::Error> {
        self.key(key)?;
        self.out.push(b'[');
        for (i, v) in values.enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            serde_json::to_writer(&mut self.out, &v)?;
        }
        self.out.push(b']');
        Ok(())
    }

    fn end(mut self) -> Vec<u8> {
        self.out.push(b'}');
        self.out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use iceberg::spec::{
        BlobMetadata, FormatVersion, NestedField, Operation, PartitionStatisticsFile, PrimitiveType, Schema, Snapshot,
        SnapshotReference, SnapshotRetention, SortOrder, StatisticsFile, Summary, TableMetadata, TableMetadataBuilder,
        Transform, Type, UnboundPartitionSpec,
    };
    use serde_json::Value;

    use super::{SnapshotJson, to_json};

    fn schema(id: i32, extra: bool) -> Schema {
        let mut fields = vec![
            Arc::new(NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long))),
            Arc::new(NestedField::optional(2, "ts", Type::Primitive(PrimitiveType::Timestamptz))),
        ];
        if extra {
            fields.push(Arc::new(NestedField::optional(3, "kind", Type::Primitive(PrimitiveType::String))));
        }
        Schema::builder().with_schema_id(id).with_identifier_field_ids([1]).with_fields(fields).build().unwrap()
    }

    fn snapshot(m: &TableMetadata, id: i64, note: &str) -> Snapshot {
        Snapshot::builder()
            .with_snapshot_id(id)
            .with_parent_snapshot_id(m.current_snapshot_id())
            .with_sequence_number(m.last_sequence_number() + 1)
            .with_timestamp_ms(m.last_updated_ms() + 1)
            .with_manifest_list(format!("{}/metadata/snap-{id}.avro", m.location()))
            .with_summary(Summary {
                operation: Operation::Append,
                additional_properties: HashMap::from([
                    ("added-records".to_owned(), id.to_string()),
                    ("floe.note".to_owned(), note.to_owned()),
                ]),
            })
            .with_schema_id(m.current_schema_id())
            .build()
    }

    fn append(m: TableMetadata, id: i64, note: &str) -> TableMetadata {
        let s = snapshot(&m, id, note);
        TableMetadataBuilder::new_from_metadata(m, Some(format!("file:///w/t/metadata/{id}.metadata.json")))
            .set_branch_snapshot(s, "main")
            .unwrap()
            .build()
            .unwrap()
            .metadata
    }

    /// A table with a bit of everything the metadata file holds: two schemas, two partition
    /// specs, a sort order, properties with characters JSON escapes, snapshots, a tag and a
    /// branch with retention, main with retention, statistics, both logs.
    fn rich() -> TableMetadata {
        let spec = UnboundPartitionSpec::builder().add_partition_field(2, "ts_day", Transform::Day).unwrap().build();
        let m = TableMetadataBuilder::new(
            schema(0, false),
            spec,
            SortOrder::unsorted_order(),
            "file:///w/t".into(),
            FormatVersion::V2,
            HashMap::from([("comment".to_owned(), "quote \" backslash \\ newline \n é".to_owned())]),
        )
        .unwrap()
        .build()
        .unwrap()
        .metadata;
        let mut m = append(m, 11, "first");
        m = TableMetadataBuilder::new_from_metadata(m, Some("file:///w/t/metadata/a.metadata.json".into()))
            .add_current_schema(schema(1, true))
            .unwrap()
            .add_default_partition_spec(
                UnboundPartitionSpec::builder().add_partition_field(3, "kind_bucket", Transform::Bucket(16)).unwrap().build(),
            )
            .unwrap()
            .build()
            .unwrap()
            .metadata;
        for id in [12, 13, 14] {
            m = append(m, id, "more");
        }
        TableMetadataBuilder::new_from_metadata(m, Some("file:///w/t/metadata/b.metadata.json".into()))
            .set_ref("main", SnapshotReference::new(14, SnapshotRetention::branch(Some(5), Some(3_600_000), None)))
            .unwrap()
            .set_ref("audit", SnapshotReference::new(12, SnapshotRetention::branch(None, None, Some(86_400_000))))
            .unwrap()
            .set_ref("v1", SnapshotReference::new(11, SnapshotRetention::Tag { max_ref_age_ms: Some(1000) }))
            .unwrap()
            .set_statistics(StatisticsFile {
                snapshot_id: 13,
                statistics_path: "file:///w/t/metadata/13.stats".into(),
                file_size_in_bytes: 100,
                file_footer_size_in_bytes: 10,
                key_metadata: None,
                blob_metadata: vec![BlobMetadata {
                    r#type: "apache-datasketches-theta-v1".into(),
                    snapshot_id: 13,
                    sequence_number: 3,
                    fields: vec![1],
                    properties: HashMap::from([("ndv".to_owned(), "4".to_owned())]),
                }],
            })
            .set_partition_statistics(PartitionStatisticsFile {
                snapshot_id: 14,
                statistics_path: "file:///w/t/metadata/14.parquet".into(),
                file_size_in_bytes: 200,
            })
            .set_properties(HashMap::from([("write.metadata.previous-versions-max".to_owned(), "3".to_owned())]))
            .unwrap()
            .build()
            .unwrap()
            .metadata
    }

    /// JSON with the arrays whose order the metadata does not keep (made from hash maps) sorted.
    fn normal(json: &[u8]) -> Value {
        let mut v: Value = serde_json::from_slice(json).unwrap();
        for key in ["schemas", "partition-specs", "sort-orders", "snapshots", "statistics", "partition-statistics"] {
            if let Some(Value::Array(a)) = v.get_mut(key) {
                a.sort_by_key(|e| e.to_string());
            }
        }
        v
    }

    fn ours(m: &TableMetadata, cache: &mut SnapshotJson) -> Vec<u8> {
        to_json(m, &crate::commit::refs(m), cache).unwrap()
    }

    #[test]
    fn writes_what_the_crate_writes() {
        let m = rich();
        let json = ours(&m, &mut SnapshotJson::default());
        assert_eq!(normal(&json), normal(&super::super::crate_json(&m).unwrap()));
        assert_eq!(crate::catalog::parse_metadata(&json).unwrap(), m);
        // The fields a reader needs are there, with their values.
        let v = normal(&json);
        assert_eq!(v["refs"]["main"]["min-snapshots-to-keep"], 5);
        assert_eq!(v["refs"]["v1"]["type"], "tag");
        assert_eq!(v["snapshots"].as_array().unwrap().len(), 4);
        assert_eq!(v["metadata-log"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn a_table_without_snapshots_says_minus_one() {
        let m = TableMetadataBuilder::new(
            schema(0, false),
            UnboundPartitionSpec::builder().build(),
            SortOrder::unsorted_order(),
            "file:///w/e".into(),
            FormatVersion::V2,
            HashMap::new(),
        )
        .unwrap()
        .build()
        .unwrap()
        .metadata;
        let json = ours(&m, &mut SnapshotJson::default());
        let v: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["current-snapshot-id"], -1);
        assert!(v.get("snapshots").is_none() && v.get("properties").is_none() && v.get("snapshot-log").is_none());
        assert_eq!(normal(&json), normal(&super::super::crate_json(&m).unwrap()));
        assert_eq!(crate::catalog::parse_metadata(&json).unwrap(), m);
    }

    #[test]
    fn kept_snapshot_json_is_reused_only_for_the_same_snapshot() {
        let mut cache = SnapshotJson::default();
        let m = rich();
        ours(&m, &mut cache);
        assert_eq!(cache.entries.len(), 4);
        // The next commit serializes only its own snapshot; the others are reused.
        let next = append(m.clone(), 15, "next");
        let json = ours(&next, &mut cache);
        assert_eq!(normal(&json), normal(&super::super::crate_json(&next).unwrap()));
        assert_eq!(cache.entries.len(), 5);
        // Expired snapshots leave the cache with the metadata that no longer has them.
        let expired = TableMetadataBuilder::new_from_metadata(next, None).remove_snapshots(&[11]).build().unwrap().metadata;
        let json = ours(&expired, &mut cache);
        assert_eq!(normal(&json), normal(&super::super::crate_json(&expired).unwrap()));
        assert!(!cache.entries.contains_key(&11) && cache.entries.len() == 4);
        // Another table state with a snapshot 15 that is not the same: its own JSON is written.
        let other = append(m, 15, "a different snapshot with the same id");
        let json = ours(&other, &mut cache);
        assert_eq!(normal(&json), normal(&super::super::crate_json(&other).unwrap()));
        assert!(String::from_utf8(json).unwrap().contains("a different snapshot with the same id"));
        // Read back from a file (equal, not the same Arc): still reused, and still right.
        let read = crate::catalog::parse_metadata(&super::super::crate_json(&other).unwrap()).unwrap();
        assert_eq!(normal(&ours(&read, &mut cache)), normal(&super::super::crate_json(&other).unwrap()));
    }
}
