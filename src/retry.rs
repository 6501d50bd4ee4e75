//! Retrying what fails transiently (a catalog, storage or broker outage): forever, with a capped
//! backoff, because giving up would lose data and the fence keeps a late commit safe.

use std::time::{Duration, Instant};

/// The longest wait between two attempts of a failing call. It is low so that the first commit
/// after an outage comes within seconds; each probe is one cheap catalog or storage call.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Backoff for transient failures: 100 ms doubling to [`MAX_BACKOFF`], forever. The first failure
/// of an episode is logged at WARN, the recovery at INFO.
pub(crate) struct Backoff {
    what: &'static str,
    delay: Duration,
    failing_since: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new(what: &'static str) -> Self {
        Backoff {
            what,
            delay: Duration::from_millis(100),
            failing_since: None,
        }
    }

    pub(crate) async fn wait(&mut self, error: &(dyn std::fmt::Display + Sync)) {
        if self.failing_since.is_none() {
            self.failing_since = Some(Instant::now());
            tracing::warn!(what = self.what, error = %error, "transient failure; retrying with backoff");
        } else {
            tracing::debug!(what = self.what, error = %error, "still failing");
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
    }

    pub(crate) fn recovered(&self) {
        if let Some(since) = self.failing_since {
            tracing::info!(what = self.what, seconds = since.elapsed().as_secs(), "recovered");
        }
    }
}

/// Awaits `$call` again while it fails transiently; returns a permanent error from the caller.
macro_rules! retrying {
    ($what:expr, $call:expr) => {{
        let mut backoff = $crate::retry::Backoff::new($what);
        loop {
            match $call.await {
                Ok(v) => {
                    backoff.recovered();
                    break v;
                }
                Err(e) if e.is_transient() => backoff.wait(&e).await,
                Err(e) => return Err(e.into()),
            }
        }
    }};
}
pub(crate) use retrying;

