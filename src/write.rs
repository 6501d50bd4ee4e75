//! Parquet data files: decoded Arrow batches split by the table's partition spec and written
//! through the iceberg crate's writers, with compression from the table's write properties and
//! file names that can never collide (the crate's default name counter restarts per instance).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use iceberg::arrow::RecordBatchPartitionSplitter;
use iceberg::io::FileIO;
use iceberg::spec::{DataFile, DataFileFormat, PartitionKey, Struct, TableMetadata};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator, LocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// Table property naming the Parquet codec.
pub const PROP_CODEC: &str = "write.parquet.compression-codec";
/// Table property naming the codec level.
pub const PROP_LEVEL: &str = "write.parquet.compression-level";

/// The oldest staged data files a floe commit may still make part of the table. A commit that
/// has retried longer (a catalog outage) writes its files again, because remove-orphans deletes
/// unreferenced files older than its threshold, which is never below 4x this
/// ([`crate::maintain::orphans::MIN_AGE`]).
pub const MAX_STAGED_AGE: Duration = Duration::from_secs(15 * 60);

/// The age at which this process writes staged files again: [`MAX_STAGED_AGE`] unless lowered
/// with [`lower_staged_age_limit`].
static STAGED_AGE_LIMIT_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(MAX_STAGED_AGE.as_millis() as u64);

/// The environment variable with which `floe run` lowers the staged-age limit (tests make a
/// commit outlive it in seconds instead of a quarter of an hour).
pub const ENV_STAGED_AGE_LIMIT: &str = "FLOE_TEST_MAX_STAGED_AGE";

/// Lowers the age at which this process's staged files are written again. Never above
/// [`MAX_STAGED_AGE`]: the orphan-removal age floor rests on it ([`crate::maintain::orphans::MIN_AGE`]).
pub fn lower_staged_age_limit(limit: Duration) -> Result<(), String> {
    if limit > MAX_STAGED_AGE || limit.is_zero() {
        return Err(format!(
            "{ENV_STAGED_AGE_LIMIT} = {}: the limit on staged files' age can only be lowered, to more than 0s and at most {}",
            humantime::format_duration(limit),
            humantime::format_duration(MAX_STAGED_AGE)
        ));
    }
    STAGED_AGE_LIMIT_MS.store(limit.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// The age beyond which this process's staged files are written again.
pub fn staged_age_limit() -> Duration {
    Duration::from_millis(STAGED_AGE_LIMIT_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// Data files written for one commit, with the moment writing them began (before the first
/// file was opened, so the age is never understated).
#[derive(Debug, Clone)]
pub struct StagedFiles {
    pub files: Vec<DataFile>,
    pub written_at: Instant,
}

impl StagedFiles {
    pub fn age(&self) -> Duration {
        self.written_at.elapsed()
    }

    /// Whether the files are too old to commit: remove-orphans may be about to delete them.
    /// Check right before each swap attempt; a stale batch is written again.
    pub fn is_stale(&self) -> bool {
        self.age() > staged_age_limit()
    }

    pub fn paths(&self) -> Vec<String> {
        self.files.iter().map(|f| f.file_path().to_owned()).collect()
    }
}

/// [`write_data_files`] with the table partitions of the batch encoded on up to `workers`
/// threads, remembering when writing began. `batches` is left holding the same rows split by table
/// partition (for writing them again), and the unsplit batches are freed before encoding begins:
/// the rows are in memory once, not twice, while they are encoded.
pub async fn write_staged(
    file_io: &FileIO,
    metadata: &TableMetadata,
    schema: &iceberg::spec::SchemaRef,
    batches: &mut Vec<RecordBatch>,
    target_file_size: u64,
    workers: usize,
) -> Result<StagedFiles, WriteError> {
    let written_at = Instant::now();
    let files = write_files(file_io, metadata, schema, batches, target_file_size, workers).await?;
    Ok(StagedFiles { files, written_at })
}

/// Why data files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("table property {key} = {value:?}: {message}")]
    Property {
        key: String,
        value: String,
        message: String,
    },
    #[error("writing data files under {location}: {message}")]
    Io { location: String, message: String },
    #[error("writing data files under {location}: the rows do not fit the table: {message}")]
    Invalid { location: String, message: String },
}

impl WriteError {
    /// Storage trouble may pass; a bad table property will not.
    pub fn is_transient(&self) -> bool {
        matches!(self, WriteError::Io { .. })
    }
}

/// Parquet writer properties from the table's `write.parquet.*` properties (zstd level 1 when the
/// table says nothing: fast, and far smaller than the crate's uncompressed default).
pub fn writer_properties(metadata: &TableMetadata) -> Result<WriterProperties, WriteError> {
    let props = metadata.properties();
    let codec = props.get(PROP_CODEC).map(|s| s.to_ascii_lowercase());
    let level = match props.get(PROP_LEVEL) {
        Some(l) => Some(l.parse::<i32>().map_err(|_| WriteError::Property {
            key: PROP_LEVEL.into(),
            value: l.clone(),
            message: "not an integer".into(),
        })?),
        None => None,
    };
    let bad_level = |e: parquet::errors::ParquetError| WriteError::Property {
        key: PROP_LEVEL.into(),
        value: level.map(|l| l.to_string()).unwrap_or_default(),
        message: e.to_string(),
    };
    let compression = match codec.as_deref() {
        None | Some("zstd") => Compression::ZSTD(ZstdLevel::try_new(level.unwrap_or(1)).map_err(bad_level)?),
        Some("snappy") => Compression::SNAPPY,
        Some("gzip") => Compression::GZIP(GzipLevel::try_new(level.unwrap_or(6) as u32).map_err(bad_level)?),
        Some("lz4") => Compression::LZ4_RAW,
        Some("uncompressed") | Some("none") => Compression::UNCOMPRESSED,
        Some(other) => {
            return Err(WriteError::Property {
                key: PROP_CODEC.into(),
                value: other.into(),
                message: "unsupported codec; use zstd, snappy, gzip, lz4 or uncompressed".into(),
            });
        }
    };
    Ok(WriterProperties::builder().set_compression(compression).build())
}

/// Values of a column looked at to decide whether a dictionary can pay off.
const DICTIONARY_SAMPLE: usize = 4096;

/// `props` without a dictionary for the columns of `sample` (a batch about to be written) whose
/// values are nearly all distinct (90% or more of the first [`DICTIONARY_SAMPLE`]): ids, keys,
/// timestamps, free text. parquet-rs interns every value of a dictionary column until the
/// dictionary reaches its size limit, whether or not values repeat; for such a column that is pure
/// cost (measured: a third of the loader's CPU on the seed table, whose id, integer, string,
/// nested.value and timestamp are unique), and the data pages come out no smaller. Parquet-java
/// gives such a dictionary up after its first page for the same reason. Columns inside lists and
/// maps keep their dictionaries.
fn without_useless_dictionaries(props: WriterProperties, sample: Option<&RecordBatch>) -> WriterProperties {
    let Some(sample) = sample else { return props };
    let mut paths = Vec::new();
    for (field, column) in sample.schema().fields().iter().zip(sample.columns()) {
        mostly_distinct_leaves(vec![field.name().clone()], column.as_ref(), &mut paths);
    }
    if paths.is_empty() {
        return props;
    }
    let mut builder = props.into_builder();
    for path in paths {
        builder = builder.set_column_dictionary_enabled(parquet::schema::types::ColumnPath::new(path), false);
    }
    builder.build()
}

/// Collects the paths of the primitive leaves under `path` (through structs only) whose sampled
/// values are nearly all distinct.
fn mostly_distinct_leaves(path: Vec<String>, array: &dyn arrow_array::Array, out: &mut Vec<Vec<String>>) {
    use arrow_array::cast::AsArray;
    use arrow_schema::DataType;
    let n = array.len().min(DICTIONARY_SAMPLE);
    let valid = (0..n).filter(|&i| array.is_valid(i));
    let data = array.to_data();
    let values: Vec<&[u8]> = match array.data_type() {
        DataType::Struct(fields) => {
            for (f, c) in fields.iter().zip(array.as_struct().columns()) {
                let mut p = path.clone();
                p.push(f.name().clone());
                mostly_distinct_leaves(p, c.as_ref(), out);
            }
            return;
        }
        DataType::Utf8 => valid.map(|i| array.as_string::<i32>().value(i).as_bytes()).collect(),
        DataType::LargeUtf8 => valid.map(|i| array.as_string::<i64>().value(i).as_bytes()).collect(),
        DataType::Binary => valid.map(|i| array.as_binary::<i32>().value(i)).collect(),
        DataType::LargeBinary => valid.map(|i| array.as_binary::<i64>().value(i)).collect(),
        DataType::FixedSizeBinary(_) => valid.map(|i| array.as_fixed_size_binary().value(i)).collect(),
        DataType::Boolean => return, // never dictionary-encoded
        t => {
            // Fixed-width values, compared by their bytes.
            let (Some(width), Some(buffer)) = (t.primitive_width(), data.buffers().first()) else { return };
            let (bytes, offset) = (buffer.as_slice(), data.offset());
            valid.map(|i| &bytes[(offset + i) * width..(offset + i + 1) * width]).collect()
        }
    };
    let distinct: std::collections::HashSet<&[u8]> = values.iter().copied().collect();
    if values.len() >= 64 && distinct.len() * 10 >= values.len() * 9 {
        out.push(path);
    }
}

/// Writes batches as Parquet data files, one or more per table partition, rolling over near
/// `target_file_size`. `schema` is the schema the rows were read with: after a schema change it may
/// be older than the table's current one, which Iceberg allows (readers project by field id).
///
/// Rows are grouped by their partition value (the struct of transformed values), never by its path
/// string: NULL and the string `'null'` are different partitions, and a value containing `/` or `=`
/// is one partition, whatever its path looks like. Directory names escape each value the way
/// Iceberg Java does (URL encoding), so no value can make a path leave the table's data directory.
///
/// Files are named `<uuid v7>-<n>.parquet`: the uuid is new on every call, so names never collide
/// across processes, restarts or retries.
pub async fn write_data_files(
    file_io: &FileIO,
    metadata: &TableMetadata,
    schema: &iceberg::spec::SchemaRef,
    batches: Vec<RecordBatch>,
    target_file_size: u64,
) -> Result<Vec<DataFile>, WriteError> {
    let mut batches = batches;
    write_files(file_io, metadata, schema, &mut batches, target_file_size, 1).await
}

async fn write_files(
    file_io: &FileIO,
    metadata: &TableMetadata,
    schema: &iceberg::spec::SchemaRef,
    batches: &mut Vec<RecordBatch>,
    target_file_size: u64,
    workers: usize,
) -> Result<Vec<DataFile>, WriteError> {
    let locations = Locations::new(metadata).map_err(|e| io_error(metadata.location(), e))?;
    let result = write_groups(file_io, metadata, schema, batches, target_file_size, &locations, workers).await;
    if result.is_err() {
        // An abandoned write must not leave files behind: delete every file this call opened
        // (finished ones, rolled-over ones and the one it failed in), before saying it failed.
        remove_abandoned(file_io, locations.take()).await;
    }
    result
}

fn io_error(location: &str, e: iceberg::Error) -> WriteError {
    // Data that does not fit the table will not fit on a retry either; storage trouble may pass.
    match e.kind() {
        iceberg::ErrorKind::DataInvalid | iceberg::ErrorKind::FeatureUnsupported => WriteError::Invalid {
            location: location.to_owned(),
            message: e.to_string(),
        },
        _ => WriteError::Io {
            location: location.to_owned(),
            message: e.to_string(),
        },
    }
}

async fn write_groups(
    file_io: &FileIO,
    metadata: &TableMetadata,
    schema: &iceberg::spec::SchemaRef,
    batches: &mut Vec<RecordBatch>,
    target_file_size: u64,
    locations: &Locations,
    workers: usize,
) -> Result<Vec<DataFile>, WriteError> {
    let location = metadata.location();
    let io_err = |e: iceberg::Error| io_error(location, e);
    let schema = schema.clone();
    let spec = metadata.default_partition_spec().clone();
    let props = without_useless_dictionaries(writer_properties(metadata)?, batches.iter().find(|b| b.num_rows() > 0));
    let parquet = ParquetWriterBuilder::new(props, schema.clone());
    let names = DefaultFileNameGenerator::new(
        uuid::Uuid::now_v7().to_string(),
        None,
        DataFileFormat::Parquet,
    );
    let rolling = RollingFileWriterBuilder::new(
        parquet,
        target_file_size as usize,
        file_io.clone(),
        locations.clone(),
        names,
    );
    let builder = DataFileWriterBuilder::new(rolling);

    let groups: Vec<(Option<PartitionKey>, Vec<RecordBatch>)> = if spec.is_unpartitioned() {
        vec![(None, batches.clone())]
    } else {
        let splitter = RecordBatchPartitionSplitter::try_new_with_computed_values(schema.clone(), spec.clone())
            .map_err(io_err)?;
        let groups: Vec<_> = group_by_partition(&splitter, batches.clone())
            .map_err(io_err)?
            .into_iter()
            .map(|(key, parts)| (Some(key), parts))
            .collect();
        // The caller keeps the split rows, and the unsplit ones are freed here.
        *batches = groups.iter().flat_map(|(_, parts)| parts.iter().cloned()).collect();
        groups
    };

    let groups: Vec<(Option<PartitionKey>, Vec<RecordBatch>)> =
        groups.into_iter().filter(|(_, parts)| parts.iter().any(|b| b.num_rows() > 0)).collect();
    // Each group's writer is independent: on a multi-threaded runtime the groups are encoded on
    // threads of their own (at most `workers` at once), off the runtime's worker threads, which
    // stay free for the reader and the consumer's events. Elsewhere (tests on a current-thread
    // runtime) they are written in turn.
    if !crate::blocking::can_block_in_place() || workers <= 1 {
        let mut files = Vec::new();
        for (key, parts) in groups {
            files.extend(write_group(&builder, key, parts).await.map_err(io_err)?);
        }
        return Ok(files);
    }
    let lanes = workers.clamp(1, groups.len().max(1));
    let mut lane_groups: Vec<Vec<(Option<PartitionKey>, Vec<RecordBatch>)>> = (0..lanes).map(|_| Vec::new()).collect();
    // Largest groups first, each to the lane with the fewest rows so far.
    let mut groups = groups;
    groups.sort_by_key(|(_, parts)| std::cmp::Reverse(parts.iter().map(RecordBatch::num_rows).sum::<usize>()));
    let mut lane_rows = vec![0usize; lanes];
    for g in groups {
        let rows: usize = g.1.iter().map(RecordBatch::num_rows).sum();
        let lane = (0..lanes).min_by_key(|&i| lane_rows[i]).expect("at least one lane");
        lane_rows[lane] += rows;
        lane_groups[lane].push(g);
    }
    let handle = tokio::runtime::Handle::current();
    let write_lane = |lane: Vec<(Option<PartitionKey>, Vec<RecordBatch>)>| {
        handle.block_on(async {
            let mut files = Vec::new();
            for (key, parts) in lane {
                files.extend(write_group(&builder, key, parts).await?);
            }
            Ok::<_, iceberg::Error>(files)
        })
    };
    let results: Vec<iceberg::Result<Vec<DataFile>>> = crate::blocking::run(|| {
        if lane_groups.len() == 1 {
            return lane_groups.into_iter().map(write_lane).collect();
        }
        std::thread::scope(|scope| {
            let running: Vec<_> = lane_groups
                .into_iter()
                .map(|lane| {
                    std::thread::Builder::new()
                        .name("floe-encode".into())
                        .spawn_scoped(scope, || write_lane(lane))
                        .expect("spawning an encoding thread")
                })
                .collect();
            running.into_iter().map(|t| t.join().expect("an encoding thread panicked")).collect()
        })
    });
    let mut files = Vec::new();
    for r in results {
        files.extend(r.map_err(io_err)?);
    }
    Ok(files)
}

/// Writes one partition's rows (rolling over to new files at the target size).
async fn write_group<B: IcebergWriterBuilder>(
    builder: &B,
    key: Option<PartitionKey>,
    parts: Vec<RecordBatch>,
) -> iceberg::Result<Vec<DataFile>> {
    let mut writer = builder.build(key).await?;
    for part in parts {
        if part.num_rows() > 0 {
            writer.write(part).await?;
        }
    }
    writer.close().await
}

/// The rows of `batches` grouped by partition value, in order of first appearance. The key is
/// the `Struct` of transformed values itself: equal values share a group, and nothing else does.
pub(crate) fn group_by_partition(
    splitter: &RecordBatchPartitionSplitter,
    batches: Vec<RecordBatch>,
) -> iceberg::Result<Vec<(PartitionKey, Vec<RecordBatch>)>> {
    let mut index: HashMap<Struct, usize> = HashMap::new();
    let mut groups: Vec<(PartitionKey, Vec<RecordBatch>)> = Vec::new();
    for batch in batches {
        if batch.num_rows() == 0 {
            continue;
        }
        for (key, part) in splitter.split(&batch)? {
            match index.get(key.data()) {
                Some(&i) => groups[i].1.push(part),
                None => {
                    index.insert(key.data().clone(), groups.len());
                    groups.push((key, vec![part]));
                }
            }
        }
    }
    Ok(groups)
}

/// File locations under the table's data directory (`write.data.path` honoured, as the crate's
/// default generator does), with escaped partition directories; remembers every location it hands
/// out, so that a failed write can delete what it started.
#[derive(Clone)]
struct Locations {
    base: DefaultLocationGenerator,
    handed_out: Arc<Mutex<Vec<String>>>,
}

impl Locations {
    fn new(metadata: &TableMetadata) -> iceberg::Result<Self> {
        Ok(Locations {
            base: DefaultLocationGenerator::new(metadata)?,
            handed_out: Arc::default(),
        })
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.handed_out.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl LocationGenerator for Locations {
    fn generate_location(&self, key: Option<&PartitionKey>, file_name: &str) -> String {
        let relative = match key {
            Some(k) if !k.spec().is_unpartitioned() => format!("{}/{file_name}", partition_path(k)),
            _ => file_name.to_owned(),
        };
        let location = self.base.generate_location(None, &relative);
        self.handed_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(location.clone());
        location
    }
}

/// `name=value/...` with each name and human-readable value URL-encoded as Iceberg Java does
/// (`region=a%2Fb`). The directory is only for people and Hive-style tools: readers take the
/// partition from the manifest, so two values that encode alike (NULL and 'null') are harmless.
pub(crate) fn partition_path(key: &PartitionKey) -> String {
    let types = key.spec().partition_type(key.schema()).ok();
    key.spec()
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let value = key.data().fields().get(i).and_then(|v| v.as_ref());
            let human = match types.as_ref().and_then(|t| t.fields().get(i)) {
                Some(t) => field.transform.to_human_string(&t.field_type, value),
                None => "unknown".to_owned(),
            };
            format!("{}={}", url_encode(&field.name), url_encode(&human))
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// `application/x-www-form-urlencoded`, like Java's `URLEncoder.encode(s, UTF_8)`.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'*' | b'_' => out.push(b as char),
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Deletes what an abandoned write opened. A file that was never created is not an error.
async fn remove_abandoned(file_io: &FileIO, paths: Vec<String>) {
    let mut removed = 0usize;
    for path in paths {
        match file_io.delete(&path).await {
            Ok(()) => removed += 1,
            Err(e) => {
                if file_io.exists(&path).await.unwrap_or(true) {
                    tracing::warn!(file = %path, error = %e, "could not delete a file of a failed write; remove-orphans will");
                }
            }
        }
    }
    tracing::debug!(removed, "files of a failed write deleted");
}

/// Deletes files that no committed metadata references (a lost or failed commit attempt).
/// Failures are logged, not returned: the orphan-file sweep removes what is left.
pub async fn delete_files(file_io: &FileIO, paths: impl IntoIterator<Item = String>) {
    for path in paths {
        if let Err(e) = file_io.delete(&path).await {
            tracing::warn!(file = %path, error = %e, "could not delete an uncommitted file; remove-orphans will");
        }
    }
}

/// Arrow schema of the table's current schema, as the writer expects batches.
pub fn arrow_schema(metadata: &TableMetadata) -> Result<std::sync::Arc<arrow_schema::Schema>, String> {
    iceberg::arrow::schema_to_arrow_schema(metadata.current_schema())
        .map(std::sync::Arc::new)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
    use iceberg::io::{FileIO, FileIOBuilder, LocalFsStorageFactory};
    use iceberg::spec::{
        FormatVersion, Literal, NestedField, PrimitiveType, Schema, SortOrder, Struct, TableMetadata,
        TableMetadataBuilder, Transform, Type, UnboundPartitionSpec,
    };

    use super::*;

    fn table(dir: &std::path::Path, fields: &[(i32, &str, Transform)]) -> TableMetadata {
        let schema = Schema::builder()
            .with_fields(vec![
                Arc::new(NestedField::optional(1, "id", Type::Primitive(PrimitiveType::Long))),
                Arc::new(NestedField::optional(2, "region", Type::Primitive(PrimitiveType::String))),
            ])
            .build()
            .unwrap();
        let mut spec = UnboundPartitionSpec::builder().with_spec_id(0);
        for (source, name, transform) in fields {
            spec = spec.add_partition_field(*source, *name, *transform).unwrap();
        }
        TableMetadataBuilder::new(
            schema,
            spec.build(),
            SortOrder::unsorted_order(),
            format!("file://{}", dir.display()),
            FormatVersion::V2,
            HashMap::new(),
        )
        .unwrap()
        .build()
        .unwrap()
        .metadata
    }

    fn rows(m: &TableMetadata, ids: Vec<i64>, regions: Vec<Option<&str>>) -> RecordBatch {
        RecordBatch::try_new(
            arrow_schema(m).unwrap(),
            vec![
                Arc::new(Int64Array::from(ids)) as ArrayRef,
                Arc::new(StringArray::from(regions)) as ArrayRef,
            ],
        )
        .unwrap()
    }

    fn file_io() -> FileIO {
        FileIOBuilder::new(Arc::new(LocalFsStorageFactory)).build()
    }

    fn string(s: &str) -> Option<Literal> {
        Some(Literal::string(s))
    }

    /// NULL, 'null', and values with `/` and `=`: five values, five groups, however alike their
    /// paths look.
    const REGIONS: [Option<&str>; 8] =
        [None, Some("null"), Some("a/b"), Some("x=y"), Some("null"), None, Some("a%2Fb"), Some("a/b")];

    #[test]
    fn groups_by_value_not_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let m = table(dir.path(), &[(2, "region", Transform::Identity)]);
        let schema = m.current_schema().clone();
        let splitter =
            RecordBatchPartitionSplitter::try_new_with_computed_values(schema, m.default_partition_spec().clone())
                .unwrap();
        let first = rows(&m, (0..8).collect(), REGIONS.to_vec());
        let second = rows(&m, vec![8, 9], vec![None, Some("null")]);
        let groups = group_by_partition(&splitter, vec![first, second]).unwrap();
        let mut got: Vec<(Option<Literal>, usize)> = groups
            .iter()
            .map(|(k, parts)| (k.data()[0].clone(), parts.iter().map(|b| b.num_rows()).sum()))
            .collect();
        got.sort_by_key(|(v, _)| format!("{v:?}"));
        let mut want = vec![(None, 3), (string("null"), 3), (string("a/b"), 2), (string("x=y"), 1), (string("a%2Fb"), 1)];
        want.sort_by_key(|(v, _)| format!("{v:?}"));
        assert_eq!(got, want);
    }

    #[test]
    fn groups_by_every_field_of_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let m = table(dir.path(), &[(2, "region", Transform::Identity), (1, "id_bucket", Transform::Bucket(2))]);
        let splitter = RecordBatchPartitionSplitter::try_new_with_computed_values(
            m.current_schema().clone(),
            m.default_partition_spec().clone(),
        )
        .unwrap();
        let ids: Vec<i64> = (0..40).collect();
        let regions: Vec<Option<&str>> = ids.iter().map(|i| if i % 2 == 0 { None } else { Some("null") }).collect();
        let groups = group_by_partition(&splitter, vec![rows(&m, ids, regions)]).unwrap();
        // 2 regions x 2 buckets, each value pair once.
        let keys: std::collections::HashSet<Struct> = groups.iter().map(|(k, _)| k.data().clone()).collect();
        assert_eq!(groups.len(), 4, "groups: {keys:?}");
        assert_eq!(keys.len(), 4);
        assert_eq!(groups.iter().flat_map(|(_, p)| p).map(|b| b.num_rows()).sum::<usize>(), 40);
    }

    #[tokio::test]
    async fn nearly_unique_columns_are_written_without_a_dictionary() {
        let dir = tempfile::tempdir().unwrap();
        let m = table(dir.path(), &[]);
        let schema = m.current_schema().clone();
        let io = file_io();
        // id: all distinct; region: ten values.
        let regions: Vec<String> = (0..5000).map(|i| format!("region {}", i % 10)).collect();
        let batch = rows(&m, (0..5000).collect(), regions.iter().map(|r| Some(r.as_str())).collect());
        let files = write_data_files(&io, &m, &schema, vec![batch.clone()], 1 << 30).await.unwrap();
        assert_eq!(files.len(), 1);
        let bytes = io.new_input(files[0].file_path()).unwrap().read().await.unwrap();
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(bytes.clone()).unwrap();
        use parquet::file::reader::FileReader as _;
        let group = reader.metadata().row_group(0);
        let dictionary = |name: &str| {
            let c = group.columns().iter().find(|c| c.column_path().string() == name).unwrap();
            c.dictionary_page_offset().is_some()
        };
        assert!(!dictionary("id"), "a column of distinct values is written plain");
        assert!(dictionary("region"), "a column of repeating values keeps its dictionary");
        // And the rows read back as they went in.
        let back: Vec<RecordBatch> = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(bytes, 8192)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].column(0).as_ref(), batch.column(0).as_ref());
        assert_eq!(back[0].column(1).as_ref(), batch.column(1).as_ref());
    }

    #[tokio::test]
    async fn each_file_is_labelled_with_the_values_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let m = table(dir.path(), &[(2, "region", Transform::Identity)]);
        let schema = m.current_schema().clone();
        let io = file_io();
        let batch = rows(&m, (0..8).collect(), REGIONS.to_vec());
        let files = write_data_files(&io, &m, &schema, vec![batch], 1 << 20).await.unwrap();
        assert_eq!(files.len(), 5, "{:?}", files.iter().map(|f| f.file_path()).collect::<Vec<_>>());
        let data_dir = format!("file://{}/data/", dir.path().display());
        for f in &files {
            // The label and the rows agree: read the file back and compare.
            let bytes = io.new_input(f.file_path()).unwrap().read().await.unwrap();
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(bytes, 1024).unwrap();
            let mut values = std::collections::HashSet::new();
            for b in reader {
                let b = b.unwrap();
                let col = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
                for i in 0..col.len() {
                    values.insert(col.is_valid(i).then(|| col.value(i).to_owned()));
                }
            }
            let label = f.partition()[0].clone();
            let want = label.as_ref().map(|l| match l {
                Literal::Primitive(iceberg::spec::PrimitiveLiteral::String(s)) => s.clone(),
                other => panic!("unexpected label {other:?}"),
            });
            assert_eq!(values, std::collections::HashSet::from([want]), "file {}", f.file_path());
            // One directory level per partition field, whatever the value holds.
            let rest = f.file_path().strip_prefix(&data_dir).expect("file under the table's data directory");
            assert_eq!(rest.matches('/').count(), 1, "{rest}");
            assert!(!rest.contains(".."), "{rest}");
        }
        let paths: Vec<&str> = files.iter().map(|f| f.file_path()).collect();
        assert!(paths.iter().any(|p| p.contains("/region=a%2Fb/")), "{paths:?}");
        assert!(paths.iter().any(|p| p.contains("/region=a%252Fb/")), "{paths:?}");
        assert!(paths.iter().any(|p| p.contains("/region=x%3Dy/")), "{paths:?}");
    }

    #[test]
    fn url_encoding_matches_java() {
        assert_eq!(url_encode("a/b=c d+é.-*_"), "a%2Fb%3Dc+d%2B%C3%A9.-*_");
        assert_eq!(url_encode("../.."), "..%2F..");
    }
}
