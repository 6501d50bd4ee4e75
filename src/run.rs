//! `floe run` with every pipeline of a configuration: one [`Loader`] per pipeline, each with its
//! own consumer, ledger and fence, running concurrently in one process and stopping together on
//! the shutdown signal.
//!
//! A pipeline's transient trouble (its catalog down) is retried inside its own loader and never
//! reaches the others. A permanent error ends that pipeline only (`on_pipeline_failure =
//! "continue"`, the default): it is logged at ERROR, marked failed in its live state (so `/ready`
//! and `/status.json` say so) and in the data directory (so `floe status` says so), and the
//! process exits non-zero when it ends. With `"stop"`, the first failure stops every pipeline,
//! each committing what it buffered.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::Instrument as _;

use crate::config::{Config, OnPipelineFailure};
use crate::loader::{LoadError, Loader, RunReport};
use crate::telemetry::Live;

/// A pipeline that could not be prepared or that stopped on an error.
#[derive(Debug)]
pub struct PipelineError {
    pub pipeline: String,
    pub error: LoadError,
}

/// Prepares every pipeline of `config` (tables, reshaping, checks, the broker) before any starts.
/// The first failure is returned: nothing runs with a configuration that is partly wrong.
pub async fn prepare(config: &Config) -> Result<Vec<Loader>, PipelineError> {
    let runs = config.runs();
    let names: Vec<String> = runs.iter().map(|c| c.pipeline_name().unwrap_or_default().to_owned()).collect();
    let prepared = futures::future::join_all(runs.into_iter().map(Loader::prepare)).await;
    let mut loaders = Vec::new();
    for (pipeline, p) in names.into_iter().zip(prepared) {
        match p {
            Ok(l) => loaders.push(l),
            Err(error) => return Err(PipelineError { pipeline, error }),
        }
    }
    Ok(loaders)
}

/// How the pipelines ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Pipelines that stopped cleanly (on the shutdown signal, or stopped by another's failure).
    pub finished: Vec<(String, RunReport)>,
    /// Pipelines that stopped on an error, in the order they failed.
    pub failed: Vec<PipelineError>,
}

/// Runs `loaders` until `shutdown` resolves (each commits what it buffered, then returns) or, as
/// `policy` says, until one fails. `data_dir` holds the failure marks `floe status` reads.
pub async fn run(
    loaders: Vec<Loader>,
    policy: OnPipelineFailure,
    data_dir: &Path,
    shutdown: impl Future<Output = ()>,
) -> Outcome {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let several = loaders.len() > 1;
    let mut tasks = tokio::task::JoinSet::new();
    for loader in loaders {
        let name = loader.pipeline().to_owned();
        let live = loader.live();
        clear_failure(data_dir, &name);
        let mut stopped = stopped.clone();
        // With several pipelines every log line of one says which (`pipeline{name=...}:`).
        let span = if several { tracing::info_span!("pipeline", name = %name) } else { tracing::Span::none() };
        tasks.spawn(
            async move {
                let signal = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                (name, live, loader.run(signal).await)
            }
            .instrument(span),
        );
    }
    let mut shutdown = std::pin::pin!(shutdown);
    let mut shutting_down = false;
    let mut outcome = Outcome::default();
    loop {
        tokio::select! {
            () = &mut shutdown, if !shutting_down => {
                shutting_down = true;
                let _ = stop.send(true);
            }
            next = tasks.join_next() => {
                let Some(joined) = next else { break };
                let (name, live, result): (String, Arc<Live>, Result<RunReport, LoadError>) = match joined {
                    Ok(r) => r,
                    Err(e) => {
                        // A panic inside a loader: the task's name is lost with it.
                        tracing::error!(error = %e, "a pipeline's task ended abnormally; stopping every pipeline");
                        let _ = stop.send(true);
                        outcome.failed.push(PipelineError {
                            pipeline: "?".into(),
                            error: LoadError::Config(format!("a pipeline's task ended abnormally: {e}")),
                        });
                        continue;
                    }
                };
                match result {
                    Ok(report) => outcome.finished.push((name, report)),
                    Err(error) => {
                        live.fail(&error.to_string());
                        mark_failure(data_dir, &name, &error.to_string());
                        if several {
                            match policy {
                                OnPipelineFailure::Continue => tracing::error!(
                                    pipeline = %name,
                                    error = %error,
                                    "pipeline {name:?} stopped on an error; the other pipelines go on \
                                     (on_pipeline_failure = \"continue\"); fix it and restart the process"
                                ),
                                OnPipelineFailure::Stop => tracing::error!(
                                    pipeline = %name,
                                    error = %error,
                                    "pipeline {name:?} stopped on an error; stopping every pipeline \
                                     (on_pipeline_failure = \"stop\")"
                                ),
                            }
                        }
                        if policy == OnPipelineFailure::Stop {
                            let _ = stop.send(true);
                        }
                        outcome.failed.push(PipelineError { pipeline: name, error });
                    }
                }
            }
        }
    }
    outcome
}

/// The file that says a pipeline stopped on an error (removed when it starts again).
pub fn failure_path(data_dir: &Path, pipeline: &str) -> PathBuf {
    data_dir.join("failed").join(format!("{pipeline}.json"))
}

/// A pipeline's recorded failure: (when, in ms since the epoch; the error).
pub fn read_failure(data_dir: &Path, pipeline: &str) -> Option<(i64, String)> {
    let text = std::fs::read_to_string(failure_path(data_dir, pipeline)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((v.get("at_ms")?.as_i64()?, v.get("error")?.as_str()?.to_owned()))
}

fn mark_failure(data_dir: &Path, pipeline: &str, error: &str) {
    let path = failure_path(data_dir, pipeline);
    let body = serde_json::json!({ "pipeline": pipeline, "at_ms": crate::telemetry::now_ms(), "error": error });
    let written = path
        .parent()
        .map(std::fs::create_dir_all)
        .unwrap_or(Ok(()))
        .and_then(|()| std::fs::write(&path, body.to_string()));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot record the pipeline's failure for `floe status`");
    }
}

fn clear_failure(data_dir: &Path, pipeline: &str) {
    let path = failure_path(data_dir, pipeline);
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::info!(pipeline, "the failure recorded at the last run is cleared: the pipeline starts again"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove the pipeline's recorded failure"),
    }
}
