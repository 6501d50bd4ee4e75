//! floe: stream JSON records from Kafka into Apache Iceberg tables, exactly once.
//!
//! Modules follow the data: `kafka` (source) -> `decode` (JSON to Arrow, as the table's schema
//! says) -> `catalog`/`table` (where it lands). The binary in
//! `main.rs` only parses the command line and calls in here.

pub mod alter;
pub mod aws;
mod blocking;
pub mod catalog;
pub mod checks;
pub mod commit;
pub(crate) mod committer;
pub mod config;
pub mod ddl;
pub mod deadletter;
pub mod evolve;
pub mod http;
pub mod decode;
pub mod kafka;
pub mod ledger;
pub mod loader;
pub mod maintain;
pub mod pipelines;
pub mod progress;
#[cfg(feature = "query")]
pub mod query;
pub mod replay;
pub(crate) mod retry;
pub mod run;
pub mod sample;
pub mod secrets;
pub mod source;
pub mod status;
pub mod storage;
pub mod table;
pub mod telemetry;
pub mod write;
