//! Desired state: what a revision of the config repository asks for.
//!
//! [`load`] turns the files of one revision into a [`DesiredState`], or into
//! every [`Problem`] found, each pointing at `file:line:col`. It is pure: the
//! daemon and `linkops validate` hand it the files and print what it says.
//!
//! Repository layout: `links.yaml` (required), `scripts.yaml` (optional),
//! `runs/*.yaml` (optional, one run-request per file), script files anywhere.

pub mod format;
mod validate;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::machine::Machine;
use crate::run::RunRequest;
use crate::script::Script;

pub const LINKS_FILE: &str = "links.yaml";
pub const SCRIPTS_FILE: &str = "scripts.yaml";
pub const RUNS_DIR: &str = "runs";

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
}

impl DesiredState {
    pub fn machine(&self, id: &str) -> Option<&Machine> {
        self.machines.iter().find(|m| m.id == id)
    }
}

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
    path.strip_prefix("runs/").is_some_and(|name| {
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
        (
            "run-request.schema.json",
            render::<format::RunRequestFile>(),
        ),
    ]
}
