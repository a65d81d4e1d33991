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
use linkops_reconcilers::schedule::{FireOutcome, FireRecord};
use linkops_reconcilers::state::{ApplyResult, Standing, StateStatus, Target};

use super::audit::{self, Actor, Audit, AuditAction};
use super::engine::{Read, Write, WriteTx};
use super::records::Outcome;
use super::scan::{SeqTable, index_operation};
use super::schema::{
    APPROVALS, OPERATION_EVENTS, OPERATION_HOSTS, OPERATIONS, OPERATIONS_RUNNING, RUN_REQUESTS,
    SCHEDULE_FIRES, STATE_STATUS, STATE_TARGETS, STOP_ASKS, TRIGGER_RUNS,
};
use super::{Error, Result, Store, now_ms};
use linkops_reconcilers::approval::{Request, RequestState};
use linkops_reconcilers::trigger::TriggerRun;

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
    /// A schedule's fire, started by this operation (so never again).
    Fire(FireRecord),
    /// A trigger's run, admitted by the trigger's dedup window and rate as
    /// they stand in this transaction (whatever replica answers).
    Trigger {
        run: TriggerRun,
        trigger: Box<linkops_reconcilers::trigger::Trigger>,
    },
    /// An approval request's last approval (`voted`: the request with it),
    /// with its audit entry: the request is marked started by this operation.
    Approval { voted: Box<Request>, audit: Audit },
}

/// Records a trigger's run as started by operation `id`, unless the same
/// run started within the dedup window or the trigger is past its rate;
/// forgets runs older than both windows.
fn claim_trigger(
    tx: &mut WriteTx,
    mut run: TriggerRun,
    trigger: &linkops_reconcilers::trigger::Trigger,
    id: u64,
) -> Result<()> {
    let horizon = trigger.dedup.max(trigger.rate.per).as_millis() as i64;
    let name = run.trigger.as_str();
    let old = (name, i64::MIN, String::new())..(name, run.at_ms - horizon, String::new());
    let forgotten: Vec<(String, i64, String)> = tx
        .range(TRIGGER_RUNS, old)
        .map(|entry| entry.map(|(key, _)| key))
        .collect::<Result<_>>()?;
    for key in &forgotten {
        tx.remove(TRIGGER_RUNS, (key.0.as_str(), key.1, key.2.as_str()))?;
    }
    let recent = (name, run.at_ms - horizon, String::new())..=(name, i64::MAX, String::new());
    let recent: Vec<(i64, String)> = tx
        .range(TRIGGER_RUNS, recent)
        .map(|entry| entry.map(|((_, at, key), _)| (at, key)))
        .collect::<Result<_>>()?;
    let recent: Vec<(i64, &str)> = recent.iter().map(|(at, key)| (*at, key.as_str())).collect();
    linkops_reconcilers::trigger::admit(trigger, &run.key, &recent, run.at_ms).map_err(
        |refusal| Error::TriggerRefused {
            trigger: run.trigger.clone(),
            refusal,
        },
    )?;
    run.operation_id = id;
    tx.insert(TRIGGER_RUNS, (name, run.at_ms, run.key.as_str()), &run)?;
    Ok(())
}

/// Records a schedule's fire as started by operation `id`, unless that
/// fire (schedule, due time) already has a record: started, missed or skipped.
fn claim_fire(tx: &mut WriteTx, mut fire: FireRecord, id: u64) -> Result<()> {
    let key = (fire.schedule.as_str(), fire.due_ms);
    if let Some(recorded) = tx.get(SCHEDULE_FIRES, key)? {
        return Err(Error::AlreadyFired {
            schedule: fire.schedule,
            due_ms: fire.due_ms,
            outcome: recorded.outcome.name(),
        });
    }
    fire.outcome = FireOutcome::Started { operation_id: id };
    tx.insert(SCHEDULE_FIRES, (fire.schedule.as_str(), fire.due_ms), &fire)?;
    Ok(())
}

/// Records a run-request as started by operation `id`, unless it already was.
fn claim_run(tx: &mut WriteTx, mut claim: RunRecord, id: u64) -> Result<()> {
    let current = tx.get(RUN_REQUESTS, &claim.id)?;
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
    tx.insert(RUN_REQUESTS, &claim.id, &claim)?;
    Ok(())
}

/// Records a state's targets as applying under operation `id`, with the state's status.
fn claim_state_apply(
    tx: &mut WriteTx,
    status: &StateStatus,
    targets: Vec<Target>,
    id: u64,
) -> Result<()> {
    // Two replicas may both own a state for the moment their views of the
    // members differ: the second to claim a machine still applying refuses.
    for target in &targets {
        let key = (target.state_id.as_str(), target.machine_id.as_str());
        if let Some(Target {
            standing: Standing::Applying { operation_id },
            ..
        }) = tx.get(STATE_TARGETS, key)?
            && tx.get(OPERATIONS_RUNNING, operation_id)?.is_some()
        {
            return Err(Error::AlreadyApplying {
                state: target.state_id.clone(),
                machine: target.machine_id.clone(),
                operation_id,
            });
        }
    }
    tx.insert(STATE_STATUS, &status.state_id, status)?;
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
#[derive(Debug, Default, Clone)]
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
        replica: &str,
        hosts: &[HostResult],
        claim: Option<Claim>,
        outgoing: impl FnOnce(&Operation) -> Vec<linkops_reconcilers::outbox::Outgoing>,
    ) -> Result<Operation> {
        let mut tx = self.write()?;
        let created = {
            let id = tx.last(OPERATIONS)?.map_or(1, |(id, _)| id + 1);
            let created = Operation {
                id,
                ..operation.clone()
            };
            match claim {
                Some(Claim::Run(claim)) => claim_run(&mut tx, claim, id)?,
                Some(Claim::Fire(fire)) => claim_fire(&mut tx, fire, id)?,
                Some(Claim::Trigger { run, trigger }) => claim_trigger(&mut tx, run, &trigger, id)?,
                Some(Claim::Approval { voted, audit }) => {
                    super::approvals::still_as_voted_on(&mut tx, &voted)?;
                    let started = Request {
                        state: RequestState::Started { operation_id: id },
                        ..*voted
                    };
                    tx.insert(APPROVALS, started.id, &started)?;
                    audit::append_audit(&mut tx, &audit)?;
                }
                Some(Claim::StateApply { status, targets }) => {
                    claim_state_apply(&mut tx, &status, targets, id)?
                }
                None => {}
            }
            tx.insert(OPERATIONS, id, &created)?;
            tx.insert(OPERATIONS_RUNNING, id, &replica.to_owned())?;
            index_operation(&mut tx, &created, None)?;
            for host in hosts {
                tx.insert(OPERATION_HOSTS, (id, host.machine_id.as_str()), host)?;
            }
            let mut events = vec![OperationEvent::Operation {
                state: created.state,
            }];
            events.extend(hosts.iter().map(|host| OperationEvent::Host {
                machine_id: host.machine_id.clone(),
                state: host.state.clone(),
            }));
            append_events(&mut tx, id, events)?;
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
                } + &given_secrets(&created),
            ),
            Requester::RunRequest { id, revision } => (
                Actor::Git {
                    revision: revision.clone(),
                },
                AuditAction::RunStart,
                id.clone(),
                format!("operation {}", created.id) + &given_secrets(&created),
            ),
            Requester::Schedule {
                name,
                due_ms,
                revision,
            } => (
                Actor::Git {
                    revision: revision.clone(),
                },
                AuditAction::ScheduleFire,
                name.clone(),
                format!(
                    "operation {} runs script {}, the fire due at {}",
                    created.id,
                    created.script,
                    crate::contract::at(*due_ms)
                        .map_or_else(|| due_ms.to_string(), |t| t.to_string())
                ) + &given_secrets(&created),
            ),
            Requester::Trigger {
                name,
                alert,
                revision,
            } => (
                Actor::Trigger(name.clone()),
                AuditAction::TriggerRun,
                name.clone(),
                format!(
                    "operation {} runs script {} on {} as the trigger at {revision} maps{}",
                    created.id,
                    created.script,
                    created.machines.join(", "),
                    alert
                        .as_ref()
                        .map_or_else(String::new, |alert| format!(" alert {alert}"))
                ) + &given_secrets(&created),
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
                ) + &given_secrets(&created),
            ),
        };
        audit::append(
            &mut tx,
            &actor,
            action,
            &target,
            Outcome::Success,
            Some(detail),
        )?;
        super::outbox::enqueue(&mut tx, &outgoing(&created), self.outbox_bound)?;
        tx.commit()?;
        Ok(created)
    }

    /// Records a batch of events and result changes; returns the events as numbered.
    pub fn record_operation_update(
        &self,
        id: u64,
        update: OperationUpdate,
    ) -> Result<Vec<RecordedEvent>> {
        let mut tx = self.write()?;
        let recorded = {
            for host in &update.hosts {
                tx.insert(OPERATION_HOSTS, (id, host.machine_id.as_str()), host)?;
            }
            if let Some((state, finished)) = update.state
                && let Some(mut operation) = tx.get(OPERATIONS, id)?
            {
                let previous = operation.state;
                operation.state = state;
                index_operation(&mut tx, &operation, Some(previous))?;
                if finished {
                    operation.finished_at_ms = Some(now_ms());
                    tx.remove(OPERATIONS_RUNNING, id)?;
                    tx.remove(STOP_ASKS, id)?;
                }
                tx.insert(OPERATIONS, id, &operation)?;
            }
            super::outbox::enqueue(&mut tx, &update.outgoing, self.outbox_bound)?;
            append_events(&mut tx, id, update.events)?
        };
        tx.commit()?;
        Ok(recorded)
    }

    /// Asks the replica running operation `id` to stop it, audited in the
    /// same transaction; false (nothing written) if it is not running.
    pub fn ask_stop(&self, id: u64, audit: &Audit) -> Result<bool> {
        let mut tx = self.write()?;
        if tx.get(OPERATIONS_RUNNING, id)?.is_none() {
            return Ok(false);
        }
        tx.insert(STOP_ASKS, id, &())?;
        audit::append_audit(&mut tx, audit)?;
        tx.commit()?;
        Ok(true)
    }

    /// The operations replicas were asked to stop (each leaves the list as it ends).
    pub fn stop_asks(&self) -> Result<Vec<u64>> {
        let tx = self.read()?;
        tx.all(STOP_ASKS, false)
            .map(|entry| entry.map(|(id, ())| id))
            .collect()
    }

    /// An operation's state, without its hosts.
    pub fn operation_state(&self, id: u64) -> Result<Option<OperationState>> {
        Ok(self
            .read_one(OPERATIONS, id)?
            .map(|operation| operation.state))
    }

    /// An operation and its hosts' results.
    pub fn operation(&self, id: u64) -> Result<Option<(Operation, Vec<HostResult>)>> {
        let tx = self.read()?;
        let Some(operation) = tx.get(OPERATIONS, id)? else {
            return Ok(None);
        };
        let hosts = operation
            .machines
            .iter()
            .filter_map(|machine| tx.get(OPERATION_HOSTS, (id, machine.as_str())).transpose())
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
        let tx = self.read()?;
        let mut page = Vec::new();
        let mut bytes = 0;
        for entry in tx
            .range(
                OPERATION_EVENTS,
                (id, after.saturating_add(1))..=(id, u64::MAX),
            )
            // Output events are large: a page is read in a few fetches.
            .paged(limit.min(64))
            .take(limit)
        {
            let (_, event) = entry?;
            bytes += held_bytes(&event.event);
            page.push(event);
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
    /// nothing is re-run. Returns their ids. For the only daemon of a store,
    /// at start: with several, [`Store::interrupt_operations_of_gone`].
    pub fn interrupt_unfinished_operations(
        &self,
        outgoing: impl FnOnce(&[u64]) -> Vec<linkops_reconcilers::outbox::Outgoing>,
    ) -> Result<Vec<u64>> {
        let mut tx = self.write()?;
        let unfinished: Vec<Operation> = tx
            .all(OPERATIONS, false)
            .map(|entry| entry.map(|(_, operation)| operation))
            .filter(|op| !matches!(op, Ok(op) if op.state.is_finished()))
            .collect::<Result<_>>()?;
        let mut interrupted = Vec::new();
        for operation in unfinished {
            interrupted.push(interrupt(&mut tx, operation)?);
        }
        super::outbox::enqueue(&mut tx, &outgoing(&interrupted), self.outbox_bound)?;
        tx.commit()?;
        Ok(interrupted)
    }

    /// Marks the operations run by replicas that are no live member any more
    /// (killed, cut off: their member lease passed) as interrupted, like
    /// [`Store::interrupt_unfinished_operations`]. Returns their ids. Nothing
    /// on an unshared store, whose only daemon runs them all.
    pub fn interrupt_operations_of_gone(
        &self,
        outgoing: impl FnOnce(&[u64]) -> Vec<linkops_reconcilers::outbox::Outgoing>,
    ) -> Result<Vec<u64>> {
        // Read first: the leader looks every few seconds, and there is mostly nothing to do.
        if !self.is_shared()
            || self
                .held_by_gone(&self.read()?, OPERATIONS_RUNNING)?
                .is_empty()
        {
            return Ok(Vec::new());
        }
        let mut tx = self.write()?;
        let orphans = self.held_by_gone(&tx, OPERATIONS_RUNNING)?;
        let mut interrupted = Vec::new();
        for id in orphans {
            match tx.get(OPERATIONS, id)? {
                Some(operation) if !operation.state.is_finished() => {
                    interrupted.push(interrupt(&mut tx, operation)?)
                }
                _ => tx.remove(OPERATIONS_RUNNING, id)?,
            }
        }
        super::outbox::enqueue(&mut tx, &outgoing(&interrupted), self.outbox_bound)?;
        tx.commit()?;
        Ok(interrupted)
    }
}

/// Marks `operation` and its unfinished hosts interrupted and ends its event
/// log; its id.
fn interrupt(tx: &mut WriteTx, mut operation: Operation) -> Result<u64> {
    let mut states = Vec::new();
    let mut events = Vec::new();
    for machine in &operation.machines {
        let key = (operation.id, machine.as_str());
        let Some(mut host) = tx.get(OPERATION_HOSTS, key)? else {
            continue;
        };
        if !host.state.is_final() {
            host.state = HostState::Interrupted;
            host.finished_at_ms = Some(now_ms());
            tx.insert(OPERATION_HOSTS, key, &host)?;
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
    index_operation(tx, &operation, Some(previous))?;
    operation.finished_at_ms.get_or_insert(now_ms());
    tx.insert(OPERATIONS, operation.id, &operation)?;
    tx.remove(OPERATIONS_RUNNING, operation.id)?;
    tx.remove(STOP_ASKS, operation.id)?;
    events.push(OperationEvent::Operation {
        state: operation.state,
    });
    events.push(OperationEvent::End {
        state: operation.state,
    });
    append_events(tx, operation.id, events)?;
    Ok(operation.id)
}

/// Numbers and appends events after the operation's last one.
fn append_events(
    tx: &mut WriteTx,
    id: u64,
    events: Vec<OperationEvent>,
) -> Result<Vec<RecordedEvent>> {
    let first = tx
        .range_rev(OPERATION_EVENTS, (id, 0)..=(id, u64::MAX))
        .paged(1)
        .next()
        .transpose()?
        .map_or(1, |((_, seq), _)| seq + 1);
    let at_ms = now_ms();
    let mut recorded = Vec::with_capacity(events.len());
    for (seq, event) in (first..).zip(events) {
        let event = RecordedEvent { seq, at_ms, event };
        tx.insert(OPERATION_EVENTS, (id, seq), &event)?;
        recorded.push(event);
    }
    Ok(recorded)
}

/// About what an event takes in memory once read: its output, plus a little.
fn held_bytes(event: &OperationEvent) -> usize {
    match event {
        OperationEvent::Output { data, .. } => data.len() + 64,
        _ => 64,
    }
}

/// `, giving secret(s) a, b` for the audit: the secrets' names, never a value.
fn given_secrets(operation: &Operation) -> String {
    match operation.secrets.is_empty() {
        true => String::new(),
        false => format!(", giving secret(s) {}", operation.secrets.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

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
            secrets: Vec::new(),
        }
    }

    /// The leader's sweep ends the operations of a replica whose lease
    /// passed, each once, and never those of a live one.
    #[test]
    fn the_operations_of_a_replica_that_is_gone_are_interrupted_and_no_others() {
        let Some(postgres) = testing::postgres() else {
            return;
        };
        let store = postgres.open();
        store.renew_member("live", "127.0.0.1:1", 60_000).unwrap();
        store.renew_member("dead", "127.0.0.1:2", 60_000).unwrap();
        let on_web1 = Operation {
            machines: vec!["web1".into()],
            ..operation(Requester::User { name: "ada".into() })
        };
        let host = HostResult {
            machine_id: "web1".into(),
            state: HostState::Running,
            started_at_ms: Some(1),
            finished_at_ms: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            certificate: None,
        };
        let start = |replica| {
            store
                .create_operation(&on_web1, replica, std::slice::from_ref(&host), None, |_| {
                    Vec::new()
                })
                .unwrap()
        };
        let (kept, lost) = (start("live"), start("dead"));
        assert!(
            store
                .interrupt_operations_of_gone(|_| Vec::new())
                .unwrap()
                .is_empty()
        );
        store.renew_member("dead", "127.0.0.1:2", 0).unwrap();
        assert_eq!(
            store.interrupt_operations_of_gone(|_| Vec::new()).unwrap(),
            [lost.id]
        );
        let state = |id| store.operation_state(id).unwrap().unwrap();
        assert_eq!(state(lost.id), OperationState::Interrupted);
        assert_eq!(state(kept.id), OperationState::Pending);
        assert!(
            store
                .interrupt_operations_of_gone(|_| Vec::new())
                .unwrap()
                .is_empty(),
            "once"
        );
        let events = store.operation_events(lost.id, 0, 100, usize::MAX).unwrap();
        assert!(matches!(
            events.last().map(|e| &e.event),
            Some(OperationEvent::End { .. })
        ));
    }

    #[test]
    fn an_operation_is_audited_in_the_transaction_that_creates_it() {
        for backing in testing::backings() {
            let store = backing.open();
            let by_user = Requester::User { name: "ada".into() };
            store
                .create_operation(&operation(by_user), "local", &[], None, |_| Vec::new())
                .unwrap();
            let by_git = Requester::RunRequest {
                id: "once".into(),
                revision: "r7".into(),
            };
            store
                .create_operation(&operation(by_git), "local", &[], None, |_| Vec::new())
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
}
