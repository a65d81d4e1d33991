//! Terminal workspaces, terminal sessions and their asciicast recordings.
//!
//! A recording is stored as numbered chunks of asciicast v2 lines, each chunk
//! written in the transaction that also updates the session's byte count, so
//! that the record and the recording never disagree after a crash.

use linkops_reconcilers::terminal::{SessionEnd, TerminalSession, Workspace};
use redb::{ReadableDatabase, ReadableTable};

use super::audit::{self, Actor, AuditAction, Outcome};
use super::codec::{decode, encode};
use super::scan::SeqTable;
use super::schema::{TERMINAL_RECORDINGS, TERMINAL_SESSIONS, TERMINAL_WORKSPACES};
use super::{Result, Store, now_ms};

impl Store {
    pub fn put_workspace(&self, workspace: &Workspace) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(TERMINAL_WORKSPACES)?
            .insert(workspace.id.as_str(), encode(workspace).as_slice())?;
        tx.commit()?;
        Ok(())
    }

    pub fn workspace(&self, id: &str) -> Result<Option<Workspace>> {
        self.read_one(TERMINAL_WORKSPACES, "terminal_workspaces", id)
    }

    pub fn workspaces(&self) -> Result<Vec<Workspace>> {
        self.read_all(TERMINAL_WORKSPACES, "terminal_workspaces")
    }

    /// Removes a workspace; its sessions' records and recordings stay.
    pub fn delete_workspace(&self, id: &str) -> Result<bool> {
        let tx = self.db.begin_write()?;
        let removed = tx.open_table(TERMINAL_WORKSPACES)?.remove(id)?.is_some();
        tx.commit()?;
        Ok(removed)
    }

    /// Records a new session (its `id` is assigned) with the first part of
    /// its recording, and audits its opening, in one transaction.
    pub fn create_terminal_session(
        &self,
        session: &TerminalSession,
        recording: &[u8],
    ) -> Result<TerminalSession> {
        let tx = self.db.begin_write()?;
        let created = {
            let mut sessions = tx.open_table(TERMINAL_SESSIONS)?;
            let id = sessions.last()?.map_or(1, |(key, _)| key.value() + 1);
            let created = TerminalSession {
                id,
                recorded_bytes: recording.len() as u64,
                ..session.clone()
            };
            sessions.insert(id, encode(&created).as_slice())?;
            tx.open_table(TERMINAL_RECORDINGS)?
                .insert((id, 1), recording)?;
            created
        };
        audit::append(
            &tx,
            &Actor::user(&created.user),
            AuditAction::TerminalOpen,
            &created.machine_id,
            Outcome::Success,
            Some(describe(&created)),
        )?;
        tx.commit()?;
        Ok(created)
    }

    /// Appends a chunk of recording; with `end`, also closes the session and
    /// audits its close, in the same transaction. Returns the session as now recorded.
    pub fn record_terminal(
        &self,
        id: u64,
        chunk: &[u8],
        truncated: bool,
        end: Option<SessionEnd>,
    ) -> Result<Option<TerminalSession>> {
        let tx = self.db.begin_write()?;
        let updated = {
            let mut sessions = tx.open_table(TERMINAL_SESSIONS)?;
            let current = sessions
                .get(id)?
                .map(|v| decode::<TerminalSession>("terminal_sessions", id, v.value()));
            let Some(session) = current else {
                return Ok(None);
            };
            let mut session = session?;
            if !chunk.is_empty() {
                let mut recording = tx.open_table(TERMINAL_RECORDINGS)?;
                let next = recording
                    .range((id, 0)..=(id, u64::MAX))?
                    .next_back()
                    .transpose()?
                    .map_or(1, |(key, _)| key.value().1 + 1);
                recording.insert((id, next), chunk)?;
                session.recorded_bytes += chunk.len() as u64;
            }
            session.truncated |= truncated;
            if let Some(end) = end {
                let detail = format!(
                    "{}: {}",
                    describe(&session),
                    serde_json::to_string(&end).unwrap_or_default()
                );
                audit::append(
                    &tx,
                    &Actor::user(&session.user),
                    AuditAction::TerminalClose,
                    &session.machine_id,
                    Outcome::Success,
                    Some(detail),
                )?;
                session.end = Some(end);
                session.ended_at_ms = Some(now_ms());
            }
            sessions.insert(id, encode(&session).as_slice())?;
            session
        };
        tx.commit()?;
        Ok(Some(updated))
    }

    pub fn terminal_session(&self, id: u64) -> Result<Option<TerminalSession>> {
        let tx = self.db.begin_read()?;
        let sessions = tx.open_table(TERMINAL_SESSIONS)?;
        let value = sessions.get(id)?;
        value
            .map(|v| decode("terminal_sessions", id, v.value()))
            .transpose()
    }

    /// Sessions newest first, filtered by `keep`, at most `limit`.
    pub fn terminal_sessions(
        &self,
        limit: usize,
        keep: impl Fn(&TerminalSession) -> bool,
    ) -> Result<Vec<TerminalSession>> {
        self.newest(SeqTable::TerminalSessions, limit, keep)
    }

    /// Recording chunks after chunk number `after`, oldest first, stopping once
    /// about `max_bytes` are read: `(number, bytes)`.
    pub fn recording_chunks(
        &self,
        id: u64,
        after: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let tx = self.db.begin_read()?;
        let recording = tx.open_table(TERMINAL_RECORDINGS)?;
        let mut page = Vec::new();
        let mut bytes = 0;
        for entry in recording.range((id, after.saturating_add(1))..=(id, u64::MAX))? {
            let (key, value) = entry?;
            bytes += value.value().len();
            page.push((key.value().1, value.value().to_vec()));
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(page)
    }

    /// Marks sessions a previous process left open as interrupted; returns their ids.
    pub fn interrupt_open_terminal_sessions(&self) -> Result<Vec<u64>> {
        let tx = self.db.begin_write()?;
        let mut interrupted = Vec::new();
        {
            let mut sessions = tx.open_table(TERMINAL_SESSIONS)?;
            let open: Vec<TerminalSession> = sessions
                .range::<u64>(..)?
                .map(|entry| {
                    let (key, value) = entry?;
                    decode::<TerminalSession>("terminal_sessions", key.value(), value.value())
                })
                .filter(|session| !matches!(session, Ok(s) if s.end.is_some()))
                .collect::<Result<_>>()?;
            for mut session in open {
                session.end = Some(SessionEnd::Interrupted);
                session.ended_at_ms = Some(now_ms());
                sessions.insert(session.id, encode(&session).as_slice())?;
                interrupted.push(session.id);
            }
        }
        tx.commit()?;
        Ok(interrupted)
    }
}

/// A session as its audit entries name it.
fn describe(session: &TerminalSession) -> String {
    format!(
        "session {} (workspace {} pane {})",
        session.id, session.workspace_id, session.pane
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> TerminalSession {
        TerminalSession {
            id: 0,
            workspace_id: "w".into(),
            pane: 2,
            machine_id: "web1".into(),
            user: "ada".into(),
            cols: 80,
            rows: 24,
            started_at_ms: 1,
            ended_at_ms: None,
            end: None,
            input_recorded: false,
            recorded_bytes: 0,
            truncated: false,
        }
    }

    #[test]
    fn a_recording_reads_back_in_order_and_counts_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let created = store
            .create_terminal_session(&session(), b"header\n")
            .unwrap();
        assert_eq!(created.id, 1);
        store.record_terminal(1, b"one\n", false, None).unwrap();
        let ended = store
            .record_terminal(1, b"two\n", true, Some(SessionEnd::Idle))
            .unwrap()
            .unwrap();
        assert_eq!(ended.recorded_bytes, 15);
        assert!(ended.truncated && ended.ended_at_ms.is_some());
        let chunks = store.recording_chunks(1, 0, 1 << 20).unwrap();
        let text: Vec<u8> = chunks.iter().flat_map(|(_, c)| c.clone()).collect();
        assert_eq!(text, b"header\none\ntwo\n");
        // Paging resumes after the last chunk read.
        assert_eq!(store.recording_chunks(1, 2, 1 << 20).unwrap().len(), 1);
    }

    #[test]
    fn opening_and_closing_a_session_write_their_audit_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let created = store.create_terminal_session(&session(), b"h\n").unwrap();
        // A chunk without an end is no audited change.
        store
            .record_terminal(created.id, b"x\n", false, None)
            .unwrap();
        store
            .record_terminal(created.id, b"", false, Some(SessionEnd::Closed))
            .unwrap();
        let entries = store.audit_entries(0, 10).unwrap();
        let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["terminal.open", "terminal.close"]);
        assert_eq!(entries[0].actor, created.user);
        assert_eq!(entries[0].target, created.machine_id);
        let described = format!(
            "session 1 (workspace {} pane {})",
            created.workspace_id, created.pane
        );
        assert_eq!(entries[0].detail.as_deref(), Some(described.as_str()));
        assert_eq!(
            entries[1].detail.as_deref(),
            Some(format!("{described}: {{\"reason\":\"closed\"}}").as_str())
        );
    }

    #[test]
    fn sessions_left_open_are_interrupted_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store.create_terminal_session(&session(), b"h\n").unwrap();
        store.create_terminal_session(&session(), b"h\n").unwrap();
        store
            .record_terminal(2, b"", false, Some(SessionEnd::Closed))
            .unwrap();
        assert_eq!(store.interrupt_open_terminal_sessions().unwrap(), vec![1]);
        let first = store.terminal_session(1).unwrap().unwrap();
        assert_eq!(first.end, Some(SessionEnd::Interrupted));
        assert_eq!(
            store.terminal_session(2).unwrap().unwrap().end,
            Some(SessionEnd::Closed)
        );
    }
}
