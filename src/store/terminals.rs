//! Terminal workspaces, terminal sessions and their asciicast recordings.
//!
//! A recording is stored as numbered chunks of asciicast v2 lines, each chunk
//! written in the transaction that also updates the session's byte count, so
//! that the record and the recording never disagree after a crash.

use linkops_reconcilers::terminal::{SessionEnd, TerminalSession, Workspace};

use super::audit::{self, Actor, AuditAction};
use super::cluster::Member;
use super::engine::{Read, Write, WriteTx};
use super::records::Outcome;
use super::scan::SeqTable;
use super::schema::{
    TERMINAL_HOLDERS, TERMINAL_RECORDINGS, TERMINAL_SESSIONS, TERMINAL_SESSIONS_OPEN,
    TERMINAL_WORKSPACES,
};
use super::{Result, Store, now_ms};

impl Store {
    pub fn put_workspace(&self, workspace: &Workspace) -> Result<()> {
        let mut tx = self.write()?;
        tx.insert(TERMINAL_WORKSPACES, &workspace.id, workspace)?;
        tx.commit()
    }

    pub fn workspace(&self, id: &str) -> Result<Option<Workspace>> {
        self.read_one(TERMINAL_WORKSPACES, id)
    }

    pub fn workspaces(&self) -> Result<Vec<Workspace>> {
        self.read_all(TERMINAL_WORKSPACES)
    }

    /// Removes a workspace (and who held it); its sessions' records and recordings stay.
    pub fn delete_workspace(&self, id: &str) -> Result<bool> {
        let mut tx = self.write()?;
        let removed = tx.delete(TERMINAL_WORKSPACES, id)?;
        tx.delete(TERMINAL_HOLDERS, id)?;
        tx.commit()?;
        Ok(removed)
    }

    /// The live member other than `replica` that holds `workspace`'s live side,
    /// if one does; with `take`, `replica` holds it from now on when none does
    /// (the one that held it left, or it never was live). Nobody else holds
    /// anything on an unshared store.
    pub fn workspace_holder(
        &self,
        workspace: &str,
        replica: &str,
        take: bool,
    ) -> Result<Option<Member>> {
        if !self.is_shared() {
            return Ok(None);
        }
        let held_by = |holder: Option<String>| -> Result<Option<Member>> {
            let Some(holder) = holder.filter(|holder| holder != replica) else {
                return Ok(None);
            };
            Ok(self
                .live_members()?
                .into_iter()
                .find(|member| member.replica == holder))
        };
        let holder = self.read_one(TERMINAL_HOLDERS, workspace)?;
        let here = holder.as_deref() == Some(replica);
        let other = held_by(holder)?;
        if !take || here || other.is_some() {
            return Ok(other);
        }
        // Under the write lock: two replicas taking one workspace at once
        // see each other, and only the first holds it.
        let mut tx = self.write()?;
        let other = held_by(tx.get(TERMINAL_HOLDERS, workspace)?)?;
        if other.is_none() && tx.get(TERMINAL_WORKSPACES, workspace)?.is_some() {
            tx.insert(TERMINAL_HOLDERS, workspace, &replica.to_owned())?;
        }
        tx.commit()?;
        Ok(other)
    }

    /// Every workspace whose live side a live member other than `replica` holds, with that member.
    pub fn workspace_holders(&self, replica: &str) -> Result<Vec<(String, Member)>> {
        if !self.is_shared() {
            return Ok(Vec::new());
        }
        let holders: Vec<(String, String)> = self
            .read()?
            .all(TERMINAL_HOLDERS, false)
            .collect::<Result<_>>()?;
        let live = self.live_members()?;
        Ok(holders
            .into_iter()
            .filter(|(_, holder)| holder != replica)
            .filter_map(|(workspace, holder)| {
                let member = live.iter().find(|member| member.replica == holder)?;
                Some((workspace, member.clone()))
            })
            .collect())
    }

    /// Records a new session (its `id` is assigned) with the first part of
    /// its recording, and audits its opening, in one transaction.
    pub fn create_terminal_session(
        &self,
        session: &TerminalSession,
        replica: &str,
        recording: &[u8],
    ) -> Result<TerminalSession> {
        let mut tx = self.write()?;
        let id = tx.last(TERMINAL_SESSIONS)?.map_or(1, |(id, _)| id + 1);
        let created = TerminalSession {
            id,
            recorded_bytes: recording.len() as u64,
            ..session.clone()
        };
        tx.insert(TERMINAL_SESSIONS, id, &created)?;
        tx.insert(TERMINAL_SESSIONS_OPEN, id, &replica.to_owned())?;
        tx.insert(TERMINAL_RECORDINGS, (id, 1u64), &recording.to_vec())?;
        audit::append(
            &mut tx,
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
        let mut tx = self.write()?;
        let updated = {
            let Some(mut session) = tx.get(TERMINAL_SESSIONS, id)? else {
                return Ok(None);
            };
            if !chunk.is_empty() {
                let next = tx
                    .range_rev(TERMINAL_RECORDINGS, (id, 0)..=(id, u64::MAX))
                    .paged(1)
                    .next()
                    .transpose()?
                    .map_or(1, |((_, number), _)| number + 1);
                tx.insert(TERMINAL_RECORDINGS, (id, next), &chunk.to_vec())?;
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
                    &mut tx,
                    &Actor::user(&session.user),
                    AuditAction::TerminalClose,
                    &session.machine_id,
                    Outcome::Success,
                    Some(detail),
                )?;
                session.end = Some(end);
                session.ended_at_ms = Some(now_ms());
                tx.remove(TERMINAL_SESSIONS_OPEN, id)?;
            }
            tx.insert(TERMINAL_SESSIONS, id, &session)?;
            session
        };
        tx.commit()?;
        Ok(Some(updated))
    }

    pub fn terminal_session(&self, id: u64) -> Result<Option<TerminalSession>> {
        self.read_one(TERMINAL_SESSIONS, id)
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
        let tx = self.read()?;
        let mut page = Vec::new();
        let mut bytes = 0;
        let chunks = (id, after.saturating_add(1))..=(id, u64::MAX);
        // Chunks are large: a few at a time from the engine.
        for entry in tx.range(TERMINAL_RECORDINGS, chunks).paged(8) {
            let ((_, number), chunk) = entry?;
            bytes += chunk.len();
            page.push((number, chunk));
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(page)
    }

    /// Marks sessions a previous process left open as interrupted; returns their ids.
    pub fn interrupt_open_terminal_sessions(&self) -> Result<Vec<u64>> {
        let mut tx = self.write()?;
        let open: Vec<u64> = tx
            .all(TERMINAL_SESSIONS, false)
            .filter(|entry| !matches!(entry, Ok((_, session)) if session.end.is_some()))
            .map(|entry| entry.map(|(id, _)| id))
            .collect::<Result<_>>()?;
        for &id in &open {
            interrupt_session(&mut tx, id)?;
        }
        tx.commit()?;
        Ok(open)
    }

    /// Marks the sessions whose replica is no live member any more as
    /// interrupted. Returns their ids; nothing on an unshared store.
    pub fn interrupt_terminal_sessions_of_gone(&self) -> Result<Vec<u64>> {
        if !self.is_shared()
            || self
                .held_by_gone(&self.read()?, TERMINAL_SESSIONS_OPEN)?
                .is_empty()
        {
            return Ok(Vec::new());
        }
        let mut tx = self.write()?;
        let gone = self.held_by_gone(&tx, TERMINAL_SESSIONS_OPEN)?;
        for &id in &gone {
            interrupt_session(&mut tx, id)?;
        }
        tx.commit()?;
        Ok(gone)
    }
}

/// Marks session `id` interrupted, unless it has ended.
fn interrupt_session(tx: &mut WriteTx, id: u64) -> Result<()> {
    tx.remove(TERMINAL_SESSIONS_OPEN, id)?;
    let Some(mut session) = tx.get(TERMINAL_SESSIONS, id)? else {
        return Ok(());
    };
    if session.end.is_none() {
        session.end = Some(SessionEnd::Interrupted);
        session.ended_at_ms = Some(now_ms());
        tx.insert(TERMINAL_SESSIONS, id, &session)?;
    }
    Ok(())
}

/// A session as its audit entries name it.
fn describe(session: &TerminalSession) -> String {
    let described = format!(
        "session {} (workspace {} pane {})",
        session.id, session.workspace_id, session.pane
    );
    match &session.certificate {
        Some(login) => format!("{described}, certificate serial {}", login.serial),
        None => described,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    /// A workspace is held by the first live replica that takes it, the
    /// others are told which; once that one is gone the next takes it.
    #[test]
    fn a_workspace_is_held_by_one_live_replica_at_a_time() {
        const TTL: i64 = 60_000;
        let workspace = Workspace::new(
            "w1".into(),
            "w".into(),
            "ada".into(),
            linkops_reconcilers::terminal::Layout::Single,
            0,
        );
        let (redb, Some(postgres)) = (testing::redb(), testing::postgres()) else {
            return;
        };
        let alone = redb.open();
        alone.put_workspace(&workspace).unwrap();
        assert_eq!(alone.workspace_holder("w1", "local", true).unwrap(), None);
        assert!(alone.workspace_holders("local").unwrap().is_empty());

        let store = postgres.open();
        store.put_workspace(&workspace).unwrap();
        store.renew_member("r1", "127.0.0.1:1", TTL).unwrap();
        store.renew_member("r2", "127.0.0.1:2", TTL).unwrap();
        let holder = |asking: &str, take: bool| {
            store
                .workspace_holder("w1", asking, take)
                .unwrap()
                .map(|member| (member.replica, member.address))
        };
        assert_eq!(holder("r2", false), None, "looking takes nothing");
        assert_eq!(holder("r1", true), None, "r1 takes it");
        assert_eq!(
            holder("r2", true),
            Some(("r1".into(), "127.0.0.1:1".into()))
        );
        assert_eq!(holder("r1", true), None, "r1's own");
        assert_eq!(store.workspace_holders("r2").unwrap().len(), 1);
        assert!(store.workspace_holders("r1").unwrap().is_empty());
        // No such workspace: nothing is held.
        assert_eq!(store.workspace_holder("w2", "r1", true).unwrap(), None);
        assert_eq!(store.workspace_holder("w2", "r2", false).unwrap(), None);

        // r1's lease passes: r2 takes it; r1 back finds it r2's.
        store.renew_member("r1", "127.0.0.1:1", 0).unwrap();
        assert_eq!(holder("r2", true), None);
        store.renew_member("r1", "127.0.0.1:1", TTL).unwrap();
        assert_eq!(
            holder("r1", true),
            Some(("r2".into(), "127.0.0.1:2".into()))
        );
        store.delete_workspace("w1").unwrap();
        assert_eq!(holder("r1", false), None, "deleted, held by nobody");
    }

    /// Two replicas hold a session each; one dies: the leader's sweep ends
    /// its session only, and a session already ended is left as it ended.
    #[test]
    fn the_sessions_of_a_replica_that_is_gone_are_interrupted_and_no_others() {
        let Some(postgres) = testing::postgres() else {
            return;
        };
        let store = postgres.open();
        store.renew_member("live", "127.0.0.1:1", 60_000).unwrap();
        store.renew_member("dead", "127.0.0.1:2", 60_000).unwrap();
        let kept = store
            .create_terminal_session(&session(), "live", b"h\n")
            .unwrap();
        let lost = store
            .create_terminal_session(&session(), "dead", b"h\n")
            .unwrap();
        let closed = store
            .create_terminal_session(&session(), "dead", b"h\n")
            .unwrap();
        store
            .record_terminal(closed.id, b"", false, Some(SessionEnd::Closed))
            .unwrap();
        assert!(
            store
                .interrupt_terminal_sessions_of_gone()
                .unwrap()
                .is_empty(),
            "both live"
        );
        store.renew_member("dead", "127.0.0.1:2", 0).unwrap();
        assert_eq!(
            store.interrupt_terminal_sessions_of_gone().unwrap(),
            [lost.id]
        );
        let end = |id| store.terminal_session(id).unwrap().unwrap().end;
        assert_eq!(end(lost.id), Some(SessionEnd::Interrupted));
        assert_eq!(end(kept.id), None);
        assert_eq!(end(closed.id), Some(SessionEnd::Closed));
        assert!(
            store
                .interrupt_terminal_sessions_of_gone()
                .unwrap()
                .is_empty(),
            "once"
        );
    }

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
            certificate: None,
        }
    }

    #[test]
    fn a_recording_reads_back_in_order_and_counts_its_bytes() {
        for backing in testing::backings() {
            let store = backing.open();
            let created = store
                .create_terminal_session(&session(), "local", b"header\n")
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
    }

    #[test]
    fn opening_and_closing_a_session_write_their_audit_with_them() {
        for backing in testing::backings() {
            let store = backing.open();
            let created = store
                .create_terminal_session(&session(), "local", b"h\n")
                .unwrap();
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
    }

    #[test]
    fn sessions_left_open_are_interrupted_at_the_next_start() {
        for backing in testing::backings() {
            let store = backing.open();
            store
                .create_terminal_session(&session(), "local", b"h\n")
                .unwrap();
            store
                .create_terminal_session(&session(), "local", b"h\n")
                .unwrap();
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
}
