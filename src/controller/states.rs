//! The declared-state reconciler: settle the applies that ended, run the
//! checks that are due, ask `reconcilers::state::decide` what to apply, and
//! start the rollout's next batch as one operation.
//!
//! Everything one reconcile saw is written in one transaction; the batch's
//! apply records are written in the transaction that creates its operation,
//! so a daemon killed mid-apply restarts knowing which apply it interrupted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use linkops_reconcilers::approval;
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::grant::Place;
use linkops_reconcilers::operation::Requester;
use linkops_reconcilers::script::Script;
use linkops_reconcilers::secret::{self as secret, Secret};
use linkops_reconcilers::state::{
    self, ApplyRecord, ApplyResult, CHECK_OUTPUT_BYTES, CheckOutcome, CheckRecord, DeclaredState,
    Standing, StateDecision, Target,
};
use tracing::Instrument;

use super::reconcile::Context;
use super::scheduler::Action;
use crate::operations::{HostPlan, Plan};
use crate::store::{self, Actor, Audit, AuditAction, Outcome, now_ms};

/// What a drifted machine is held by while no approval request covers its
/// state's content yet (one is asked for at once, and this replaced).
const ASKING: &str = "awaiting approval: asking for it";

/// How often a state whose apply runs on another replica is looked at.
const APPLY_ELSEWHERE_POLL: Duration = Duration::from_secs(2);

impl Context {
    pub(super) async fn declared_state(
        &self,
        desired: &Arc<DesiredState>,
        id: &str,
    ) -> Result<Action, store::Error> {
        let Some(state) = desired.states.get(id) else {
            // Gone from Git: its records stay, nothing more is checked or applied.
            return Ok(Action::AwaitChange);
        };
        let script = desired
            .scripts
            .get(&state.script)
            .expect("validated: the state's script exists");
        let facts = self.access.trust_facts().as_text();
        let digest = desired.state_digest(state, script, &facts);
        let selected = state.targets.select(&desired.machines);
        // Applies under an approval rule wait for approvers of this content.
        let approval = {
            let places: Vec<Place> = (selected.iter())
                .map(|id| Place::find(Some(desired), id))
                .collect();
            approval::needed(&desired.approvals, &script.id, &places).map(|needed| {
                let content = approval::Content {
                    script: script.id.clone(),
                    params: state.params.clone(),
                    machines: selected.clone(),
                    rollout: Some(state.rollout),
                    concurrency: None,
                    script_digest: approval::script_digest(script),
                };
                (needed, content)
            })
        };
        let (context, asked) = (self.clone(), id.to_owned());
        let digest_asked = approval.as_ref().map(|(_, content)| content.digest());
        let (mut stored, mut targets, status, statuses, held, gate) = self
            .store
            .run(move |store| {
                let stored = store.state_targets(&asked)?;
                let mut targets = stored.clone();
                let mut status = store.state_status(&asked)?;
                context.settle_applies(&mut targets, status.as_mut())?;
                let statuses = store.machine_statuses(&selected)?;
                let gate = match digest_asked {
                    Some(digest) => {
                        let recorded = store.approvals_of(&store::Owner::State(asked))?;
                        Some(approval::gate(&recorded, &digest, now_ms()))
                    }
                    None => None,
                };
                Ok((stored, targets, status, statuses, context.held_now()?, gate))
            })
            .await?;
        let mut awaiting = match &gate {
            Some(approval::Gate::Wait { reason, .. }) => Some(reason.clone()),
            Some(approval::Gate::Ask) => Some(ASKING.to_owned()),
            Some(approval::Gate::Start { .. }) | None => None,
        };
        // The daemon's load refused a revision naming a zone it does not know.
        let zone = crate::schedules::zone(&state.zone).unwrap_or(jiff::tz::TimeZone::UTC);
        let decide = |targets: &BTreeMap<String, Target>, awaiting: Option<&str>| {
            let observed = state::Observed {
                status: status.as_ref(),
                targets,
                statuses: &statuses,
                held: &held,
                zone: &zone,
                awaiting,
            };
            state::decide(
                state,
                &digest,
                &desired.revision,
                &desired.machines,
                &observed,
                now_ms(),
            )
        };
        let mut decision = decide(&targets, awaiting.as_deref());
        let mut checks = Vec::new();
        if !decision.check.is_empty() {
            // Machines new to the state show as pending while their first checks run.
            if (decision.targets.iter()).any(|t| !stored.contains_key(&t.machine_id)) {
                let pending = StateDecision {
                    apply: Vec::new(),
                    halted_now: false,
                    ..decision.clone()
                };
                let written = stored.clone();
                let (context, desired, id) = (self.clone(), desired.clone(), id.to_owned());
                self.store
                    .run(move |_| {
                        let state = &desired.states[&id];
                        context.record_state(state, pending, &written, Vec::new(), &desired)
                    })
                    .await?;
                let shown = decision
                    .targets
                    .iter()
                    .map(|t| (t.machine_id.clone(), t.clone()));
                stored.extend(shown);
            }
            checks = self
                .run_checks(desired, state, script, &digest, &decision.check)
                .await;
            for (machine, check) in &checks {
                targets
                    .entry(machine.clone())
                    .or_insert_with(|| Target::new(id, machine, check.at_ms))
                    .checked(check.clone());
            }
            decision = decide(&targets, awaiting.as_deref());
        }
        // Drift the approvers have not seen yet: ask them, once for this content.
        let asking = (decision.targets.iter()).any(
            |target| matches!(&target.standing, Standing::Held { reason } if reason == ASKING),
        );
        if asking && let Some((needed, content)) = approval {
            let by = Requester::State {
                id: id.to_owned(),
                revision: desired.revision.clone(),
            };
            let request = approval::Request::new(needed, content, by, now_ms());
            let notifier = self.notifier.clone();
            let asked = (self.store)
                .run(move |store| super::approvals::record_request(store, &notifier, &request))
                .await?;
            awaiting = Some(format!(
                "awaiting approval: request {}, 0 of {} (`linkops approve {}`)",
                asked.id, asked.approvers, asked.id
            ));
            decision = decide(&targets, awaiting.as_deref());
        }
        let wake = decision
            .wake_after_ms
            .map_or(state.interval, |ms| {
                Duration::from_millis(u64::try_from(ms).unwrap_or(0))
            })
            .max(Duration::from_millis(200));
        // An apply another replica runs (or a gone one left, until the leader
        // ends it) sends no end here: look again shortly.
        let elsewhere = decision.targets.iter().any(|target| {
            matches!(target.standing, Standing::Applying { operation_id }
                if !self.engine.runs_here(operation_id))
        });
        let wake = match elsewhere {
            true => wake.min(APPLY_ELSEWHERE_POLL),
            false => wake,
        };
        // Machines no longer targeted keep their record, with how their last apply ended.
        let selected_now: std::collections::HashSet<&str> = decision
            .targets
            .iter()
            .map(|t| t.machine_id.as_str())
            .collect();
        let untargeted: Vec<Target> = targets
            .values()
            .filter(|t| !selected_now.contains(t.machine_id.as_str()))
            .cloned()
            .collect();
        decision.targets.extend(untargeted);
        let (context, desired, id) = (self.clone(), desired.clone(), id.to_owned());
        self.store
            .run(move |_| {
                let state = &desired.states[&id];
                context.record_state(state, decision, &stored, checks, &desired)
            })
            .await?;
        Ok(Action::Requeue(wake))
    }

    /// Reads how the applies in flight ended (from their operations) and
    /// counts the ended ones into the rollout of their content (on the blocking pool).
    fn settle_applies(
        &self,
        targets: &mut BTreeMap<String, Target>,
        mut status: Option<&mut state::StateStatus>,
    ) -> Result<(), store::Error> {
        let mut operations = BTreeMap::new();
        for target in targets.values_mut() {
            let Some(apply) = target.apply.as_mut() else {
                continue;
            };
            if apply.result != ApplyResult::Running {
                continue;
            }
            if let std::collections::btree_map::Entry::Vacant(slot) =
                operations.entry(apply.operation_id)
            {
                slot.insert(self.store.operation(apply.operation_id)?);
            }
            let host = operations[&apply.operation_id]
                .as_ref()
                .and_then(|(_, hosts)| hosts.iter().find(|h| h.machine_id == target.machine_id));
            let ended = match host {
                Some(host) => ApplyResult::of(&host.state).map(|r| (r, host.finished_at_ms)),
                // Its operation is gone (it cannot be, but the record must not stay applying).
                None => Some((ApplyResult::Interrupted, None)),
            };
            if let Some((result, finished_at_ms)) = ended {
                apply.result = result;
                apply.finished_at_ms = finished_at_ms.or(Some(now_ms()));
                if let Some(status) = status.as_deref_mut() {
                    status.count(apply);
                }
            }
        }
        Ok(())
    }

    /// Runs the checks of `machines` (a wave: `state::CHECKS_PER_DECISION` at
    /// most), as many at once as the fleet's sessions allow (`[ssh]
    /// concurrency`, which each check also takes a turn of); each result is for `digest`.
    async fn run_checks(
        &self,
        desired: &DesiredState,
        state: &DeclaredState,
        script: &Script,
        digest: &str,
        machines: &[String],
    ) -> Vec<(String, CheckRecord)> {
        let secrets = secret::named(script, &state.params, &desired.secrets);
        let targets: Vec<_> = machines
            .iter()
            .filter_map(|id| desired.machine(id).cloned())
            .collect();
        let checks: Vec<_> = targets
            .into_iter()
            .map(|machine| {
                let span = tracing::info_span!("check", machine.id = %machine.id);
                self.check_one(machine, state, script, &secrets, digest)
                    .instrument(span)
            })
            .collect();
        futures::stream::iter(checks)
            .buffer_unordered(self.access.session_limit())
            .collect()
            .await
    }

    async fn check_one(
        &self,
        machine: linkops_reconcilers::machine::Machine,
        state: &DeclaredState,
        script: &Script,
        secrets: &BTreeMap<String, Secret>,
        digest: &str,
    ) -> (String, CheckRecord) {
        let id = machine.id.clone();
        let at_ms = now_ms();
        let ran = self
            .engine
            .check(
                machine,
                script,
                &state.params,
                secrets.clone(),
                CHECK_OUTPUT_BYTES,
            )
            .await;
        let (outcome, output, duration) = match ran {
            Ok(run) => (CheckOutcome::of(&run.end), run.output, run.duration),
            Err(error) => (
                CheckOutcome::Error {
                    message: error.to_string(),
                },
                String::new(),
                Duration::ZERO,
            ),
        };
        tracing::debug!(?outcome, "checked");
        let record = CheckRecord {
            digest: digest.to_owned(),
            at_ms,
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            outcome,
            output,
        };
        (id, record)
    }

    /// Writes what the reconcile saw and decided, then starts the batch it
    /// decided on (whose records its operation's transaction writes); on the
    /// blocking pool.
    fn record_state(
        &self,
        state: &DeclaredState,
        decision: StateDecision,
        stored: &BTreeMap<String, Target>,
        checks: Vec<(String, CheckRecord)>,
        desired: &DesiredState,
    ) -> Result<(), store::Error> {
        let StateDecision {
            apply,
            targets,
            status,
            halted_now,
            ..
        } = decision;
        let mut audits = Vec::new();
        if halted_now && let Some(halt) = &status.halted {
            tracing::warn!(state = %state.id, reason = %halt.reason, "rollout halted");
            audits.push(Audit {
                actor: Actor::System,
                action: AuditAction::StateRolloutHalted,
                target: state.id.clone(),
                outcome: Outcome::Failure,
                detail: Some(halt.reason.clone()),
            });
        }
        let changed: Vec<Target> = targets
            .iter()
            .filter(|t| stored.get(&t.machine_id) != Some(*t))
            .cloned()
            .collect();
        let drifted = state::drifted(stored, &targets);
        if !drifted.is_empty() {
            tracing::warn!(state = %state.id, machines = ?drifted, "drifted");
        }
        let notifier = &self.notifier;
        let (statuses, events) = linkops_reconcilers::outbox::for_state(
            &status,
            &drifted,
            halted_now,
            notifier.console_url(),
            now_ms(),
        );
        let outgoing = notifier.route(statuses, events);
        self.store.put_state(store::StateWrite {
            status: status.clone(),
            targets: changed,
            checks,
            audits,
            outgoing,
        })?;
        if apply.is_empty() {
            return Ok(());
        }
        let script = desired
            .scripts
            .get(&state.script)
            .expect("validated: the state's script exists");
        let now = now_ms();
        let mut batch = Vec::new();
        let mut hosts = Vec::new();
        for id in &apply {
            let (Some(machine), Some(target)) = (
                desired.machine(id),
                targets.iter().find(|t| &t.machine_id == id),
            ) else {
                continue;
            };
            let mut target = target.clone();
            target.apply = Some(ApplyRecord {
                digest: status.digest.clone(),
                // The store fills it in when it creates the operation.
                operation_id: 0,
                started_at_ms: now,
                finished_at_ms: None,
                result: ApplyResult::Running,
            });
            batch.push(target);
            hosts.push(HostPlan::Run(machine.clone()));
        }
        let plan = Plan {
            script: script.clone(),
            params: state.params.clone(),
            secrets: secret::named(script, &state.params, &desired.secrets),
            hosts,
            requested_by: Requester::State {
                id: state.id.clone(),
                revision: desired.revision.clone(),
            },
            concurrency: None,
            rollout: None,
            retry_of: None,
        };
        let claim = store::Claim::StateApply {
            status,
            targets: batch,
        };
        match self.engine.start(plan, Some(claim)) {
            Ok(operation) => {
                tracing::info!(state = %state.id, operation = operation.id, machines = ?apply, "applying");
                Ok(())
            }
            Err(crate::operations::Error::Store(error @ store::Error::AlreadyApplying { .. })) => {
                tracing::info!(%error, "not applying");
                Ok(())
            }
            Err(crate::operations::Error::Store(error)) => Err(error),
            // Parameters were checked when the revision loaded: this is a bug, said loudly.
            Err(error) => {
                tracing::error!(state = %state.id, %error, "cannot start the state's apply");
                Ok(())
            }
        }
    }
}
