//! Progress of long commands (`maintain`, `publish-sample --count`, `dead-letters replay`): a bar
//! on a terminal, plain log lines otherwise.
//!
//! Where standard error is a terminal, an indicatif bar is drawn there. Where it is not (a pipe, a
//! file, a log shipper), one INFO event is logged at every tenth of the work and at the end, so
//! the output stays short and, with `--log-format json`, machine readable like every other line.

use std::sync::Mutex;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A bar on standard error (a terminal).
    Bar,
    /// Plain log lines at every tenth and at the end.
    Lines,
    /// Nothing (library callers, tests).
    Hidden,
}

impl Mode {
    /// A bar when standard error is a terminal, plain lines otherwise.
    pub fn detect() -> Mode {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) { Mode::Bar } else { Mode::Lines }
    }
}

/// The progress of one task: `done` of `total` units.
pub struct Progress {
    task: String,
    unit: &'static str,
    mode: Mode,
    bar: Option<ProgressBar>,
    state: Mutex<State>,
}

struct State {
    total: u64,
    done: u64,
    /// The next tenth (1..=10) that logs a line.
    next_tenth: u64,
    started: Instant,
    finished: bool,
}

impl Progress {
    pub fn new(mode: Mode, task: impl Into<String>, unit: &'static str, total: u64) -> Progress {
        let task = task.into();
        let bar = (mode == Mode::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
                .expect("a valid template")
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(format!("{task} ({unit})"));
            bar
        });
        Progress {
            task,
            unit,
            mode,
            bar,
            state: Mutex::new(State { total, done: 0, next_tenth: 1, started: Instant::now(), finished: false }),
        }
    }

    /// Shows nothing.
    pub fn hidden() -> Progress {
        Progress::new(Mode::Hidden, "", "", 0)
    }

    /// The work turned out to be this much (known only after planning, say).
    pub fn set_total(&self, total: u64) {
        let mut s = self.state.lock().expect("not poisoned");
        s.total = total;
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    /// Starts counting again from zero (the work was planned anew).
    pub fn restart(&self, total: u64) {
        let mut s = self.state.lock().expect("not poisoned");
        s.total = total;
        s.done = 0;
        s.next_tenth = 1;
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(0);
        }
    }

    pub fn inc(&self, n: u64) {
        let mut s = self.state.lock().expect("not poisoned");
        s.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
        if self.mode == Mode::Lines && s.total > 0 {
            // Several tenths may pass in one step: one line for the latest.
            let tenth = (s.done.min(s.total) * 10 / s.total).min(10);
            if tenth >= s.next_tenth && tenth < 10 {
                s.next_tenth = tenth + 1;
                self.line(&s);
            }
        }
    }

    /// The task is over: the bar is cleared, a last line says how much was done.
    pub fn finish(&self) {
        let mut s = self.state.lock().expect("not poisoned");
        if s.finished {
            return;
        }
        s.finished = true;
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if self.mode == Mode::Lines {
            self.line(&s);
        }
    }

    fn line(&self, s: &State) {
        let secs = s.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { s.done as f64 / secs } else { 0.0 };
        let percent = (s.done.min(s.total) * 100).checked_div(s.total).unwrap_or(100);
        tracing::info!(
            task = %self.task,
            done = s.done,
            total = s.total,
            percent,
            "{}: {}/{} {} ({percent}%, {rate:.0}/s)",
            self.task,
            s.done,
            s.total,
            self.unit
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // An error path that never called finish: do not leave a half-drawn bar behind.
        if let Some(bar) = &self.bar
            && !bar.is_finished()
        {
            bar.abandon();
        }
    }
}
