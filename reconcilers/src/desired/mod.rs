//! Desired state: what a revision of the config repository asks for.
//!
//! [`load`] turns the files of one revision into a [`DesiredState`], or into
//! every [`Problem`] found, each pointing at `file:line:col`. It is pure: the
//! daemon and `linkops validate` hand it the files and print what it says.
//!
//! Repository layout: `links.yaml` (required), `scripts.yaml` (optional),
//! `access.yaml` (optional: grants), `runs/*.yaml` (optional, one
//! run-request per file), `states/*.yaml` (optional, one declared state per
//! file), `secrets/*.yaml` (optional, one sealed secret per file) and
//! `recipients.yaml` (who can read them), `facts/*.yaml` (optional, one custom
//! fact per file), `schedules/*.yaml` (optional, one schedule per file),
//! `triggers/*.yaml` (optional, one inbound trigger per file), script files anywhere.

pub mod format;
mod validate;

pub(crate) use validate::yaml_problem;
pub use validate::{is_id, read_recipients, read_secret};

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::grant::Given;
use crate::machine::Machine;
use crate::run::RunRequest;
use crate::script::Script;
use crate::secret::{Recipients, Secret};
use crate::state::DeclaredState;

pub const LINKS_FILE: &str = "links.yaml";
pub const SCRIPTS_FILE: &str = "scripts.yaml";
pub const ACCESS_FILE: &str = "access.yaml";
pub const RUNS_DIR: &str = "runs";
pub const STATES_DIR: &str = "states";
pub const RECIPIENTS_FILE: &str = "recipients.yaml";
pub const SECRETS_DIR: &str = "secrets";
pub const FACTS_DIR: &str = "facts";
pub const SCHEDULES_DIR: &str = "schedules";
pub const TRIGGERS_DIR: &str = "triggers";

/// The files of one revision: repository-relative path → content.
pub type RepoFiles = BTreeMap<String, Vec<u8>>;

/// Everything one valid revision asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredState {
    /// The commit it was read from.
    pub revision: String,
    /// In inventory order.
    pub machines: Vec<Machine>,
    pub scripts: BTreeMap<String, Script>,
    pub runs: BTreeMap<String, RunRequest>,
    #[serde(default)]
    pub states: BTreeMap<String, DeclaredState>,
    /// Who may do what, beyond local accounts' own roles (`access.yaml`).
    #[serde(default)]
    pub grants: Vec<Given>,
    /// Which runs wait for approvers (`access.yaml`'s `approvals`).
    #[serde(default)]
    pub approvals: Vec<crate::approval::Rule>,
    /// The secrets of `secrets/`, by name: sealed, never in clear.
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
    /// Who can read them (`recipients.yaml`).
    #[serde(default)]
    pub recipients: Recipients,
    /// Custom facts (`facts/*.yaml`), by name.
    #[serde(default)]
    pub custom_facts: BTreeMap<String, crate::facts::CustomFact>,
    /// Schedules (`schedules/*.yaml`), by name.
    #[serde(default)]
    pub schedules: BTreeMap<String, crate::schedule::Schedule>,
    /// Inbound triggers (`triggers/*.yaml`), by name.
    #[serde(default)]
    pub triggers: BTreeMap<String, crate::trigger::Trigger>,
    #[serde(skip)]
    pub(crate) index: MachineIndex,
}

impl DesiredState {
    /// [`crate::state::digest`] of `state` (whose script is `script`) in this
    /// revision: with the secrets its parameters give.
    pub fn state_digest(
        &self,
        state: &crate::state::DeclaredState,
        script: &Script,
        facts: &str,
    ) -> String {
        let secrets = crate::secret::named(script, &state.params, &self.secrets);
        crate::state::digest(state, script, facts, &secrets)
    }

    /// The machine with this id. Indexed (a reconcile looks its machine up,
    /// and a revision's diff every machine: at 10,000 machines a scan each
    /// time was most of a sweep's string comparisons).
    pub fn machine(&self, id: &str) -> Option<&Machine> {
        let index = self.index.0.get_or_init(|| {
            self.machines
                .iter()
                .enumerate()
                .map(|(position, m)| (m.id.clone(), position))
                .collect()
        });
        match index.get(id).and_then(|&at| self.machines.get(at)) {
            Some(machine) if machine.id == id => Some(machine),
            // `machines` changed after the index was built: still right, if slower.
            _ => self.machines.iter().find(|m| m.id == id),
        }
    }
}

/// Machine id → position in `machines`, built on the first lookup. Derived
/// data: it never makes two states differ.
#[derive(Debug, Clone, Default)]
pub(crate) struct MachineIndex(std::sync::OnceLock<std::collections::HashMap<String, usize>>);

impl PartialEq for MachineIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for MachineIndex {}

/// One thing wrong with a revision, where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Reads and checks one revision. On problems, returns all of them, in file order.
pub fn load(revision: &str, files: &RepoFiles) -> Result<DesiredState, Vec<Problem>> {
    validate::load(revision, files)
}

/// Whether `path` is a run-request file (`runs/<name>.yaml` or `.yml`).
pub fn is_run_request(path: &str) -> bool {
    in_dir(path, RUNS_DIR)
}

/// Whether `path` is a secret's file (`secrets/<name>.yaml` or `.yml`).
pub fn is_secret_file(path: &str) -> bool {
    in_dir(path, SECRETS_DIR)
}

/// Whether `path` is a custom fact's file (`facts/<name>.yaml` or `.yml`).
pub fn is_custom_fact_file(path: &str) -> bool {
    in_dir(path, FACTS_DIR)
}

/// Whether `path` is a trigger's file (`triggers/<name>.yaml` or `.yml`).
pub fn is_trigger_file(path: &str) -> bool {
    in_dir(path, TRIGGERS_DIR)
}

/// Whether `path` is a schedule's file (`schedules/<name>.yaml` or `.yml`).
pub fn is_schedule_file(path: &str) -> bool {
    in_dir(path, SCHEDULES_DIR)
}

/// Whether `path` is a declared state's file (`states/<name>.yaml` or `.yml`).
pub fn is_state_file(path: &str) -> bool {
    in_dir(path, STATES_DIR)
}

fn in_dir(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|name| {
            !name.contains('/') && (name.ends_with(".yaml") || name.ends_with(".yml"))
        })
}

/// The JSON Schemas of the repository files, by file name in `schemas/`
/// (draft-07, which editors' YAML language servers understand best).
pub fn schemas() -> Vec<(&'static str, String)> {
    fn render<T: schemars::JsonSchema>() -> String {
        let generator = schemars::generate::SchemaSettings::draft07().into_generator();
        let schema = generator.into_root_schema_for::<T>();
        let mut text = serde_json::to_string_pretty(&schema).expect("schemas serialise to JSON");
        text.push('\n');
        text
    }
    vec![
        ("links.schema.json", render::<format::LinksFile>()),
        ("scripts.schema.json", render::<format::ScriptsFile>()),
        ("access.schema.json", render::<format::AccessFile>()),
        (
            "run-request.schema.json",
            render::<format::RunRequestFile>(),
        ),
        ("state.schema.json", render::<format::StateFile>()),
        ("secret.schema.json", render::<format::SecretFile>()),
        ("fact.schema.json", render::<format::CustomFactFile>()),
        ("schedule.schema.json", render::<format::ScheduleFile>()),
        ("trigger.schema.json", render::<format::TriggerFile>()),
        (
            "proxmox.schema.json",
            render::<crate::inventory::ProxmoxRules>(),
        ),
        ("recipients.schema.json", render::<format::RecipientsFile>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::machine;

    #[test]
    fn machines_are_found_by_id_even_after_the_list_changed() {
        let mut desired = DesiredState {
            machines: (0..100).map(|n| machine(&format!("m{n}"), &[])).collect(),
            ..DesiredState::default()
        };
        assert_eq!(desired.machine("m42").map(|m| m.id.as_str()), Some("m42"));
        assert!(desired.machine("m100").is_none());
        // Changed after the first lookup built the index.
        desired.machines.remove(0);
        desired.machines.push(machine("m100", &[]));
        assert_eq!(desired.machine("m42").map(|m| m.id.as_str()), Some("m42"));
        assert_eq!(desired.machine("m100").map(|m| m.id.as_str()), Some("m100"));
        assert!(desired.machine("m0").is_none());
        assert_eq!(
            desired,
            desired.clone(),
            "the index is no part of the state"
        );
    }
}
