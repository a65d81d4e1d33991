//! The one way async code runs blocking work: on tokio's blocking pool,
//! through [`run`] (or, for the store, `Store::run`). The store's calls block
//! — a redb commit waits for the disk, a PostgreSQL statement for the
//! network, up to its bound — and so do Git, password hashes and key files;
//! on a runtime worker they would stall every task sharing that thread.
//!
//! Debug builds (the tests) hold the rule for the store: a store call made
//! on the runtime but not through here panics, naming the rule
//! ([`check_may_block`]). Code outside the runtime (the CLI, plain threads)
//! calls the store directly.

use std::cell::Cell;

use tokio::task::JoinHandle;

thread_local! {
    /// Whether this thread runs work handed to [`run`].
    static MAY_BLOCK: Cell<bool> = const { Cell::new(false) };
}

/// Runs `work` on the blocking pool, where it may block (and call the
/// store), in the caller's span and under its subscriber: what it logs is
/// the reconcile's or the operation's that asked for it.
pub fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let span = tracing::Span::current();
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    tokio::task::spawn_blocking(move || {
        // The pool's threads run other work later: unmarked again however `work` ends.
        struct Unmark;
        impl Drop for Unmark {
            fn drop(&mut self) {
                MAY_BLOCK.set(false);
            }
        }
        MAY_BLOCK.set(true);
        let _unmark = Unmark;
        tracing::dispatcher::with_default(&dispatch, || span.in_scope(work))
    })
}

/// Refuses (in debug builds) a blocking `what` on the async runtime outside
/// [`run`]: the store calls it before every transaction.
#[track_caller]
pub fn check_may_block(what: &str) {
    if cfg!(debug_assertions) && tokio::runtime::Handle::try_current().is_ok() && !MAY_BLOCK.get() {
        panic!(
            "{what} on the async runtime: async code reaches the store through Store::run or blocking::run"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blocking_work_is_refused_on_the_runtime_and_let_through_on_the_pool() {
        let inline = std::panic::catch_unwind(|| check_may_block("a store read"));
        let refused = *inline.unwrap_err().downcast::<String>().unwrap();
        assert!(refused.contains("Store::run"), "{refused}");
        run(|| check_may_block("a store read")).await.unwrap();
        // The pool's thread is unmarked once its work ended, panicked or not.
        let panicked = run(|| panic!("work that fails")).await;
        assert!(panicked.is_err());
        let plain = tokio::task::spawn_blocking(|| {
            std::panic::catch_unwind(|| check_may_block("a store read")).is_err()
        });
        assert!(plain.await.unwrap(), "a pool thread outside run is refused");
        // Outside the runtime: the CLI's calls.
        std::thread::spawn(|| check_may_block("a store read"))
            .join()
            .unwrap();
    }
}
