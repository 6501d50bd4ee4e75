//! The HTTP listener of `floe run` (`[http] listen`): Prometheus text at `/metrics`, `/health`
//! and `/ready` for orchestrators, and the status page at `/` (static files compiled into the
//! binary, reading `/status.json`). One listener serves every pipeline of the process: `/health`
//! and `/ready` judge them all, `?pipeline=NAME` judges one.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::telemetry::{self, Live};

const PAGE_HTML: &str = include_str!("page.html");
const PAGE_CSS: &str = include_str!("page.css");
const PAGE_JS: &str = include_str!("page.js");

/// Why the listener did not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("http.listen = {listen:?}: {message}")]
    Listen { listen: String, message: String },
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
}

/// The running listener; dropping it leaves the server running until the runtime ends.
pub struct HttpServer {
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

#[derive(Clone)]
struct AppState {
    /// Every pipeline of the process, in the configuration's order.
    lives: Arc<Vec<Arc<Live>>>,
    metrics: PrometheusHandle,
}

/// `?pipeline=NAME`.
#[derive(serde::Deserialize)]
struct Which {
    pipeline: Option<String>,
}

impl AppState {
    /// The pipelines a request is about: all, or the one named (Err: the 404's text, naming the
    /// known ones).
    fn select(&self, which: &Which) -> Result<Vec<Arc<Live>>, NotFound> {
        let Some(name) = &which.pipeline else { return Ok(self.lives.to_vec()) };
        match self.lives.iter().find(|l| &l.pipeline() == name) {
            Some(l) => Ok(vec![l.clone()]),
            None => {
                let names: Vec<String> = self.lives.iter().map(|l| format!("{:?}", l.pipeline())).collect();
                Err(NotFound(format!("no pipeline {name:?} in this process; its pipelines: {}\n", names.join(", "))))
            }
        }
    }
}

/// A request named a pipeline this process does not run.
struct NotFound(String);

impl IntoResponse for NotFound {
    fn into_response(self) -> Response {
        (StatusCode::NOT_FOUND, self.0).into_response()
    }
}

/// Installs the Prometheus recorder (process-wide: call once) and starts serving on `listen`
/// the live state of `lives` (every pipeline of the process).
pub async fn start(listen: &str, lives: Vec<Arc<Live>>) -> Result<HttpServer, HttpError> {
    let addr = crate::config::parse_listen(listen).map_err(|message| HttpError::Listen { listen: listen.to_owned(), message })?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| HttpError::Listen {
        listen: listen.to_owned(),
        message: if e.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                "cannot listen on {addr}: the address is in use (another floe process?); set `listen` under \
                 [http] to another port, or to \"127.0.0.1:0\" for any free port (the address is logged)"
            )
        } else {
            format!("cannot listen on {addr}: {e}; set `listen` under [http] to an address of this host")
        },
    })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let handle = install_recorder()?;
    let state = AppState { lives: Arc::new(lives), metrics: handle };
    let app = Router::new()
        .route("/", get(page))
        .route("/page.css", get(css))
        .route("/page.js", get(js))
        .route("/status.json", get(status_json))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(state);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "the HTTP listener stopped");
        }
    });
    tracing::info!(addr = %bound, "http listener started: metrics at http://{bound}/metrics, status page at http://{bound}/");
    Ok(HttpServer { addr: bound, stop, task })
}

fn install_recorder() -> Result<PrometheusHandle, HttpError> {
    use telemetry::names;
    let mut builder = PrometheusBuilder::new();
    for name in [names::COMMIT_SECONDS, names::FRESHNESS_SECONDS, names::MAINTENANCE_SECONDS] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), telemetry::SECONDS_BUCKETS)
            .map_err(|e| HttpError::Recorder(e.to_string()))?;
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| HttpError::Recorder(e.to_string()))?;
    telemetry::describe();
    Ok(handle)
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE_HTML).into_response()
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], PAGE_CSS).into_response()
}

async fn js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], PAGE_JS).into_response()
}

/// One pipeline: its object (the shape of a single-pipeline process); several: their objects
/// under `pipelines`, with the overall verdicts.
async fn status_json(State(s): State<AppState>, Query(which): Query<Which>) -> Response {
    match s.select(&which) {
        Ok(lives) if lives.len() == 1 => axum::Json(lives[0].snapshot()).into_response(),
        Ok(lives) => axum::Json(telemetry::snapshot_of(&lives)).into_response(),
        Err(not_found) => not_found.into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    s.metrics.run_upkeep();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render()).into_response()
}

async fn health(State(s): State<AppState>, Query(which): Query<Which>) -> Response {
    match s.select(&which) {
        Ok(lives) => verdict(telemetry::health_of(&lives)),
        Err(not_found) => not_found.into_response(),
    }
}

async fn ready(State(s): State<AppState>, Query(which): Query<Which>) -> Response {
    match s.select(&which) {
        Ok(lives) => verdict(telemetry::ready_of(&lives)),
        Err(not_found) => not_found.into_response(),
    }
}

fn verdict(r: Result<(), String>) -> Response {
    match r {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}
