//! Table maintenance: compaction and manifest merging, snapshot expiry, retention, orphan files.
//!
//! Every change goes through the commit engine like an append does (DESIGN.md §4): load, check,
//! validate against the exact base, build, conditional swap, and on conflict reload and do it
//! again. Compaction and retention validate that every file they replace or drop is still live in
//! the base (someone else may have compacted or deleted it meanwhile); files appended meanwhile are
//! simply carried over. The ledger lives in a table property, which every commit here carries
//! forward untouched (DESIGN.md §1).
//!
//! Manifests of other engines are read exactly and never skipped: a manifest floe cannot decode
//! stops the task with an error (DESIGN.md §8).

pub mod compact;
pub mod expire;
pub mod orphans;
pub mod retention;
pub mod rewrite;
pub mod schedule;

use std::collections::{HashMap, HashSet};

use iceberg::io::FileIO;
use iceberg::spec::{DataContentType, ManifestContentType, ManifestEntryRef, ManifestFile, Struct};

use crate::catalog::{CatalogError, LoadedTable};
use crate::commit::CommitError;
use crate::write::WriteError;

/// Snapshot summary key naming the maintenance task that made a snapshot.
pub const SUMMARY_TASK: &str = "floe.maintenance";

/// Why a maintenance task failed.
#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("table {table}: {what} {path}: {message}")]
    Io {
        table: String,
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("table {table}: {message}")]
    Invalid { table: String, message: String },
}

impl MaintainError {
    /// Whether running the task again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            MaintainError::Commit(e) => e.is_transient(),
            MaintainError::Catalog(e) => e.is_transient(),
            MaintainError::Write(e) => e.is_transient(),
            MaintainError::Io { .. } => true,
            MaintainError::Invalid { .. } => false,
        }
    }

    pub(crate) fn io(table: &str, what: &'static str, path: &str, e: impl std::fmt::Display) -> Self {
        MaintainError::Io {
            table: table.to_owned(),
            what,
            path: path.to_owned(),
            message: e.to_string(),
        }
    }

    pub(crate) fn invalid(table: &str, message: impl Into<String>) -> Self {
        MaintainError::Invalid {
            table: table.to_owned(),
            message: message.into(),
        }
    }
}

impl From<MaintainError> for CommitError {
    fn from(e: MaintainError) -> Self {
        match e {
            MaintainError::Commit(e) => e,
            MaintainError::Catalog(e) => CommitError::Catalog(e),
            MaintainError::Write(e) => CommitError::Io {
                table: String::new(),
                what: "data files",
                message: e.to_string(),
            },
            MaintainError::Io { table, what, path, message } => CommitError::Io {
                table,
                what,
                message: format!("{path}: {message}"),
            },
            MaintainError::Invalid { table, message } => CommitError::Invalid { table, message },
        }
    }
}

pub use crate::commit::ManifestCache;

/// One live file of a snapshot, with where it is listed.
#[derive(Clone)]
pub struct LiveFile {
    pub entry: ManifestEntryRef,
    pub spec_id: i32,
}

impl LiveFile {
    pub fn path(&self) -> &str {
        self.entry.file_path()
    }

    /// The partition this file belongs to, as a key comparable across files.
    pub fn partition_key(&self) -> String {
        partition_key(self.spec_id, self.entry.data_file().partition())
    }
}

/// A partition of one spec, as a comparable key.
pub fn partition_key(spec_id: i32, partition: &Struct) -> String {
    format!("{spec_id}:{partition:?}")
}

/// What the current snapshot of a table holds.
#[derive(Default)]
pub struct LiveFiles {
    /// Every manifest of the snapshot, in manifest-list order.
    pub manifests: Vec<ManifestFile>,
    /// Live data files by path.
    pub data: HashMap<String, LiveFile>,
    /// Partitions (see [`partition_key`]) that have live delete files.
    pub delete_partitions: HashSet<String>,
    /// A live delete file in an unpartitioned spec: it may apply to any data file.
    pub global_deletes: bool,
    pub delete_files: u64,
    pub position_deletes: u64,
    pub equality_deletes: u64,
}

impl LiveFiles {
    /// Reads every manifest of the table's current snapshot.
    pub async fn read(
        cache: &mut ManifestCache,
        io: &FileIO,
        table: &LoadedTable,
    ) -> Result<LiveFiles, MaintainError> {
        let m = &table.metadata;
        let name = table.name.to_string();
        let mut live = LiveFiles::default();
        let Some(snapshot) = m.current_snapshot() else {
            return Ok(live);
        };
        let list = cache.list(io, m, &name, snapshot).await?;
        for mf in list.iter() {
            let entries = cache.entries(io, &name, mf).await?;
            let unpartitioned = m
                .partition_spec_by_id(mf.partition_spec_id)
                .is_none_or(|s| s.is_unpartitioned());
            for e in entries.iter().filter(|e| e.is_alive()) {
                match (mf.content, e.content_type()) {
                    (ManifestContentType::Data, DataContentType::Data) => {
                        live.data.insert(
                            e.file_path().to_owned(),
                            LiveFile {
                                entry: e.clone(),
                                spec_id: mf.partition_spec_id,
                            },
                        );
                    }
                    (_, kind) => {
                        live.delete_files += 1;
                        match kind {
                            DataContentType::EqualityDeletes => live.equality_deletes += e.record_count(),
                            _ => live.position_deletes += e.record_count(),
                        }
                        if unpartitioned {
                            live.global_deletes = true;
                        }
                        live.delete_partitions
                            .insert(partition_key(mf.partition_spec_id, e.data_file().partition()));
                    }
                }
            }
        }
        live.manifests = list.as_ref().clone();
        Ok(live)
    }

    /// Whether delete files may apply to rows of this data file (rewriting it from its Parquet
    /// alone would then bring deleted rows back).
    pub fn has_deletes(&self, file: &LiveFile) -> bool {
        self.global_deletes || self.delete_partitions.contains(&file.partition_key())
    }
}

/// The local file system path of a `file://` (or Hadoop-style `file:/`) location; None for
/// other schemes.
pub fn local_path(location: &str) -> Option<std::path::PathBuf> {
    let rest = location
        .strip_prefix("file://")
        .or_else(|| location.strip_prefix("file:"))?;
    let rest = if rest.starts_with('/') { rest.to_owned() } else { format!("/{rest}") };
    Some(std::path::PathBuf::from(rest))
}

pub use crate::commit::refs;

/// Milliseconds since the epoch, now.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `n` as "1.2 MiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths() {
        assert_eq!(local_path("file:///a/b").unwrap(), std::path::PathBuf::from("/a/b"));
        assert_eq!(local_path("file:/a/b").unwrap(), std::path::PathBuf::from("/a/b"));
        assert!(local_path("s3://bucket/a").is_none());
    }

    #[test]
    fn bytes() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
