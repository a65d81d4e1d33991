//! Runs asked for by hand — `POST /api/operations/run` and a retry —
//! resolved as a run-request's file is ([`ask`]), placed on the machines that
//! may take them, and started.

use linkops_reconcilers::approval;
use linkops_reconcilers::ask::{self, Ask};
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::enrollment::Enrollment;
use linkops_reconcilers::grant::{self, Held, Place};
use linkops_reconcilers::operation::{Operation, Requester};
use linkops_reconcilers::run;
use linkops_reconcilers::script::Targets;

use super::Controller;
use crate::operations::{self, HostPlan, Plan};
use crate::store;

/// Why a run asked for by hand was not started.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no desired state has been applied yet: nothing to run")]
    NothingApplied,
    #[error("no operation {0}")]
    NoSuchOperation(u64),
    /// The ask does not fit the catalog or the inventory; `field` names the part.
    #[error("{message}")]
    Unfit { field: String, message: String },
    /// Not now, or not this: the message says why and what to do instead.
    #[error("{0}")]
    Conflict(String),
    /// The caller's grants do not reach every machine for the script.
    #[error("{0}")]
    NotGranted(grant::Refusal),
    /// Protected machines among the selected, and no fresh second factor.
    #[error("running on protected machines {} asks for a fresh second factor", .0.join(", "))]
    SecondFactor(Vec<String>),
    /// Not started: it waits for approvers (`access.yaml`'s approvals).
    #[error("run awaits approval (request {})", .0.id)]
    AwaitingApproval(Box<approval::Request>),
    #[error(transparent)]
    Check(#[from] super::Error),
    #[error(transparent)]
    Start(#[from] operations::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Who asks for a run by hand: their name, the grants they hold now, and
/// whether they gave a second factor recently enough for protected machines.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub name: &'a str,
    pub grants: &'a Held,
    pub second_factor_fresh: bool,
}

impl Controller {
    /// Runs `ask` (at most `concurrency` machines at once), for `by`.
    pub async fn run(
        &self,
        ask: Ask,
        concurrency: Option<usize>,
        by: Caller<'_>,
    ) -> Result<Operation, RunError> {
        let desired = self.applied()?;
        let resolved = ask
            .resolve(&desired.scripts, &desired.machines, &desired.secrets)
            .map_err(|problems| {
                let problem = problems.into_iter().next().expect("at least one problem");
                RunError::Unfit {
                    field: problem.field(),
                    message: problem.to_string(),
                }
            })?;
        self.start(&desired, resolved, by, concurrency, None).await
    }

    /// Runs operation `id`'s script with its values again (for `by`), on
    /// its machines that failed, timed out or were interrupted.
    pub async fn retry(&self, id: u64, by: Caller<'_>) -> Result<Operation, RunError> {
        let (operation, hosts) = (self.context.store)
            .run(move |store| store.operation(id))
            .await?
            .ok_or(RunError::NoSuchOperation(id))?;
        if let Requester::State { id: state_id, .. } = &operation.requested_by {
            // A state's applies keep its windows, rollout and halt: retried by hand they would not.
            return Err(RunError::Conflict(format!(
                "operation {id} applied state {state_id}, whose applies follow its windows and \
                 rollout: resume the state instead (POST /api/states/{state_id}/resume)"
            )));
        }
        if operation.finished_at_ms.is_none() {
            return Err(RunError::Conflict(format!(
                "operation {id} is still {}: retry it once it has ended",
                operation.state.name()
            )));
        }
        let again: Vec<String> = hosts
            .into_iter()
            .filter(|host| host.state.is_retried())
            .map(|host| host.machine_id)
            .collect();
        if again.is_empty() {
            return Err(RunError::Conflict(format!(
                "no machine of operation {id} failed, timed out or was interrupted: nothing to retry"
            )));
        }
        let desired = self.applied()?;
        // The values it ran with, checked against the script as it is now.
        let ask = Ask {
            script: operation.script.clone(),
            params: operation.params,
            targets: Targets {
                machines: again,
                ..Targets::default()
            },
            rollout: operation.rollout,
        };
        let resolved = ask
            .resolve(&desired.scripts, &desired.machines, &desired.secrets)
            .map_err(|problems| {
                let problem = problems.into_iter().next().expect("at least one problem");
                let message = match &problem {
                    ask::Problem::UnknownScript(script) => {
                        format!("script {script:?} is no longer in the catalog")
                    }
                    ask::Problem::Param { name, message } => format!(
                        "parameter {name} no longer fits script {}: {message}",
                        operation.script
                    ),
                    problem => problem.to_string(),
                };
                RunError::Unfit {
                    field: problem.field(),
                    message,
                }
            })?;
        self.start(&desired, resolved, by, None, Some(id)).await
    }

    fn applied(&self) -> Result<std::sync::Arc<DesiredState>, RunError> {
        let desired = self.context.desired.borrow().clone();
        desired.ok_or(RunError::NothingApplied)
    }

    /// Where a run goes: nowhere unless `grants` permit its script on every
    /// machine it selects. Nothing starts on a suspended machine (the whole run
    /// is refused when nothing it selects may start). Right after a start or an
    /// inventory change a target may not have been checked yet: it is checked
    /// now rather than skipped as "not checked yet".
    async fn placed(
        &self,
        desired: &DesiredState,
        resolved: &ask::Resolved<'_>,
        by: Caller<'_>,
    ) -> Result<Vec<HostPlan>, RunError> {
        let targets = &resolved.targets;
        let selected = targets.select(&desired.machines);
        let machines: Vec<Place> = selected
            .iter()
            .filter_map(|id| desired.machine(id).map(Place::from))
            .collect();
        (by.grants.permits_run(&resolved.script.id, &machines)).map_err(RunError::NotGranted)?;
        let protected: Vec<String> = (machines.iter())
            .filter(|machine| machine.protected)
            .map(|machine| machine.id.to_owned())
            .collect();
        if !protected.is_empty() && !by.second_factor_fresh {
            return Err(RunError::SecondFactor(protected));
        }
        let held = self.held().await?;
        if let Some(reason) = run::refused_by_suspension(&held, &selected) {
            return Err(RunError::Conflict(format!("nothing was started: {reason}")));
        }
        let statuses_of = |selected: Vec<String>| {
            (self.context.store).run(move |store| store.machine_statuses(&selected))
        };
        let before = statuses_of(selected.clone()).await?;
        let unchecked = selected.iter().filter(|id| {
            held.refusal(Some(id)).is_none()
                && before
                    .get(*id)
                    .is_none_or(|status| status.enrollment == Enrollment::Unknown)
        });
        let checks = unchecked.map(|id| self.verify(id, None));
        for checked in futures::future::join_all(checks).await {
            checked?;
        }
        let statuses = statuses_of(selected).await?;
        let placements = run::place(targets, &desired.machines, &statuses, &held);
        Ok(HostPlan::from_placements(placements))
    }

    /// Places `resolved` and starts it as asked by `by` (at most
    /// `concurrency` machines at once; retrying operation `retry_of`).
    async fn start(
        &self,
        desired: &DesiredState,
        resolved: ask::Resolved<'_>,
        by: Caller<'_>,
        concurrency: Option<usize>,
        retry_of: Option<u64>,
    ) -> Result<Operation, RunError> {
        let mut resolved = resolved;
        if resolved.targets.asks_facts() {
            let (asked, machines) = (resolved.targets.clone(), desired.machines.clone());
            let chosen = (self.context.store)
                .run(move |store| store.on_facts(&asked, &machines))
                .await?;
            if chosen.machines.is_empty() {
                return Err(RunError::Unfit {
                    field: "targets.where".into(),
                    message: "no machine's facts match `where` now (`linkops facts` shows them): nothing was started".into(),
                });
            }
            resolved.targets = chosen;
        }
        let hosts = self.placed(desired, &resolved, by).await?;
        let places: Vec<Place> = (hosts.iter())
            .map(|host| Place::find(Some(desired), host.machine_id()))
            .collect();
        if let Some(needed) = approval::needed(&desired.approvals, &resolved.script.id, &places) {
            let content = approval::Content {
                script: resolved.script.id.clone(),
                params: resolved.params.clone(),
                machines: hosts
                    .iter()
                    .map(|host| host.machine_id().to_owned())
                    .collect(),
                rollout: resolved.rollout,
                concurrency,
                script_digest: approval::script_digest(resolved.script),
            };
            let by = Requester::User {
                name: by.name.into(),
            };
            let request = self.request_approval(needed, content, by).await?;
            return Err(RunError::AwaitingApproval(Box::new(request)));
        }
        let secrets = (resolved.secrets.iter())
            .map(|(param, secret)| (param.clone(), (*secret).clone()))
            .collect();
        let plan = Plan {
            script: resolved.script.clone(),
            params: resolved.params,
            secrets,
            hosts,
            requested_by: Requester::User {
                name: by.name.into(),
            },
            concurrency,
            rollout: resolved.rollout,
            retry_of,
        };
        let engine = self.context.engine.clone();
        match crate::blocking::run(move || engine.start(plan, None)).await {
            Ok(started) => Ok(started?),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(store::Error::ShuttingDown.into()),
        }
    }
}
