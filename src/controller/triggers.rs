//! Inbound triggers' requests (`POST /api/triggers/{name}`): the caller
//! proven by the trigger's own token or HMAC key — a token for one trigger
//! is useless for another — the body read as the trigger says
//! (`reconcilers::trigger`), and each run it asks for placed and started,
//! admitted by the dedup window and rate in the operation's own transaction
//! (so replicas answering resends agree).

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::operation::Requester;
use linkops_reconcilers::run;
use linkops_reconcilers::script::Targets;
use linkops_reconcilers::trigger::{self, Asked, Auth, Refusal, Trigger, TriggerRun};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::Controller;
use crate::contract::{TriggerAnswer, TriggerOutcome, TriggerRunView};
use crate::operations::{HostPlan, Plan};
use crate::store::{self, Actor, AuditAction, Outcome, now_ms};

/// Why a trigger's request was refused whole.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("no trigger {0:?} in the applied revision (triggers/*.yaml declares them)")]
    Unknown(String),
    #[error("{0}")]
    Unauthorized(String),
    /// The trigger's own token or key could not be read: the operator's to fix.
    #[error("trigger {trigger:?} has no key to check callers against: {reason}")]
    NoKey { trigger: String, reason: String },
    #[error("trigger {trigger:?} refused the body: {reason}")]
    Body { trigger: String, reason: String },
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl TriggerError {
    /// The metric's word.
    pub fn name(&self) -> &'static str {
        match self {
            TriggerError::Unknown(_) => "unknown",
            TriggerError::Unauthorized(_) => "unauthorized",
            TriggerError::NoKey { .. } => "no_key",
            TriggerError::Body { .. } => "bad_body",
            TriggerError::Store(_) => "store",
        }
    }
}

/// What a request says of its caller: its `Authorization` and
/// `X-LinkOps-Signature` headers, as sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Proof<'a> {
    pub authorization: Option<&'a str>,
    pub signature: Option<&'a str>,
}

impl Controller {
    /// Answers a request to trigger `name` (its key from a sealed secret or
    /// from `<secrets_dir>/<name>.secret`): each run the body asks for,
    /// started (or, in a dry run, said).
    pub async fn trigger(
        &self,
        name: &str,
        proof: Proof<'_>,
        body: &[u8],
        secrets_dir: &Path,
    ) -> Result<TriggerAnswer, TriggerError> {
        let desired = self.context.desired.borrow().clone();
        let desired = desired.ok_or_else(|| TriggerError::Unknown(name.to_owned()))?;
        let Some(declared) = desired.triggers.get(name).cloned() else {
            return Err(TriggerError::Unknown(name.to_owned()));
        };
        let key = {
            let (engine, desired, declared) = (
                self.context.engine.clone(),
                desired.clone(),
                declared.clone(),
            );
            let file = secrets_dir.join(format!("{name}.secret"));
            crate::blocking::run(move || key_of(&declared, &desired, engine.keyring(), &file))
                .await
                .map_err(|_| store::Error::ShuttingDown)??
        };
        verify(&declared, &key, proof, body)?;
        let body: serde_json::Value =
            serde_json::from_slice(body).map_err(|error| TriggerError::Body {
                trigger: name.to_owned(),
                reason: format!("not JSON: {error}"),
            })?;
        let catalog = trigger::Catalog {
            scripts: &desired.scripts,
            machines: &desired.machines,
            secrets: &desired.secrets,
        };
        let asked =
            trigger::asks(&declared, &body, &catalog).map_err(|reason| TriggerError::Body {
                trigger: name.to_owned(),
                reason,
            })?;
        let mut runs = Vec::with_capacity(asked.len());
        for ask in asked {
            let view = self.answer(&declared, &desired, ask).await?;
            let labels = crate::metrics::TriggerLabels {
                trigger: declared.name.clone(),
                result: view.outcome.name(),
            };
            self.context
                .metrics
                .trigger_runs
                .get_or_create(&labels)
                .inc();
            runs.push(view);
        }
        Ok(TriggerAnswer {
            trigger: declared.name,
            revision: desired.revision.clone(),
            dry_run: declared.dry_run,
            runs,
        })
    }

    /// What becomes of one thing a request asked for.
    async fn answer(
        &self,
        declared: &Trigger,
        desired: &std::sync::Arc<DesiredState>,
        ask: Asked,
    ) -> Result<TriggerRunView, store::Error> {
        let (alert, machine, params, key) = match ask {
            Asked::Run {
                alert,
                machine,
                params,
                key,
            } => (alert, machine, params, key),
            Asked::Ignored { alert, reason } => {
                return Ok(TriggerRunView {
                    alert,
                    machine: None,
                    outcome: TriggerOutcome::Ignored { reason },
                });
            }
            Asked::Refused { alert, reason } => {
                // Refused after the caller proved it holds the key: audited.
                let (name, detail) = (declared.name.clone(), reason.clone());
                (self.context.store)
                    .run(move |store| {
                        let actor = Actor::Trigger(name.clone());
                        let refused = AuditAction::TriggerRefused;
                        store.audit(&actor, refused, &name, Outcome::Denied, Some(detail))
                    })
                    .await?;
                return Ok(TriggerRunView {
                    alert,
                    machine: None,
                    outcome: TriggerOutcome::Refused { reason },
                });
            }
        };
        let view = |outcome| TriggerRunView {
            alert: alert.clone(),
            machine: Some(machine.clone()),
            outcome,
        };
        if declared.dry_run {
            return Ok(view(TriggerOutcome::WouldRun { params }));
        }
        let targets = Targets {
            machines: vec![machine.clone()],
            ..Targets::default()
        };
        // A machine not checked since the daemon started is checked first.
        let selected = vec![machine.clone()];
        let held = self.held().await?;
        if let Some(reason) = run::refused_by_suspension(&held, &selected) {
            return Ok(view(TriggerOutcome::NotStarted { reason }));
        }
        let statuses_of =
            |ids: Vec<String>| (self.context.store).run(move |store| store.machine_statuses(&ids));
        if run::first_unchecked(&selected, &statuses_of(selected.clone()).await?).is_some()
            && let Err(error) = self.verify(&machine, None).await
        {
            return Ok(view(TriggerOutcome::NotStarted {
                reason: error.to_string(),
            }));
        }
        let statuses = statuses_of(selected).await?;
        let placements = run::place(&targets, &desired.machines, &statuses, &held);
        if let Some((_, run::Placement::Skip { reason })) = placements.first() {
            return Ok(view(TriggerOutcome::NotStarted {
                reason: reason.clone(),
            }));
        }
        let script = desired
            .scripts
            .get(&declared.script)
            .expect("asks resolved the script")
            .clone();
        let plan = Plan {
            secrets: linkops_reconcilers::secret::named(&script, &params, &desired.secrets),
            script,
            params,
            hosts: HostPlan::from_placements(placements),
            requested_by: Requester::Trigger {
                name: declared.name.clone(),
                alert: alert.clone(),
                revision: desired.revision.clone(),
            },
            concurrency: None,
            rollout: None,
            retry_of: None,
        };
        let claim = store::Claim::Trigger {
            run: TriggerRun {
                trigger: declared.name.clone(),
                key,
                machine: machine.clone(),
                at_ms: now_ms(),
                operation_id: 0,
            },
            trigger: Box::new(declared.clone()),
        };
        let engine = self.context.engine.clone();
        let started = crate::blocking::run(move || engine.start(plan, Some(claim)))
            .await
            .map_err(|_| store::Error::ShuttingDown)?;
        Ok(view(match started {
            Ok(operation) => {
                tracing::info!(trigger = %declared.name, machine, operation = operation.id, "a trigger started a run");
                TriggerOutcome::Started {
                    operation_id: operation.id,
                }
            }
            Err(crate::operations::Error::Store(store::Error::TriggerRefused {
                refusal, ..
            })) => match refusal {
                Refusal::Duplicate { .. } => TriggerOutcome::Duplicate {
                    reason: refusal.to_string(),
                },
                Refusal::Rate { .. } => TriggerOutcome::RateLimited {
                    reason: refusal.to_string(),
                },
            },
            Err(crate::operations::Error::Store(error)) => return Err(error),
            Err(error) => TriggerOutcome::NotStarted {
                reason: error.to_string(),
            },
        }))
    }
}

/// The trigger's token or HMAC key: its sealed secret's value, or the
/// 0600 file's content (trimmed).
fn key_of(
    declared: &Trigger,
    desired: &DesiredState,
    keyring: &crate::sealed::Keyring,
    file: &Path,
) -> Result<Zeroizing<Vec<u8>>, TriggerError> {
    let no_key = |reason: String| TriggerError::NoKey {
        trigger: declared.name.clone(),
        reason,
    };
    match &declared.secret {
        Some(name) => {
            let secret = (desired.secrets.get(name))
                .ok_or_else(|| no_key(format!("no secret {name:?} in the revision")))?;
            let value = keyring
                .open(secret)
                .map_err(|error| no_key(error.to_string()))?;
            let trimmed = value.trim_ascii().to_vec();
            Ok(Zeroizing::new(trimmed))
        }
        None => {
            let text = crate::secrets::read_private(file).map_err(|error| {
                no_key(format!(
                    "{error} (write its token there, mode 0600, or name a sealed secret in the trigger's `secret`)"
                ))
            })?;
            Ok(Zeroizing::new(text.into_bytes()))
        }
    }
}

/// Whether the request proves its caller holds `key`: the bearer token, or
/// the body's HMAC-SHA256 under it. Compared in constant time.
fn verify(
    declared: &Trigger,
    key: &[u8],
    proof: Proof<'_>,
    body: &[u8],
) -> Result<(), TriggerError> {
    let refused =
        |how: &str| TriggerError::Unauthorized(format!("trigger {:?}: {how}", declared.name));
    match declared.auth {
        Auth::Bearer => {
            let token = (proof.authorization)
                .and_then(|value| value.strip_prefix("Bearer "))
                .ok_or_else(|| refused("no `Authorization: Bearer <token>` header"))?;
            // Equal tokens have equal tags; `verify_slice` compares in constant time.
            let tag = |token: &[u8]| {
                let mut mac = Hmac::<Sha256>::new_from_slice(token).expect("any key length");
                mac.update(b"linkops trigger token");
                mac
            };
            let expected = tag(key).finalize().into_bytes();
            tag(token.trim().as_bytes())
                .verify_slice(&expected)
                .map_err(|_| refused("the bearer token is not this trigger's"))
        }
        Auth::HmacSha256 => {
            let signature = (proof.signature)
                .and_then(|value| value.strip_prefix("sha256="))
                .and_then(|hex| hex::decode(hex.trim()).ok())
                .ok_or_else(|| refused("no `X-LinkOps-Signature: sha256=<hex>` header"))?;
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
            mac.update(body);
            mac.verify_slice(&signature).map_err(|_| {
                refused("the signature does not match the body under this trigger's key")
            })
        }
    }
}
