//! Operations, their per-machine results and output, and run-request claims.
//!
//! An operation started by a run-request is created in the same transaction
//! that claims the run-request: after a crash at any point, either both
//! exist or neither does, so a run-request never runs twice and never
//! silently not at all.

use linkops_reconcilers::operation::{
    HostResult, HostState, Operation, OperationState, OutputChunk, summarize,
};
use linkops_reconcilers::run::{RunRecord, RunState};
use redb::ReadableTable;

use super::codec::{decode, encode, get_str};
use super::schema::{OPERATION_HOSTS, OPERATION_OUTPUT, OPERATIONS, RUN_REQUESTS};
use super::{Error, Result, Store, now_ms};

impl Store {
    /// Creates an operation (its `id` is assigned) with its hosts' initial
    /// results; with `claim`, records the run-request as started by it.
    /// Fails with [`Error::AlreadyClaimed`] if that run-request already started.
    pub fn create_operation(
        &self,
        operation: &Operation,
        hosts: &[HostResult],
        claim: Option<RunRecord>,
    ) -> Result<Operation> {
        let tx = self.db.begin_write()?;
        let created = {
            let mut operations = tx.open_table(OPERATIONS)?;
            let id = operations.last()?.map_or(1, |(key, _)| key.value() + 1);
            let created = Operation {
                id,
                ..operation.clone()
            };
            if let Some(mut claim) = claim {
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
            }
            operations.insert(id, encode(&created).as_slice())?;
            let mut results = tx.open_table(OPERATION_HOSTS)?;
            for host in hosts {
                results.insert((id, host.machine_id.as_str()), encode(host).as_slice())?;
            }
            created
        };
        tx.commit()?;
        Ok(created)
    }

    pub fn update_operation_state(
        &self,
        id: u64,
        state: OperationState,
        finished: bool,
    ) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut operations = tx.open_table(OPERATIONS)?;
            let mut operation: Operation = match operations.get(id)? {
                Some(value) => decode("operations", id, value.value())?,
                None => return Ok(()),
            };
            operation.state = state;
            if finished {
                operation.finished_at_ms = Some(now_ms());
            }
            operations.insert(id, encode(&operation).as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn put_host_result(&self, operation_id: u64, host: &HostResult) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(OPERATION_HOSTS)?.insert(
            (operation_id, host.machine_id.as_str()),
            encode(host).as_slice(),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Appends output chunks (one commit for the batch) and updates the host's byte counts.
    pub fn append_output(
        &self,
        operation_id: u64,
        result: &HostResult,
        chunks: &[OutputChunk],
    ) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut output = tx.open_table(OPERATION_OUTPUT)?;
            let first = output
                .range((operation_id, 0)..=(operation_id, u64::MAX))?
                .next_back()
                .transpose()?
                .map_or(1, |(key, _)| key.value().1 + 1);
            for (seq, chunk) in (first..).zip(chunks) {
                output.insert((operation_id, seq), encode(chunk).as_slice())?;
            }
            tx.open_table(OPERATION_HOSTS)?.insert(
                (operation_id, result.machine_id.as_str()),
                encode(result).as_slice(),
            )?;
        }
        tx.commit()?;
        Ok(())
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
        let hosts = results
            .range((id, "")..)?
            .take_while(|entry| entry.as_ref().map_or(true, |(key, _)| key.value().0 == id))
            .map(|entry| {
                let (key, value) = entry?;
                decode("operation_hosts", key.value().1, value.value())
            })
            .collect::<Result<Vec<HostResult>>>()?;
        Ok(Some((operation, hosts)))
    }

    /// Output chunks of an operation after sequence number `after`, oldest first.
    pub fn operation_output(
        &self,
        id: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OutputChunk)>> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read()?;
        let output = tx.open_table(OPERATION_OUTPUT)?;
        output
            .range((id, after.saturating_add(1))..=(id, u64::MAX))?
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                Ok((
                    key.value().1,
                    decode("operation_output", key.value().1, value.value())?,
                ))
            })
            .collect()
    }

    /// The newest operations that involve `machine_id`, newest first.
    pub fn operations_for_machine(&self, machine_id: &str, limit: usize) -> Result<Vec<Operation>> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read()?;
        let operations = tx.open_table(OPERATIONS)?;
        let mut found = Vec::new();
        for entry in operations.range::<u64>(..)?.rev() {
            let (key, value) = entry?;
            let operation: Operation = decode("operations", key.value(), value.value())?;
            if operation.machines.iter().any(|m| m == machine_id) {
                found.push(operation);
                if found.len() == limit {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Marks operations left pending or running by a previous process as
    /// interrupted, with their unfinished hosts; nothing is re-run. Returns their ids.
    pub fn interrupt_unfinished_operations(&self) -> Result<Vec<u64>> {
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
                for machine in &operation.machines {
                    let key = (operation.id, machine.as_str());
                    let Some(value) = results.get(key)? else {
                        continue;
                    };
                    let mut host: HostResult = decode("operation_hosts", machine, value.value())?;
                    drop(value);
                    if !host.state.is_final() {
                        host.state = HostState::Interrupted;
                        host.finished_at_ms = Some(now_ms());
                        results.insert(key, encode(&host).as_slice())?;
                    }
                    states.push(host.state);
                }
                operation.state = match summarize(&states) {
                    OperationState::Interrupted => OperationState::Interrupted,
                    // Every host had finished; only the final write was lost.
                    other => other,
                };
                operation.finished_at_ms.get_or_insert(now_ms());
                operations.insert(operation.id, encode(&operation).as_slice())?;
                interrupted.push(operation.id);
            }
        }
        tx.commit()?;
        Ok(interrupted)
    }
}

fn is_finished(state: OperationState) -> bool {
    !matches!(state, OperationState::Pending | OperationState::Running)
}
