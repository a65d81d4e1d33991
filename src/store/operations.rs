//! Operations, their per-machine results, their event logs, and what they
//! claim: a run-request, or a declared state's applies.
//!
//! An operation started by a run-request is created in the same transaction
//! that claims the run-request: after a crash at any point, either both
//! exist or neither does, so a run-request never runs twice and never
//! silently not at all. Events are numbered per operation inside the
//! transaction that records them, so the log has no gaps and no duplicates.

use linkops_reconcilers::operation::{
    HostResult, HostState, Operation, OperationEvent, OperationState, RecordedEvent, Requester,
    summarize,
};
use linkops_reconcilers::run::{RunRecord, RunState};
use linkops_reconcilers::state::{ApplyResult, Standing, StateStatus, Target};
use redb::ReadableTable;

use super::audit::{self, Actor, AuditAction, Outcome};
use super::codec::{decode, encode, get_str};
use super::scan::{SeqTable, index_operation};
use super::schema::{OPERATION_EVENTS, OPERATION_HOSTS, OPERATIONS, RUN_REQUESTS, STATE_STATUS};
use super::{Error, Result, Store, now_ms};

/// What an operation takes over, written in the transaction that creates it.
#[derive(Debug)]
pub enum Claim {
    /// A run-request, started by this operation (so never again).
    Run(RunRecord),
    /// A declared state's applies: the targets the operation applies on
    /// (each with an apply record, whose operation id the store fills in) and
    /// the state's status.
    StateApply {
        status: StateStatus,
        targets: Vec<Target>,
    },
}

/// Records a run-request as started by operation `id`, unless it already was.
fn claim_run(tx: &redb::WriteTransaction, mut claim: RunRecord, id: u64) -> Result<()> {
    let mut runs = tx.open_table(RUN_REQUESTS)?;
    let current: Option<RunRecord> = get_str(&runs, "run_requests", &claim.id)?;
    if let Some(RunRecord {
        state: RunState::Started { operation_id },
        ..
    }) = current
    {
        return Err(Error::AlreadyClaimed {
            run: claim.id,
            operation_id,
        });
    }
    claim.state = RunState::Started { operation_id: id };
    let previous = std::mem::take(&mut claim.conditions);
    let claim = claim.with_conditions(&previous, now_ms());
    runs.insert(claim.id.as_str(), encode(&claim).as_slice())?;
    Ok(())
}

/// Records a state's targets as applying under operation `id`, with the state's status.
fn claim_state_apply(
    tx: &redb::WriteTransaction,
    status: &StateStatus,
    targets: Vec<Target>,
    id: u64,
) -> Result<()> {
    let mut statuses = tx.open_table(STATE_STATUS)?;
    statuses.insert(status.state_id.as_str(), encode(status).as_slice())?;
    let now = now_ms();
    let applying: Vec<Target> = targets
        .into_iter()
        .map(|mut target| {
            if let Some(apply) = target.apply.as_mut() {
                apply.operation_id = id;
                apply.result = ApplyResult::Running;
            }
            target.stand(Standing::Applying { operation_id: id }, now);
            target
        })
        .collect();
    super::states::put_targets(tx, &applying)
}

/// A batch of changes to one operation, recorded in one transaction.
#[derive(Debug, Default)]
pub struct OperationUpdate {
    pub events: Vec<OperationEvent>,
    /// Hosts whose result changed (byte counts, state, times).
    pub hosts: Vec<HostResult>,
    /// A new operation state, and whether it is the final one.
    pub state: Option<(OperationState, bool)>,
    /// What the outside is told of it (its end), queued in the same transaction.
    pub outgoing: Vec<linkops_reconcilers::outbox::Outgoing>,
}

impl Store {
    /// Creates an operation (its `id` is assigned) with its hosts' initial
    /// results and first events; with `claim`, records the run-request as
    /// started by it (failing with [`Error::AlreadyClaimed`] if that
    /// run-request already started) or the state's targets as applying under it.
    pub fn create_operation(
        &self,
        operation: &Operation,
        hosts: &[HostResult],
        claim: Option<Claim>,
        outgoing: impl FnOnce(&Operation) -> Vec<linkops_reconcilers::outbox::Outgoing>,
    ) -> Result<Operation> {
        let tx = self.db.begin_write()?;
        let created = {
            let mut operations = tx.open_table(OPERATIONS)?;
            let id = operations.last()?.map_or(1, |(key, _)| key.value() + 1);
            let created = Operation {
                id,
                ..operation.clone()
            };
            match claim {
                Some(Claim::Run(claim)) => claim_run(&tx, claim, id)?,
                Some(Claim::StateApply { status, targets }) => {
                    claim_state_apply(&tx, &status, targets, id)?
                }
                None => {}
            }
            operations.insert(id, encode(&created).as_slice())?;
            index_operation(&tx, &created, None)?;
            let mut results = tx.open_table(OPERATION_HOSTS)?;
            for host in hosts {
                results.insert((id, host.machine_id.as_str()), encode(host).as_slice())?;
            }
            let mut events = vec![OperationEvent::Operation {
                state: created.state,
            }];
            events.extend(hosts.iter().map(|host| OperationEvent::Host {
                machine_id: host.machine_id.clone(),
                state: host.state.clone(),
            }));
            append_events(&tx, id, events)?;
            created
        };
        // Audited with the change: who asked for it, in the same transaction.
        let (actor, action, target, detail) = match &created.requested_by {
            Requester::User { name } => (
                Actor::user(name),
                AuditAction::OperationRun,
                created.id.to_string(),
                match created.retry_of {
                    Some(of) => format!("script {} (retry of operation {of})", created.script),
                    None => format!("script {}", created.script),
                },
            ),
            Requester::RunRequest { id, revision } => (
                Actor::Git {
                    revision: revision.clone(),
                },
                AuditAction::RunStart,
                id.clone(),
                format!("operation {}", created.id),
            ),
            Requester::State { id, revision } => (
                Actor::Git {
                    revision: revision.clone(),
                },
                AuditAction::StateApply,
                id.clone(),
                format!(
                    "operation {} applies script {} on {}",
                    created.id,
                    created.script,
                    created.machines.join(", ")
                ),
            ),
        };
        audit::append(&tx, &actor, action, &target, Outcome::Success, Some(detail))?;
        super::outbox::enqueue(&tx, &outgoing(&created))?;
        tx.commit()?;
        Ok(created)
    }

    /// Records a batch of events and result changes; returns the events as numbered.
    pub fn record_operation_update(
        &self,
        id: u64,
        update: OperationUpdate,
    ) -> Result<Vec<RecordedEvent>> {
        let tx = self.db.begin_write()?;
        let recorded = {
            if !update.hosts.is_empty() {
                let mut results = tx.open_table(OPERATION_HOSTS)?;
                for host in &update.hosts {
                    results.insert((id, host.machine_id.as_str()), encode(host).as_slice())?;
                }
            }
            if let Some((state, finished)) = update.state {
                let mut operations = tx.open_table(OPERATIONS)?;
                let current = operations
                    .get(id)?
                    .map(|v| decode::<Operation>("operations", id, v.value()));
                if let Some(operation) = current {
                    let mut operation = operation?;
                    let previous = operation.state;
                    operation.state = state;
                    index_operation(&tx, &operation, Some(previous))?;
                    if finished {
                        operation.finished_at_ms = Some(now_ms());
                    }
                    operations.insert(id, encode(&operation).as_slice())?;
                }
            }
            super::outbox::enqueue(&tx, &update.outgoing)?;
            append_events(&tx, id, update.events)?
        };
        tx.commit()?;
        Ok(recorded)
    }

    /// An operation and its hosts' results.
    pub fn operation(&self, id: u64) -> Result<Option<(Operation, Vec<HostResult>)>> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read()?;
        let operations = tx.open_table(OPERATIONS)?;
        let Some(value) = operations.get(id)? else {
            return Ok(None);
        };
        let operation: Operation = decode("operations", id, value.value())?;
        let results = tx.open_table(OPERATION_HOSTS)?;
        let hosts = operation
            .machines
            .iter()
            .filter_map(|machine| match results.get((id, machine.as_str())) {
                Ok(Some(value)) => Some(decode("operation_hosts", machine, value.value())),
                Ok(None) => None,
                Err(error) => Some(Err(error.into())),
            })
            .collect::<Result<Vec<HostResult>>>()?;
        Ok(Some((operation, hosts)))
    }

    /// Events of an operation after sequence number `after`, oldest first: at
    /// most `limit` events, and no more once about `max_bytes` of records are
    /// read (so a page of large output chunks stays small in memory).
    pub fn operation_events(
        &self,
        id: u64,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<RecordedEvent>> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read()?;
        let events = tx.open_table(OPERATION_EVENTS)?;
        let mut page = Vec::new();
        let mut bytes = 0;
        for entry in events
            .range((id, after.saturating_add(1))..=(id, u64::MAX))?
            .take(limit)
        {
            let (key, value) = entry?;
            bytes += value.value().len();
            page.push(decode("operation_events", key.value().1, value.value())?);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(page)
    }

    /// Operations newest first, filtered by `keep`, at most `limit`.
    pub fn operations(
        &self,
        limit: usize,
        keep: impl Fn(&Operation) -> bool,
    ) -> Result<Vec<Operation>> {
        self.newest(SeqTable::Operations, limit, keep)
    }

    /// The newest operations that involve `machine_id`, newest first.
    pub fn operations_for_machine(&self, machine_id: &str, limit: usize) -> Result<Vec<Operation>> {
        self.operations(limit, |operation| {
            operation.machines.iter().any(|m| m == machine_id)
        })
    }

    /// Marks operations left pending or running by a previous process as
    /// interrupted, with their unfinished hosts, and ends their event logs;
    /// nothing is re-run. Returns their ids.
    pub fn interrupt_unfinished_operations(
        &self,
        outgoing: impl FnOnce(&[u64]) -> Vec<linkops_reconcilers::outbox::Outgoing>,
    ) -> Result<Vec<u64>> {
        let tx = self.db.begin_write()?;
        let mut interrupted = Vec::new();
        {
            let mut operations = tx.open_table(OPERATIONS)?;
            let mut results = tx.open_table(OPERATION_HOSTS)?;
            let unfinished: Vec<Operation> = operations
                .range::<u64>(..)?
                .map(|entry| {
                    let (key, value) = entry?;
                    decode::<Operation>("operations", key.value(), value.value())
                })
                .filter(|op| !matches!(op, Ok(op) if is_finished(op.state)))
                .collect::<Result<_>>()?;
            for mut operation in unfinished {
                let mut states = Vec::new();
                let mut events = Vec::new();
                for machine in &operation.machines {
                    let key = (operation.id, machine.as_str());
                    let stored = results
                        .get(key)?
                        .map(|v| decode::<HostResult>("operation_hosts", machine, v.value()));
                    let Some(host) = stored else { continue };
                    let mut host = host?;
                    if !host.state.is_final() {
                        host.state = HostState::Interrupted;
                        host.finished_at_ms = Some(now_ms());
                        results.insert(key, encode(&host).as_slice())?;
                        events.push(OperationEvent::Host {
                            machine_id: machine.clone(),
                            state: HostState::Interrupted,
                        });
                    }
                    states.push(host.state);
                }
                // Every host may have finished with only the final write lost.
                let previous = operation.state;
                operation.state = summarize(&states);
                index_operation(&tx, &operation, Some(previous))?;
                operation.finished_at_ms.get_or_insert(now_ms());
                operations.insert(operation.id, encode(&operation).as_slice())?;
                events.push(OperationEvent::Operation {
                    state: operation.state,
                });
                events.push(OperationEvent::End {
                    state: operation.state,
                });
                append_events(&tx, operation.id, events)?;
                interrupted.push(operation.id);
            }
        }
        super::outbox::enqueue(&tx, &outgoing(&interrupted))?;
        tx.commit()?;
        Ok(interrupted)
    }
}

/// Numbers and appends events after the operation's last one.
fn append_events(
    tx: &redb::WriteTransaction,
    id: u64,
    events: Vec<OperationEvent>,
) -> Result<Vec<RecordedEvent>> {
    let mut log = tx.open_table(OPERATION_EVENTS)?;
    let first = log
        .range((id, 0)..=(id, u64::MAX))?
        .next_back()
        .transpose()?
        .map_or(1, |(key, _)| key.value().1 + 1);
    let at_ms = now_ms();
    let mut recorded = Vec::with_capacity(events.len());
    for (seq, event) in (first..).zip(events) {
        let event = RecordedEvent { seq, at_ms, event };
        log.insert((id, seq), encode(&event).as_slice())?;
        recorded.push(event);
    }
    Ok(recorded)
}

fn is_finished(state: OperationState) -> bool {
    !matches!(state, OperationState::Pending | OperationState::Running)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operation(requested_by: Requester) -> Operation {
        Operation {
            id: 0,
            script: "uptime".into(),
            params: Default::default(),
            machines: vec![],
            requested_by,
            state: OperationState::Pending,
            created_at_ms: 0,
            finished_at_ms: None,
            rollout: None,
            retry_of: None,
        }
    }

    #[test]
    fn an_operation_is_audited_in_the_transaction_that_creates_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let by_user = Requester::User { name: "ada".into() };
        store
            .create_operation(&operation(by_user), &[], None, |_| Vec::new())
            .unwrap();
        let by_git = Requester::RunRequest {
            id: "once".into(),
            revision: "r7".into(),
        };
        store
            .create_operation(&operation(by_git), &[], None, |_| Vec::new())
            .unwrap();
        let audited: Vec<(String, String, String, Option<String>)> = store
            .audit_entries(0, 10)
            .unwrap()
            .into_iter()
            .map(|e| (e.actor, e.action, e.target, e.detail))
            .collect();
        assert_eq!(
            audited,
            [
                (
                    "ada".into(),
                    "operation.run".into(),
                    "1".into(),
                    Some("script uptime".into())
                ),
                (
                    "git@r7".into(),
                    "run.start".into(),
                    "once".into(),
                    Some("operation 2".into())
                ),
            ]
        );
    }
}
