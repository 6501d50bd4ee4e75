//! Shared helpers for integration tests. The services are started once per test run by
//! `scripts/test.sh`, which exports their addresses.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::process::{Command, Output};

/// The Kafka bootstrap address of the broker started for this test run.
pub fn kafka() -> String {
    std::env::var("FLOE_TEST_KAFKA").expect(
        "FLOE_TEST_KAFKA is not set: run the tests with ./scripts/test.sh, which starts a local Kafka",
    )
}

/// The PostgreSQL URI of the server started for this test run.
pub fn postgres() -> String {
    std::env::var("FLOE_TEST_POSTGRES").expect(
        "FLOE_TEST_POSTGRES is not set: run the tests with ./scripts/test.sh, which starts PostgreSQL",
    )
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Runs the floe binary with the given arguments.
pub fn floe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_floe"))
        .args(args)
        .env_remove("FLOE_CONFIG")
        .output()
        .expect("the floe binary runs")
}

/// Runs floe and insists that it succeeds; returns stdout.
pub fn floe_ok(args: &[&str]) -> String {
    let out = floe(args);
    assert!(
        out.status.success(),
        "floe {args:?} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Writes a config file into `dir` and returns its path.
pub fn write_config(dir: &std::path::Path, text: &str) -> PathBuf {
    let path = dir.join("floe.toml");
    std::fs::write(&path, text).expect("config written");
    path
}

/// Every file under `dir`, recursively, sorted.
pub fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.expect("a directory entry").path();
            if p.is_dir() {
                stack.push(p)
            } else {
                out.push(p)
            }
        }
    }
    out.sort();
    out
}
