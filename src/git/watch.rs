//! For a local-path source: sync when the repository changes on disk.

use std::path::PathBuf;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::sync::{GitSync, Trigger};

/// Quiet time after the last change before syncing: a commit touches many files.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Watches `path` recursively and asks `git` for a sync after each burst of changes.
pub fn spawn(path: PathBuf, git: GitSync, shutdown: CancellationToken) {
    let (events, mut changes) = mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // Full: a change is already pending, which covers this one.
            events.try_send(()).ok();
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "cannot watch the local repository; relying on the interval");
            return;
        }
    };
    if let Err(error) = watcher.watch(&path, RecursiveMode::Recursive) {
        tracing::warn!(%error, path = %path.display(), "cannot watch the local repository; relying on the interval");
        return;
    }
    tokio::spawn(async move {
        // Owned by the task: dropping it stops the watch.
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                change = changes.recv() => if change.is_none() { return },
            }
            // Wait for a quiet moment.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, changes.recv()).await {}
            git.request(Trigger::Watch);
        }
    });
}
