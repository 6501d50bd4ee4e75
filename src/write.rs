//! Parquet data files: decoded Arrow batches split by the table's partition spec and written
//! through the iceberg crate's writers, with compression from the table's write properties and
//! file names that can never collide (the crate's default name counter restarts per instance).

use std::collections::BTreeMap;

use arrow_array::RecordBatch;
use iceberg::arrow::RecordBatchPartitionSplitter;
use iceberg::io::FileIO;
use iceberg::spec::{DataFile, DataFileFormat, PartitionKey, TableMetadata};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// Table property naming the Parquet codec.
pub const PROP_CODEC: &str = "write.parquet.compression-codec";
/// Table property naming the codec level.
pub const PROP_LEVEL: &str = "write.parquet.compression-level";

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

/// Writes batches as Parquet data files, one or more per table partition, rolling over near
/// `target_file_size`. `schema` is the schema the rows were read with: after a schema change it may
/// be older than the table's current one, which Iceberg allows (readers project by field id).
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
    let location = metadata.location().to_owned();
    // Data that does not fit the table will not fit on a retry either; storage trouble may pass.
    let io_err = |e: iceberg::Error| match e.kind() {
        iceberg::ErrorKind::DataInvalid | iceberg::ErrorKind::FeatureUnsupported => WriteError::Invalid {
            location: location.clone(),
            message: e.to_string(),
        },
        _ => WriteError::Io {
            location: location.clone(),
            message: e.to_string(),
        },
    };
    let schema = schema.clone();
    let spec = metadata.default_partition_spec().clone();
    let parquet = ParquetWriterBuilder::new(writer_properties(metadata)?, schema.clone());
    let names = DefaultFileNameGenerator::new(
        uuid::Uuid::now_v7().to_string(),
        None,
        DataFileFormat::Parquet,
    );
    let locations = DefaultLocationGenerator::new(metadata).map_err(io_err)?;
    let rolling = RollingFileWriterBuilder::new(
        parquet,
        target_file_size as usize,
        file_io.clone(),
        locations,
        names,
    );
    let builder = DataFileWriterBuilder::new(rolling);

    // Group rows by partition (the path is a stable key for a partition value).
    let mut groups: BTreeMap<String, (Option<PartitionKey>, Vec<RecordBatch>)> = BTreeMap::new();
    if spec.is_unpartitioned() {
        groups.insert(String::new(), (None, batches));
    } else {
        let splitter = RecordBatchPartitionSplitter::try_new_with_computed_values(schema.clone(), spec.clone())
            .map_err(io_err)?;
        for batch in batches {
            if batch.num_rows() == 0 {
                continue;
            }
            for (key, part) in splitter.split(&batch).map_err(io_err)? {
                let entry = groups
                    .entry(key.to_path())
                    .or_insert_with(|| (Some(key.clone()), Vec::new()));
                entry.1.push(part);
            }
        }
    }

    let mut files = Vec::new();
    for (_, (key, parts)) in groups {
        if parts.iter().all(|b| b.num_rows() == 0) {
            continue;
        }
        let mut writer = builder.build(key).await.map_err(io_err)?;
        for part in parts {
            if part.num_rows() > 0 {
                writer.write(part).await.map_err(io_err)?;
            }
        }
        files.extend(writer.close().await.map_err(io_err)?);
    }
    Ok(files)
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
