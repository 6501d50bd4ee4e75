//! CPU-bound work (decoding a run of records, encoding Parquet) on the calling thread, without
//! holding up the async tasks that share its runtime worker.

/// Whether [`run`] can hand the worker's other tasks to another thread: only on a multi-threaded
/// runtime (tests may run on a current-thread one).
pub(crate) fn can_block_in_place() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Runs `f` here, inside `block_in_place` where the runtime allows it.
pub(crate) fn run<R>(f: impl FnOnce() -> R) -> R {
    if can_block_in_place() { tokio::task::block_in_place(f) } else { f() }
}
