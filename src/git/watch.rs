//! For a local-path source: sync when the repository changes on disk.

use std::path::PathBuf;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::sync::{GitSync, Trigger};

/// Quiet time after the last change before syncing: a commit touches many files.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Whether an event can mean a new commit on a branch: a ref (loose or
/// packed) or HEAD written, renamed or removed. Reads — the daemon's own
/// fetch opens every file it reads — and worktree edits are not commits.
fn moves_a_ref(event: &notify::Event) -> bool {
    use notify::EventKind;
    if matches!(event.kind, EventKind::Access(_) | EventKind::Other) {
        return false;
    }
    event.paths.iter().any(|path| {
        let mut components = path.components().map(|c| c.as_os_str());
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        components.any(|c| c == "refs") || matches!(name, "packed-refs" | "HEAD")
    })
}

/// Watches `path` recursively and asks `git` for a sync after each burst of changes.
pub fn spawn(path: PathBuf, git: GitSync, shutdown: CancellationToken) {
    let (events, mut changes) = mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| moves_a_ref(&event)) {
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

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, CreateKind, EventKind, ModifyKind, RenameMode};

    use super::*;

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn only_writes_to_refs_count_as_commits() {
        let commit = [
            event(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/srv/config/.git/refs/heads/main",
            ),
            event(
                EventKind::Create(CreateKind::File),
                "/srv/config/.git/refs/heads/main.lock",
            ),
            event(
                EventKind::Modify(ModifyKind::Any),
                "/srv/config/.git/packed-refs",
            ),
            event(EventKind::Modify(ModifyKind::Any), "/srv/config/.git/HEAD"),
        ];
        assert!(commit.iter().all(moves_a_ref));
        let reads_and_edits = [
            // What the daemon's own fetch causes: it opens and reads.
            event(
                EventKind::Access(AccessKind::Open(notify::event::AccessMode::Read)),
                "/srv/config/.git/refs/heads/main",
            ),
            event(
                EventKind::Access(AccessKind::Close(notify::event::AccessMode::Read)),
                "/srv/config/.git/objects/pack/pack-1.pack",
            ),
            event(EventKind::Modify(ModifyKind::Any), "/srv/config/links.yaml"),
            event(
                EventKind::Create(CreateKind::File),
                "/srv/config/.git/objects/ab/cdef",
            ),
        ];
        assert!(!reads_and_edits.iter().any(moves_a_ref));
    }
}
