//! The schedule reconciler: reads a schedule's latest fire (or when it was
//! first seen), asks `reconcilers::schedule::decide` what to do now, and
//! waits, records a passed fire, or claims and starts the fire due — the
//! claim in the operation's own transaction, so a fire runs at most once
//! whatever restarts, `kill -9`s or replicas. On the blocking pool: nothing
//! here waits for a machine.

use std::time::Duration;

use jiff::Timestamp;
use linkops_reconcilers::approval;
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::grant::Place;
use linkops_reconcilers::operation::Requester;
use linkops_reconcilers::run;
use linkops_reconcilers::schedule::{
    self, FireOutcome, FireRecord, Fired, Schedule, ScheduleDecision,
};
use linkops_reconcilers::suspension;

use super::reconcile::Context;
use super::scheduler::Action;
use crate::operations::{HostPlan, Plan};
use crate::store::{self, now_ms};

/// How often a fire queued behind a running one looks again, should the
/// running one's end (which wakes it) be missed.
const QUEUED_RECHECK: Duration = Duration::from_secs(60);
/// How often a fire due looks again while its machines wait for their first check.
const FIRST_CHECKS_RECHECK: Duration = Duration::from_millis(500);

impl Context {
    pub(super) fn schedule(
        &self,
        desired: &DesiredState,
        name: &str,
    ) -> Result<Action, store::Error> {
        let Some(declared) = desired.schedules.get(name) else {
            // Gone from Git: no more fires; its record stays.
            return Ok(Action::AwaitChange);
        };
        // The daemon's load refused unknown zones and bad expressions: these hold.
        let (zone, cron) = match (
            crate::schedules::zone(&declared.zone),
            schedule::parse_cron(&declared.cron),
        ) {
            (Ok(zone), Ok(cron)) => (zone, cron),
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(schedule = name, %error, "the schedule cannot fire");
                return Ok(Action::AwaitChange);
            }
        };
        let now = now_ms();
        let last = self.store.schedule_fires(name, 1)?.pop();
        // A fire awaiting its approvers counts as running until they decide.
        let running = match &last {
            Some(FireRecord {
                outcome: FireOutcome::Started { operation_id },
                ..
            }) => (self.store.operation(*operation_id)?)
                .is_some_and(|(operation, _)| !operation.state.is_finished()),
            Some(FireRecord {
                outcome: FireOutcome::AwaitingApproval { approval },
                ..
            }) => (self.store.approval(*approval)?).is_some_and(|request| {
                matches!(
                    request.state_at(now),
                    approval::RequestState::AwaitingApproval | approval::RequestState::Approved
                )
            }),
            _ => false,
        };
        let last_due = match &last {
            Some(fire) => fire.due_ms,
            None => self.store.schedule_since(name, now)?,
        };
        let fired = Fired {
            last_due: instant(last_due),
            running,
        };
        let held = self.held_now()?;
        let hold = crate::schedules::hold(declared, desired, &held, instant(now));
        match schedule::decide(declared, &cron, &zone, fired, hold.as_ref(), instant(now)) {
            ScheduleDecision::Idle => Ok(Action::AwaitChange),
            ScheduleDecision::WaitUntil(due) => Ok(Action::Requeue(until(due, now))),
            ScheduleDecision::Queue { .. } => Ok(Action::Requeue(QUEUED_RECHECK)),
            ScheduleDecision::Held {
                due,
                reason,
                look_again,
            } => {
                tracing::debug!(schedule = name, due = %due, %reason, "a fire is held");
                Ok(Action::Requeue(until(look_again, now)))
            }
            ScheduleDecision::Pass { due, outcome } => {
                tracing::info!(schedule = name, due = %due, ?outcome, "a fire passed");
                let fire = self.fire(declared, due, desired, outcome);
                match self.store.record_passed_fire(&fire, &[]) {
                    Ok(()) | Err(store::Error::AlreadyFired { .. }) => {}
                    Err(error) => return Err(error),
                }
                self.count_fire(&fire);
                Ok(Action::Requeue(Duration::ZERO))
            }
            ScheduleDecision::Fire { due } => {
                // Just started: its machines are checked first (within seconds;
                // a fire kept waiting past its minute is missed, as its policy says).
                let selected = declared.targets.select(&desired.machines);
                let statuses = self.store.machine_statuses(&selected)?;
                if run::first_unchecked(&selected, &statuses).is_some() {
                    return Ok(Action::Requeue(FIRST_CHECKS_RECHECK));
                }
                self.start_fire(declared, due, desired, &statuses, &held)?;
                Ok(Action::Requeue(Duration::ZERO))
            }
        }
    }

    /// Claims the fire due at `due` and starts its operation (one transaction),
    /// on the machines placed by `statuses` (those of every machine its
    /// targets name: a `where` only narrows them).
    fn start_fire(
        &self,
        declared: &Schedule,
        due: Timestamp,
        desired: &DesiredState,
        statuses: &run::Statuses,
        held: &suspension::Held,
    ) -> Result<(), store::Error> {
        let script = desired
            .scripts
            .get(&declared.script)
            .expect("validated: the script exists");
        // `where` is decided on the facts as they are at the fire.
        let targets = match declared.targets.asks_facts() {
            true => self.store.on_facts(&declared.targets, &desired.machines)?,
            false => declared.targets.clone(),
        };
        let placements = run::place(&targets, &desired.machines, statuses, held);
        let params = declared.resolved.clone();
        let places: Vec<Place> = (placements.iter())
            .map(|(id, _)| Place::find(Some(desired), id))
            .collect();
        if let Some(needed) = approval::needed(&desired.approvals, &script.id, &places) {
            // It waits for approvers: the request claims the fire.
            let content = approval::Content {
                script: script.id.clone(),
                params,
                machines: placements.iter().map(|(id, _)| id.clone()).collect(),
                rollout: declared.rollout,
                concurrency: None,
                script_digest: approval::script_digest(script),
            };
            let by = Requester::Schedule {
                name: declared.name.clone(),
                due_ms: due.as_millisecond(),
                revision: desired.revision.clone(),
            };
            let request = approval::Request::new(needed, content, by, now_ms());
            let fire = self.fire(
                declared,
                due,
                desired,
                FireOutcome::AwaitingApproval { approval: 0 },
            );
            let asked = super::approvals::record_request_with(
                &self.store,
                &self.notifier,
                &request,
                Some(&fire),
            );
            return match asked {
                Ok(_) => {
                    self.count_fire(&fire);
                    Ok(())
                }
                Err(store::Error::AlreadyFired { .. }) => Ok(()),
                Err(error) => Err(error),
            };
        }
        let plan = Plan {
            script: script.clone(),
            secrets: linkops_reconcilers::secret::named(script, &params, &desired.secrets),
            params,
            hosts: HostPlan::from_placements(placements),
            requested_by: Requester::Schedule {
                name: declared.name.clone(),
                due_ms: due.as_millisecond(),
                revision: desired.revision.clone(),
            },
            concurrency: None,
            rollout: declared.rollout,
            retry_of: None,
        };
        // The store fills in the operation id as it creates the operation.
        let claim = self.fire(
            declared,
            due,
            desired,
            FireOutcome::Started { operation_id: 0 },
        );
        match self
            .engine
            .start(plan, Some(store::Claim::Fire(claim.clone())))
        {
            Ok(operation) => {
                tracing::info!(schedule = %declared.name, due = %due, operation = operation.id, "a fire started");
                self.count_fire(&claim);
                Ok(())
            }
            // Another replica, or this one before a restart, has it.
            Err(crate::operations::Error::Store(store::Error::AlreadyFired { .. })) => Ok(()),
            Err(crate::operations::Error::Store(error)) => Err(error),
            Err(error) => {
                // Nothing could run (no machine, say): the fire is recorded as skipped, with why.
                let reason = error.to_string();
                tracing::warn!(schedule = %declared.name, due = %due, %reason, "a fire could not start");
                let (status, event) = linkops_reconcilers::outbox::for_fire_not_started(
                    &declared.name,
                    &desired.revision,
                    &reason,
                    self.notifier.console_url(),
                    now_ms(),
                );
                let outgoing = self.notifier.route(vec![status], vec![event]);
                let fire = self.fire(declared, due, desired, FireOutcome::Skipped { reason });
                match self.store.record_passed_fire(&fire, &outgoing) {
                    Ok(()) | Err(store::Error::AlreadyFired { .. }) => Ok(()),
                    Err(error) => Err(error),
                }
            }
        }
    }

    fn fire(
        &self,
        declared: &Schedule,
        due: Timestamp,
        desired: &DesiredState,
        outcome: FireOutcome,
    ) -> FireRecord {
        FireRecord {
            schedule: declared.name.clone(),
            due_ms: due.as_millisecond(),
            digest: declared.digest(),
            revision: desired.revision.clone(),
            at_ms: now_ms(),
            outcome,
        }
    }

    fn count_fire(&self, fire: &FireRecord) {
        let labels = crate::metrics::ResultLabels {
            result: fire.outcome.name(),
        };
        self.metrics.schedule_fires.get_or_create(&labels).inc();
        let late_ms = (fire.at_ms - fire.due_ms).max(0);
        self.metrics
            .schedule_lateness
            .observe(late_ms as f64 / 1000.0);
    }
}

fn instant(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// How long from `now_ms` until `due`.
fn until(due: Timestamp, now_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(due.as_millisecond() - now_ms).unwrap_or(0))
}
