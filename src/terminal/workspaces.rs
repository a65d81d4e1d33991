//! Workspaces kept: created, given machines per pane, deleted — each change
//! recorded in the store and carried out on the sessions this replica holds;
//! and their sessions' recordings read back.

use bytes::Bytes;
use futures::Stream;
use linkops_reconcilers::terminal::{AssignError, Layout, SessionEnd, TerminalSession, Workspace};

use super::Terminals;
use super::protocol::SocketEnd;
use crate::store::{self, Actor, AuditAction, Outcome, now_ms};

/// Recording read from the store per page while streaming a `.cast`.
const CAST_PAGE: usize = 256 << 10;

/// Why panes were not assigned.
#[derive(Debug, thiserror::Error)]
pub enum AssignFailed {
    #[error(transparent)]
    Panes(#[from] AssignError),
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl Terminals {
    /// A new workspace of `owner`, its panes empty; named after its layout
    /// when no `name` is given.
    pub async fn create(
        &self,
        owner: &str,
        layout: Layout,
        name: Option<String>,
    ) -> Result<Workspace, store::Error> {
        let id = uuid::Uuid::new_v4().to_string();
        let name = name.unwrap_or_else(|| format!("{} workspace", layout.name()));
        let workspace = Workspace::new(id, name, owner.to_owned(), layout, now_ms());
        (self.inner.store)
            .run(move |store| store.put_workspace(&workspace).map(|()| workspace))
            .await
    }

    /// Assigns machines to `workspace`'s panes (and changes its layout, if
    /// given); the sessions of panes that lose their machine close.
    pub async fn assign(
        &self,
        workspace: &Workspace,
        layout: Option<Layout>,
        panes: Option<Vec<Option<String>>>,
    ) -> Result<Workspace, AssignFailed> {
        let (updated, closed) = workspace.assign(layout, panes, now_ms())?;
        let updated = (self.inner.store)
            .run(move |store| store.put_workspace(&updated).map(|()| updated))
            .await?;
        self.close(&workspace.id, &closed).await;
        Ok(updated)
    }

    /// Deletes workspace `id`: its sessions and socket close first, so that
    /// none outlives its record; its recordings stay.
    pub async fn delete(&self, id: &str) -> Result<(), store::Error> {
        self.end_workspace(id, SessionEnd::Closed, SocketEnd::WorkspaceDeleted)
            .await;
        let deleted = id.to_owned();
        (self.inner.store)
            .run(move |store| store.delete_workspace(&deleted))
            .await?;
        Ok(())
    }

    /// The live replica other than this one that holds workspace `id`, if
    /// one does; with `take`, this replica holds it from now on when none
    /// does (the one that held it left, or it never was live).
    pub async fn holder(
        &self,
        id: &str,
        take: bool,
    ) -> Result<Option<store::Member>, store::Error> {
        let (id, replica) = (id.to_owned(), self.inner.replica.clone());
        (self.inner.store)
            .run(move |store| store.workspace_holder(&id, &replica, take))
            .await
    }

    /// The asciicast v2 file of `session`, streamed from the store a page at
    /// a time; its reading is audited as done `by` before the first byte.
    pub async fn cast(
        &self,
        session: &TerminalSession,
        by: &Actor,
    ) -> Result<impl Stream<Item = Result<Bytes, store::Error>> + use<>, store::Error> {
        let (by, machine, id) = (by.clone(), session.machine_id.clone(), session.id);
        (self.inner.store)
            .run(move |store| {
                let detail = Some(format!("session {id}"));
                let read = AuditAction::TerminalRecordingRead;
                store.audit(&by, read, &machine, Outcome::Success, detail)
            })
            .await?;
        let store = self.inner.store.clone();
        Ok(futures::stream::unfold(Some(0u64), move |after| {
            let store = store.clone();
            async move {
                let after = after?;
                let page = store.run(move |store| store.recording_chunks(id, after, CAST_PAGE));
                match page.await {
                    Ok(page) if page.is_empty() => None,
                    Ok(page) => {
                        let last = page.last().map(|(seq, _)| *seq);
                        let bytes: Vec<u8> =
                            page.into_iter().flat_map(|(_, chunk)| chunk).collect();
                        Some((Ok(Bytes::from(bytes)), last))
                    }
                    Err(error) => Some((Err(error), None)),
                }
            }
        }))
    }
}
