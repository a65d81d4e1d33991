//! Inbound triggers (`triggers/<name>.yaml`): an authenticated webhook that
//! runs one catalog script, on machines the trigger allows, with parameters
//! taken from the request. Here: what a request asks for — each firing alert
//! of an Alertmanager payload (or a JSON body as a whole) mapped to one
//! machine and its parameters, checked against the trigger's machines and the
//! script's parameter types — and the key a resend is recognised by. Who may
//! call (the token or signature) and how often are the shell's and the
//! store's to hold.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ask::Ask;
use crate::machine::Machine;
use crate::script::{ParamType, ParamValue, Script, Targets};
use crate::secret::Secret;

/// The most runs one request may ask for (Alertmanager groups alerts: a
/// bigger group is refused whole, naming this bound).
pub const MAX_ASKS: usize = 64;
/// The longest path into a request a mapping may name (`labels.instance`).
pub const MAX_PATH: usize = 128;

/// A trigger as the repository declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Trigger {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Repository path of the file that declares it.
    pub file: String,
    /// The one catalog script it runs.
    pub script: String,
    /// The machines it may run on; a request naming another is refused.
    pub machines: Targets,
    pub format: Format,
    /// Where in each alert (or the body) the machine is named: its id, or its
    /// host (a `:port` after it, as Prometheus's `instance` has, is dropped).
    pub machine: String,
    /// Parameters taken from the request: parameter → where in the alert.
    pub map: BTreeMap<String, String>,
    /// Parameters fixed in the file.
    pub params: BTreeMap<String, ParamValue>,
    pub auth: Auth,
    /// The sealed secret (`secrets/<name>.yaml`) holding its token or HMAC
    /// key; absent, the 0600 file `<[triggers] secrets_dir>/<name>.secret`.
    pub secret: Option<String>,
    /// A request asking for what ran within this long (same machine, same
    /// parameters) does nothing: Alertmanager resends firing alerts.
    #[schema(value_type = crate::DurationSchema)]
    pub dedup: Duration,
    pub rate: Rate,
    /// Answers what it would run, runs nothing.
    pub dry_run: bool,
}

/// What a request's body is.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Alertmanager's webhook (version 4): each firing alert is one run;
    /// paths start at the alert (`labels.instance`).
    #[default]
    Alertmanager,
    /// Any JSON object: one run; paths start at the body.
    Json,
}

/// How a caller proves it may call.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    /// `Authorization: Bearer <token>` (Alertmanager's `http_config.authorization`).
    #[default]
    Bearer,
    /// `X-LinkOps-Signature: sha256=<hex>`: HMAC-SHA256 of the body under the key.
    HmacSha256,
}

/// At most `runs` runs started in any `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rate {
    pub runs: u32,
    #[schema(value_type = crate::DurationSchema)]
    pub per: Duration,
}

impl Default for Rate {
    fn default() -> Rate {
        Rate {
            runs: 10,
            per: Duration::from_secs(3600),
        }
    }
}

/// What a request asks for, item by item (an alert, or the body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "asked", rename_all = "snake_case")]
pub enum Asked {
    /// A run of the script on `machine` with `params` (resolved, defaults in).
    Run {
        /// The alert's fingerprint, when Alertmanager gave one.
        alert: Option<String>,
        machine: String,
        params: BTreeMap<String, ParamValue>,
        /// What a resend is recognised by: the trigger, machine and parameters, digested.
        key: String,
    },
    /// Nothing to run: a resolved alert.
    Ignored {
        alert: Option<String>,
        reason: String,
    },
    /// Refused: a machine the trigger may not run on, a parameter the
    /// script would not take.
    Refused {
        alert: Option<String>,
        reason: String,
    },
}

/// What the catalog a request is read against holds.
pub struct Catalog<'a> {
    pub scripts: &'a BTreeMap<String, Script>,
    pub machines: &'a [Machine],
    pub secrets: &'a BTreeMap<String, Secret>,
}

/// Reads `body` as `trigger` says: what each of its items asks for, or why
/// the body as a whole is refused (not the trigger's format, too many items).
pub fn asks(trigger: &Trigger, body: &Value, catalog: &Catalog<'_>) -> Result<Vec<Asked>, String> {
    let items: Vec<&Value> = match trigger.format {
        Format::Json => vec![body],
        Format::Alertmanager => {
            if body.get("version").and_then(Value::as_str) != Some("4") {
                return Err(
                    "not an Alertmanager webhook payload of version 4 (\"version\": \"4\", \"alerts\": [...])"
                        .into(),
                );
            }
            let alerts = body.get("alerts").and_then(Value::as_array);
            alerts
                .ok_or("the payload has no \"alerts\" list")?
                .iter()
                .collect()
        }
    };
    if items.len() > MAX_ASKS {
        return Err(format!(
            "{} alerts in one request; a trigger takes at most {MAX_ASKS} (Alertmanager's max_alerts bounds a group)",
            items.len()
        ));
    }
    Ok(items
        .into_iter()
        .map(|item| ask(trigger, item, catalog))
        .collect())
}

fn ask(trigger: &Trigger, item: &Value, catalog: &Catalog<'_>) -> Asked {
    let alert = (trigger.format == Format::Alertmanager)
        .then(|| item.get("fingerprint").and_then(Value::as_str))
        .flatten()
        .map(|fingerprint| crate::outbox::cut(fingerprint, 64));
    let refused = |reason: String| Asked::Refused {
        alert: alert.clone(),
        reason,
    };
    if trigger.format == Format::Alertmanager {
        let status = item.get("status").and_then(Value::as_str).unwrap_or("");
        if status != "firing" {
            return Asked::Ignored {
                alert,
                reason: format!(
                    "the alert is {:?}, not firing",
                    crate::outbox::cut(status, 32)
                ),
            };
        }
    }
    let Some(named) = at(item, &trigger.machine).and_then(scalar_text) else {
        return refused(format!("no machine at {:?}", trigger.machine));
    };
    let Some(machine) = machine_named(&named, catalog.machines) else {
        return refused(format!(
            "{:?} (at {:?}) is no machine of the inventory",
            crate::outbox::cut(&named, 64),
            trigger.machine
        ));
    };
    if !trigger
        .machines
        .select(catalog.machines)
        .contains(&machine.id)
    {
        return refused(format!(
            "machine {} is not one trigger {} may run on",
            machine.id, trigger.name
        ));
    }
    let Some(script) = catalog.scripts.get(&trigger.script) else {
        return refused(format!("script {} is not in the catalog", trigger.script));
    };
    let mut params = trigger.params.clone();
    for (param, path) in &trigger.map {
        let Some(value) = at(item, path) else {
            return refused(format!("no value at {path:?} for parameter {param}"));
        };
        let kind = script
            .params
            .iter()
            .find(|p| &p.name == param)
            .map(|p| p.kind);
        if kind == Some(ParamType::Secret) {
            // The load refuses such a mapping; never let a caller pick a secret.
            return refused(format!(
                "parameter {param} is a secret: a request never names one"
            ));
        }
        match scalar(value) {
            Some(value) => params.insert(param.clone(), value),
            None => {
                return refused(format!(
                    "the value at {path:?} for parameter {param} is not a string, number or boolean"
                ));
            }
        };
    }
    let asked = Ask {
        script: trigger.script.clone(),
        params,
        targets: Targets {
            machines: vec![machine.id.clone()],
            ..Targets::default()
        },
        rollout: None,
    };
    match asked.resolve(catalog.scripts, catalog.machines, catalog.secrets) {
        Ok(resolved) => {
            let key = key(&trigger.name, &machine.id, &resolved.params);
            Asked::Run {
                alert,
                machine: machine.id.clone(),
                params: resolved.params,
                key,
            }
        }
        Err(problems) => refused(
            (problems.iter().map(ToString::to_string))
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

/// The value at a dotted `path` (`labels.instance`) in `item`.
fn at<'a>(item: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(item, |value, key| value.get(key))
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// The machine `named` names: its id, or its host — with a `:port` after
/// it dropped (`host3:9100`, `[::1]:9100`).
fn machine_named<'a>(named: &str, machines: &'a [Machine]) -> Option<&'a Machine> {
    let host = match named.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() && !host.ends_with(':') => {
            host.trim_start_matches('[').trim_end_matches(']')
        }
        _ => named,
    };
    (machines.iter()).find(|m| m.id == named || m.id == host || m.host == named || m.host == host)
}

/// A request's value as a parameter's: the script's parameter check reads
/// it as its type (Alertmanager's labels are all text: `"85"` is 85 where
/// the script wants an integer).
fn scalar(value: &Value) -> Option<ParamValue> {
    match value {
        Value::Bool(b) => Some(ParamValue::Bool(*b)),
        Value::Number(n) => Some(
            n.as_i64()
                .map_or_else(|| ParamValue::String(n.to_string()), ParamValue::Int),
        ),
        Value::String(text) => Some(ParamValue::String(text.clone())),
        _ => None,
    }
}

/// What a resend is recognised by: a digest of the trigger, the machine and
/// the parameters (not the alert's fingerprint: two alerts asking the same
/// of one machine are one run).
pub fn key(trigger: &str, machine: &str, params: &BTreeMap<String, ParamValue>) -> String {
    let content = serde_json::json!({"trigger": trigger, "machine": machine, "params": params});
    crate::short_digest(content.to_string().as_bytes(), 12)
}

/// A run a trigger started, kept under (trigger, key) to recognise resends
/// and count the rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerRun {
    pub trigger: String,
    pub key: String,
    pub machine: String,
    /// When it started.
    pub at_ms: i64,
    /// The store fills it in as it creates the operation.
    pub operation_id: u64,
}

/// Whether a run asked for now may start, given the trigger's runs so far
/// (`recent`: each one's start and key): a resend within the dedup window
/// is not; nor is one past the rate. `Ok` when it may.
pub fn admit(
    trigger: &Trigger,
    key: &str,
    recent: &[(i64, &str)],
    now_ms: i64,
) -> Result<(), Refusal> {
    let dedup_ms = trigger.dedup.as_millis() as i64;
    if let Some((at, _)) = recent
        .iter()
        .find(|(at, k)| *k == key && now_ms - at < dedup_ms)
    {
        return Err(Refusal::Duplicate { at_ms: *at });
    }
    let per_ms = trigger.rate.per.as_millis() as i64;
    let within = recent.iter().filter(|(at, _)| now_ms - at < per_ms).count();
    if within >= trigger.rate.runs as usize {
        return Err(Refusal::Rate {
            runs: trigger.rate.runs,
            per: trigger.rate.per,
        });
    }
    Ok(())
}

/// Why a run a trigger asked for did not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the same run started at {at_ms} (ms), within the trigger's dedup window")]
    Duplicate { at_ms: i64 },
    #[error("the trigger started {runs} runs within {}s already (its rate: runs, per)", per.as_secs())]
    Rate { runs: u32, per: Duration },
}

#[cfg(test)]
mod tests;
