//! Terminal workspaces: a layout of panes, each showing a shell on one machine,
//! and the terminal sessions (recordings) those panes open.

use serde::{Deserialize, Serialize};

use crate::certificate::CertificateLogin;

/// How a workspace arranges its panes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Single,
    /// Two columns.
    Grid2x1,
    /// Three columns.
    Grid1x3,
    Grid2x2,
}

impl Layout {
    /// The name the API and the stored records use.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Single => "single",
            Layout::Grid2x1 => "grid2x1",
            Layout::Grid1x3 => "grid1x3",
            Layout::Grid2x2 => "grid2x2",
        }
    }

    pub fn panes(self) -> usize {
        match self {
            Layout::Single => 1,
            Layout::Grid2x1 => 2,
            Layout::Grid1x3 => 3,
            Layout::Grid2x2 => 4,
        }
    }
}

/// A workspace as stored. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    pub id: String,
    pub name: String,
    /// The user who created it; only they (and admins) may use it.
    pub owner: String,
    pub layout: Layout,
    /// The machine shown in each pane, by pane index; `len() == layout.panes()`.
    pub panes: Vec<Option<String>>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error("layout {} has {expected} panes, but {given} were given", .layout.name())]
    PaneCount {
        layout: Layout,
        expected: usize,
        given: usize,
    },
}

impl Workspace {
    pub fn new(id: String, name: String, owner: String, layout: Layout, now_ms: i64) -> Workspace {
        Workspace {
            id,
            name,
            owner,
            layout,
            panes: vec![None; layout.panes()],
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        }
    }

    /// Assigns machines to panes, optionally under a new layout. Returns the
    /// new workspace and the panes whose sessions must close: those the layout
    /// dropped and those that now show another machine (or none).
    ///
    /// Without `panes`, the assignments are kept, cut or padded to the layout.
    pub fn assign(
        &self,
        layout: Option<Layout>,
        panes: Option<Vec<Option<String>>>,
        now_ms: i64,
    ) -> Result<(Workspace, Vec<usize>), AssignError> {
        let layout = layout.unwrap_or(self.layout);
        let panes = match panes {
            Some(panes) if panes.len() != layout.panes() => {
                return Err(AssignError::PaneCount {
                    layout,
                    expected: layout.panes(),
                    given: panes.len(),
                });
            }
            Some(panes) => panes,
            None => {
                let mut kept = self.panes.clone();
                kept.resize(layout.panes(), None);
                kept
            }
        };
        let closed = self
            .panes
            .iter()
            .enumerate()
            .filter(|(index, machine)| panes.get(*index) != Some(*machine))
            .map(|(index, _)| index)
            .collect();
        let updated = Workspace {
            layout,
            panes,
            updated_at_ms: now_ms,
            ..self.clone()
        };
        Ok((updated, closed))
    }

    /// Whether `user` may open, change or delete it.
    pub fn usable_by(&self, user: &str, is_admin: bool) -> bool {
        is_admin || self.owner == user
    }
}

/// How a terminal session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum SessionEnd {
    /// The shell exited; its status as the server reported it.
    Exited {
        exit_code: Option<u32>,
        signal: Option<String>,
    },
    /// A user closed the pane, changed its machine or deleted the workspace.
    Closed,
    /// The workspace's owner was deleted or lost the operator role.
    Revoked,
    /// Nothing was typed or shown for the idle timeout.
    Idle,
    /// No client reattached within the grace period after the socket dropped.
    Abandoned,
    /// The SSH connection failed.
    Lost { error: String },
    /// The daemon stopped while it was open (recorded at shutdown or at the next start).
    Interrupted,
}

/// A terminal session as recorded: who opened a shell where, and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TerminalSession {
    pub id: u64,
    pub workspace_id: String,
    pub pane: usize,
    pub machine_id: String,
    pub user: String,
    pub cols: u16,
    pub rows: u16,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub end: Option<SessionEnd>,
    /// Whether keystrokes are in the recording (off by default: they hold passwords).
    pub input_recorded: bool,
    /// Bytes of asciicast in the store.
    pub recorded_bytes: u64,
    /// The recording stopped at the configured cap; the session went on.
    pub truncated: bool,
    /// The certificate its login presented (none with a static key).
    #[serde(default)]
    pub certificate: Option<CertificateLogin>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace(layout: Layout, panes: &[Option<&str>]) -> Workspace {
        let mut workspace = Workspace::new("w".into(), "ops".into(), "ada".into(), layout, 0);
        workspace.panes = panes.iter().map(|p| p.map(str::to_owned)).collect();
        workspace
    }

    fn some(machines: &[Option<&str>]) -> Vec<Option<String>> {
        machines.iter().map(|m| m.map(str::to_owned)).collect()
    }

    #[test]
    fn layouts_have_one_to_four_panes() {
        let counts: Vec<usize> = [
            Layout::Single,
            Layout::Grid2x1,
            Layout::Grid1x3,
            Layout::Grid2x2,
        ]
        .iter()
        .map(|l| l.panes())
        .collect();
        assert_eq!(counts, [1, 2, 3, 4]);
        let new = Workspace::new("w".into(), "n".into(), "ada".into(), Layout::Grid1x3, 5);
        assert_eq!(new.panes, vec![None, None, None]);
    }

    #[test]
    fn reassigning_closes_only_panes_whose_machine_changed() {
        let current = workspace(Layout::Grid2x2, &[Some("a"), Some("b"), Some("c"), None]);
        let (updated, closed) = current
            .assign(
                None,
                Some(some(&[Some("a"), Some("x"), None, Some("d")])),
                9,
            )
            .unwrap();
        assert_eq!(closed, vec![1, 2, 3]);
        assert_eq!(
            updated.panes,
            some(&[Some("a"), Some("x"), None, Some("d")])
        );
        assert_eq!(updated.updated_at_ms, 9);
    }

    #[test]
    fn a_smaller_layout_drops_the_extra_panes_and_closes_them() {
        let current = workspace(
            Layout::Grid2x2,
            &[Some("a"), Some("b"), Some("c"), Some("d")],
        );
        let (updated, closed) = current.assign(Some(Layout::Grid2x1), None, 1).unwrap();
        assert_eq!(updated.layout, Layout::Grid2x1);
        assert_eq!(updated.panes, some(&[Some("a"), Some("b")]));
        assert_eq!(closed, vec![2, 3]);
    }

    #[test]
    fn a_larger_layout_keeps_sessions_and_adds_empty_panes() {
        let current = workspace(Layout::Single, &[Some("a")]);
        let (updated, closed) = current.assign(Some(Layout::Grid1x3), None, 1).unwrap();
        assert_eq!(updated.panes, some(&[Some("a"), None, None]));
        assert!(closed.is_empty());
    }

    #[test]
    fn a_pane_list_that_does_not_fit_the_layout_is_refused() {
        let current = workspace(Layout::Single, &[None]);
        let error = current
            .assign(Some(Layout::Grid2x2), Some(some(&[Some("a")])), 1)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "layout grid2x2 has 4 panes, but 1 were given"
        );
    }

    #[test]
    fn only_the_owner_and_admins_may_use_a_workspace() {
        let current = workspace(Layout::Single, &[None]);
        assert!(current.usable_by("ada", false));
        assert!(!current.usable_by("bob", false));
        assert!(current.usable_by("bob", true));
    }
}
