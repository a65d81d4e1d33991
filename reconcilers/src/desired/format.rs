//! The files of a config repository, exactly as written: `links.yaml`,
//! `scripts.yaml`, `access.yaml`, `recipients.yaml`, `runs/*.yaml`,
//! `states/*.yaml` and `secrets/*.yaml`.
//!
//! These types define the JSON Schemas in `schemas/`. Fields that later
//! checks must point at keep their source location (`Spanned`); the schema
//! sees them as the plain value.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::grant::Holder;
use crate::machine::Auth;
use crate::role::Role;
use crate::rollout::Rollout;
use crate::script::{ParamType, ParamValue};
use crate::state::{Mode, Weekday};

/// Machine, script and run-request ids. `load` enforces every pattern here,
/// as the schemas state them.
pub const ID_PATTERN: &str = r"^[a-z0-9][a-z0-9._-]{0,127}$";
/// Key names: a plain file name in the daemon's keys directory (never a path, never `..`).
pub const KEY_PATTERN: &str = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$";
/// Parameter names: they become `LINKOPS_PARAM_<NAME>` environment variables.
pub const PARAM_NAME_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$";

/// `links.yaml`: the machines of the fleet.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "LinkOps inventory (links.yaml)")]
pub struct LinksFile {
    #[schemars(with = "Vec<MachineEntry>")]
    pub machines: Vec<Spanned<MachineEntry>>,
    /// Machines with any of these tags are protected, as if each said
    /// `protected: true`: running on them, and a terminal, ask for a second factor.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub protected_tags: Vec<Spanned<String>>,
}

/// One machine of the inventory.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MachineEntry {
    /// Stable identifier, unique in the inventory; history is kept under it.
    #[schemars(with = "String", regex(pattern = ID_PATTERN))]
    pub id: Spanned<String>,
    /// Display name.
    pub name: String,
    /// Host name or address to reach it over SSH.
    pub host: String,
    #[serde(default = "default_port", deserialize_with = "port_number")]
    #[schemars(default = "default_port", range(min = 1, max = 65535))]
    pub port: u16,
    /// Login user; the daemon's `[ssh] user` when absent.
    #[serde(default)]
    pub user: Option<String>,
    /// Name of the private key file in the daemon's keys directory (never a key itself);
    /// the daemon's `[ssh] key` when absent.
    #[serde(default)]
    #[schemars(with = "Option<String>", regex(pattern = KEY_PATTERN))]
    pub key: Option<Spanned<String>>,
    /// Enrollment id: the machine's /etc/linkops/client_id must read `LINKOPS-<uuid>`.
    #[schemars(
        with = "String",
        regex(
            pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
        )
    )]
    pub uuid: Spanned<String>,
    /// Selectors for scripts and runs.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Free-form key/value metadata.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Pinned SSH host key (an OpenSSH public key line); wins over known_hosts.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub host_key: Option<Spanned<String>>,
    /// How often to check health, e.g. `30s`, `2m` (default 60s).
    #[serde(default)]
    #[schemars(
        with = "Option<String>",
        regex(pattern = r"^\s*\d+\s*[a-z]+(\s*\d+\s*[a-z]+)*\s*$")
    )]
    pub health_interval: Option<Spanned<String>>,
    /// Most operations' sessions on this machine at once.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub concurrency: Option<u32>,
    /// How the daemon logs in: `key` (a key file, the default) or `certificate`
    /// (a short-lived certificate of its user CA; the machine's sshd trusts the CA).
    #[serde(default)]
    pub auth: Auth,
    /// Running on it, and a terminal to it, ask for a second factor first
    /// (a TOTP code, or a fresh sign-in at the identity provider).
    #[serde(default)]
    pub protected: bool,
}

fn default_port() -> u16 {
    22
}

/// A TCP port, refused in the file's words (serde would say `invalid u16`).
fn port_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Number(i64),
        Other(serde::de::IgnoredAny),
    }
    match Written::deserialize(deserializer)? {
        Written::Number(port) if (1..=65535).contains(&port) => Ok(port as u16),
        Written::Number(port) => Err(serde::de::Error::custom(format!(
            "port {port} is not a port number (1-65535)"
        ))),
        Written::Other(_) => Err(serde::de::Error::custom(
            "port must be a port number (1-65535)",
        )),
    }
}

/// `scripts.yaml`: the script catalog.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "LinkOps script catalog (scripts.yaml)")]
pub struct ScriptsFile {
    #[schemars(with = "Vec<ScriptEntry>")]
    pub scripts: Vec<Spanned<ScriptEntry>>,
}

/// One script of the catalog. Give exactly one of `body` and `file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptEntry {
    #[schemars(with = "String", regex(pattern = ID_PATTERN))]
    pub id: Spanned<String>,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The script text, inline.
    #[serde(default)]
    pub body: Option<String>,
    /// Path of the script text, relative to the repository root.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub file: Option<Spanned<String>>,
    /// A check, inline: whether a declared state using this script holds
    /// (exit 0 holds, 1 drifted, anything else an error). It runs like the
    /// body: same interpreter, parameters and timeout. Give at most one of
    /// `check` and `check_file`.
    #[serde(default)]
    pub check: Option<String>,
    /// Path of the check's text, relative to the repository root.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub check_file: Option<Spanned<String>>,
    /// Program that reads the script on its stdin (default `/bin/sh`).
    #[serde(default = "default_interpreter")]
    #[schemars(default = "default_interpreter")]
    pub interpreter: String,
    #[serde(default)]
    #[schemars(with = "Vec<ParamEntry>")]
    pub params: Vec<Spanned<ParamEntry>>,
    /// Longest run per machine, e.g. `30s`, `10m` (default 5m).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// Most machines running it at once.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_parallel: Option<u32>,
    /// Machines it runs on when a run names none.
    #[serde(default)]
    pub targets: Option<TargetsEntry>,
}

fn default_interpreter() -> String {
    "/bin/sh".into()
}

/// A typed script parameter. It reaches the script as `LINKOPS_PARAM_<NAME>`.
/// A value may have at most 32 KiB, and all of a run's parameters together
/// at most 96 KiB (the remote shell receives the command as one argument).
/// A `secret` parameter's value names a secret (`secrets/<name>.yaml`): the
/// script gets the secret's value, passed on its stdin, never on a command line.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamEntry {
    #[schemars(with = "String", regex(pattern = PARAM_NAME_PATTERN))]
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: ParamType,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    #[schemars(with = "Option<ParamValue>")]
    pub default: Option<Spanned<ParamValue>>,
    /// The allowed values of an `enum` parameter.
    #[serde(default)]
    pub values: Vec<String>,
    /// A regular expression a `string` value must match (whole value).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub pattern: Option<Spanned<String>>,
}

/// Which machines: ids and/or tags (a machine matches if it is named or has
/// any of the tags), narrowed by facts (`where`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetsEntry {
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub machines: Vec<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub tags: Vec<Spanned<String>>,
    /// Of those (or of every machine, when neither is given), the ones whose
    /// facts (`linkops facts`) are these, e.g. `{reboot_required: true}`; for
    /// run-requests (resolved when they start), not for states.
    #[serde(default, rename = "where")]
    #[schemars(with = "BTreeMap<String, ParamValue>")]
    pub where_: BTreeMap<String, Spanned<ParamValue>>,
}

/// `runs/<name>.yaml`: asks for a script to run once on some machines.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "LinkOps run-request (runs/*.yaml)")]
pub struct RunRequestFile {
    /// Unique forever: a run-request id runs at most once, even if the file changes.
    #[schemars(with = "String", regex(pattern = ID_PATTERN))]
    pub id: Spanned<String>,
    /// The catalog script to run.
    #[schemars(with = "String")]
    pub script: Spanned<String>,
    /// Where to run; the script's default targets when absent.
    #[serde(default)]
    pub targets: Option<TargetsEntry>,
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ParamValue>")]
    pub params: BTreeMap<String, Spanned<ParamValue>>,
    /// Not before this instant (RFC 3339, e.g. `2026-12-01T03:00:00Z`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub not_before: Option<Spanned<String>>,
    /// Run on the machines in batches, canaries first, halting after
    /// `max_failures`; all at once when absent.
    #[serde(default)]
    #[schemars(with = "Option<Rollout>")]
    pub rollout: Option<Spanned<Rollout>>,
}

/// `schedules/<name>.yaml`: a catalog script run on a cron expression in a time zone.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "LinkOps schedule (schedules/*.yaml)")]
pub struct ScheduleFile {
    /// Unique among schedules; the file is `schedules/<name>.yaml`, its fires are kept under it.
    #[schemars(with = "String", regex(pattern = ID_PATTERN))]
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: String,
    /// The catalog script each fire runs (or `state`: one of the two).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub script: Option<Spanned<String>>,
    /// A declared state (`mode: report`) each fire applies: its script with
    /// its parameters on its targets, inside its maintenance windows.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub state: Option<Spanned<String>>,
    /// Where the script runs; its default targets when absent. `where` is
    /// decided on the facts at each fire. Not with `state`.
    #[serde(default)]
    pub targets: Option<TargetsEntry>,
    /// The script's parameters. Not with `state`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ParamValue>")]
    pub params: BTreeMap<String, Spanned<ParamValue>>,
    /// The batches (the state's rollout when absent and a state is applied).
    #[serde(default)]
    #[schemars(with = "Option<Rollout>")]
    pub rollout: Option<Spanned<Rollout>>,
    /// When: five fields (minute hour day-of-month month day-of-week), e.g.
    /// `0 3 * * *`; `L` (last), `#` (nth weekday), `W` and `@daily`-style nicknames too.
    #[schemars(with = "String")]
    pub cron: Spanned<String>,
    /// The time zone the cron expression is read in (IANA, e.g.
    /// `Europe/Berlin`); UTC when absent. A time a spring-forward skips
    /// fires once at the first instant after it; one a fall-back repeats, once.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub zone: Option<Spanned<String>>,
    /// Fires missed while the daemon was down: `skip` (default) or run the latest `once`.
    #[serde(default)]
    pub catch_up: crate::schedule::CatchUp,
    /// A fire while the previous one runs: `skip` (default) or `queue` (one waits).
    #[serde(default)]
    pub concurrency: crate::schedule::Concurrency,
    /// No fire after this instant (RFC 3339).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub until: Option<Spanned<String>>,
    /// No fire while true.
    #[serde(default)]
    pub suspend: bool,
}

/// `triggers/<name>.yaml`: an authenticated inbound webhook
/// (`POST /api/triggers/<name>`) that runs one catalog script on the machines
/// it allows, with parameters taken from the request.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "LinkOps inbound trigger (triggers/*.yaml)")]
pub struct TriggerFile {
    /// Unique among triggers; the file is `triggers/<name>.yaml`, its URL `/api/triggers/<name>`.
    #[schemars(with = "String", regex(pattern = ID_PATTERN))]
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: String,
    /// The one catalog script it runs.
    #[schemars(with = "String")]
    pub script: Spanned<String>,
    /// The machines it may run on (tags or machines): a request naming another is refused.
    pub machines: TargetsEntry,
    /// `alertmanager` (default): Alertmanager's webhook, each firing alert one
    /// run; `json`: any JSON object, one run.
    #[serde(default)]
    pub format: crate::trigger::Format,
    /// Where each alert (or the body) names the machine, a dotted path: its
    /// id, or its host with any `:port` dropped. Default `labels.instance`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub machine: Option<Spanned<String>>,
    /// Parameters taken from the request: parameter → dotted path (`labels.mountpoint`).
    /// Never a `secret` parameter.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub map: BTreeMap<String, Spanned<String>>,
    /// Parameters fixed here.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ParamValue>")]
    pub params: BTreeMap<String, Spanned<ParamValue>>,
    /// `bearer` (default): `Authorization: Bearer <token>`; `hmac_sha256`:
    /// `X-LinkOps-Signature: sha256=<hex of HMAC-SHA256(body)>`.
    #[serde(default)]
    pub auth: crate::trigger::Auth,
    /// The sealed secret (`secrets/<name>.yaml`) holding the token or key;
    /// absent, the daemon reads `<[triggers] secrets_dir>/<trigger>.secret` (mode 0600).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub secret: Option<Spanned<String>>,
    /// The same run (machine and parameters) asked again within this long
    /// does nothing, e.g. `4h` (default 1h): Alertmanager resends firing alerts.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub dedup: Option<Spanned<String>>,
    /// At most `runs` started in any `per` (default 10 per 1h).
    #[serde(default)]
    #[schemars(with = "Option<RateEntry>")]
    pub rate: Option<Spanned<RateEntry>>,
    /// Answer what it would run; run nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// A trigger's rate: at most `runs` in any `per` (`1h`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateEntry {
    pub runs: u32,
    pub per: String,
}

/// `facts/<name>.yaml`: a custom fact, gathered with the built-in ones.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "LinkOps custom fact (facts/*.yaml)")]
pub struct CustomFactFile {
    /// Its facts are named `<name>.<key>`, one per key of the script's JSON.
    #[schemars(with = "String", regex(pattern = crate::facts::CUSTOM_NAME_PATTERN))]
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: String,
    /// A `sh` script printing one JSON object of strings, numbers or
    /// booleans (at most 16 KiB); read-only and quick: it runs at every
    /// gathering on every machine it targets.
    #[schemars(with = "String")]
    pub script: Spanned<String>,
    /// The machines it is gathered on (tags or machines); every machine when absent.
    #[serde(default)]
    pub targets: Option<TargetsEntry>,
    /// Longest it may take, e.g. `5s` (default 10s, at most 60s).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
}

/// `states/<name>.yaml`: a state the targets converge to and are kept in.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "LinkOps declared state (states/*.yaml)")]
pub struct StateFile {
    /// Unique among states; its history is kept under it.
    #[schemars(with = "String", regex(pattern = ID_PATTERN))]
    pub id: Spanned<String>,
    #[serde(default)]
    pub description: String,
    /// The catalog script that makes the state hold; it must have a check.
    #[schemars(with = "String")]
    pub script: Spanned<String>,
    /// Where the state holds; the script's default targets when absent.
    #[serde(default)]
    pub targets: Option<TargetsEntry>,
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ParamValue>")]
    pub params: BTreeMap<String, Spanned<ParamValue>>,
    /// `enforce` (default): apply where the check says drifted; `report`: only report drift.
    #[serde(default)]
    pub mode: Mode,
    /// How often each machine is checked, e.g. `1m`, `1h` (default 5m, at least 10s).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub interval: Option<Spanned<String>>,
    /// When applying is allowed, read in `zone`; at any time when absent. Checks run at any time.
    #[serde(default)]
    #[schemars(with = "Vec<WindowEntry>")]
    pub windows: Vec<Spanned<WindowEntry>>,
    /// The time zone the windows are read in (IANA, e.g. `Europe/Berlin`);
    /// UTC when absent. Daylight saving as schedules have it.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub zone: Option<Spanned<String>>,
    /// Applies in batches (default: 1 canary, then 5 at a time, halted by the first failure).
    #[serde(default)]
    #[schemars(with = "Option<Rollout>")]
    pub rollout: Option<Spanned<Rollout>>,
}

/// A maintenance window, in UTC: `from` and `to` as `HH:MM`; a window that
/// ends before it starts runs past midnight.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowEntry {
    /// The days it opens on (`mon` … `sun`); every day when absent.
    #[serde(default)]
    pub days: Vec<Weekday>,
    #[schemars(with = "String", regex(pattern = TIME_PATTERN))]
    pub from: Spanned<String>,
    #[schemars(with = "String", regex(pattern = TIME_PATTERN))]
    pub to: Spanned<String>,
}

/// A time of day, `HH:MM` (24 hours).
pub const TIME_PATTERN: &str = r"^([01][0-9]|2[0-3]):[0-5][0-9]$";

/// `access.yaml`: who may do what to which part of the fleet, beyond the
/// roles of local accounts — grants to the identity provider's groups and to
/// users, reviewed in Git like the rest of the policy.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "LinkOps access (access.yaml)")]
pub struct AccessFile {
    #[serde(default)]
    #[schemars(with = "Vec<GrantEntry>")]
    pub grants: Vec<Spanned<GrantEntry>>,
    /// Runs that wait for approvers before they start.
    #[serde(default)]
    #[schemars(with = "Vec<ApprovalEntry>")]
    pub approvals: Vec<Spanned<ApprovalEntry>>,
}

/// Runs that need approval: a script (none: every one) on machines of these
/// tags or ids (none: every machine) waits for `approvers` distinct people —
/// never the requester — holding `role` over each of its machines for the
/// script, within `expires`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalEntry {
    /// Named in the request and the audit log.
    #[schemars(with = "String", regex(pattern = ID_PATTERN))]
    pub name: Spanned<String>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub tags: Vec<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub machines: Vec<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub scripts: Vec<Spanned<String>>,
    /// How many distinct approvers (1 to 10).
    #[schemars(with = "u32")]
    pub approvers: Spanned<u32>,
    /// What an approver holds over each machine, for the script: `operator` (default) or `admin`.
    #[serde(default)]
    #[schemars(with = "Option<Role>")]
    pub role: Option<Spanned<Role>>,
    /// How long a request waits before it expires and never runs, e.g. `4h` (default 24h).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub expires: Option<Spanned<String>>,
}

/// A role over a scope, and who holds it. No tags and no machines: the whole
/// fleet; no scripts: every script (and terminals).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantEntry {
    /// `{group: NAME}` (a group the identity provider names at sign-in) or `{user: NAME}`.
    #[schemars(with = "Holder")]
    pub to: Spanned<Holder>,
    #[schemars(with = "Role")]
    pub role: Spanned<Role>,
    /// Machines with any of these tags…
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub tags: Vec<Spanned<String>>,
    /// …and these machines, by id.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub machines: Vec<Spanned<String>>,
    /// The scripts it may run; every one (and terminals) when absent.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub scripts: Vec<Spanned<String>>,
}

/// `recipients.yaml`: who can read the secrets in `secrets/` — age recipients
/// (`age1…`, from `age-keygen` or `linkops secret recipient`). Every secret is
/// sealed to `all`; a secret limited to tags also to those tags' recipients.
/// After a change here, `linkops secret rotate` seals every secret again.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "LinkOps secret recipients (recipients.yaml)")]
pub struct RecipientsFile {
    /// The daemon's recipient (every replica holds its identity) and those
    /// who edit every secret.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub all: Vec<Spanned<String>>,
    /// Tag → the recipients who may read the secrets limited to its machines.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, Vec<String>>")]
    pub tags: BTreeMap<String, Vec<Spanned<String>>>,
}

/// `secrets/<name>.yaml`: one secret, its value sealed with age, written by
/// `linkops secret set` (or by hand: `age -e -a -R recipients.txt`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "LinkOps secret (secrets/*.yaml)")]
pub struct SecretFile {
    /// What scripts' `secret` parameters name.
    #[schemars(with = "String", regex(pattern = ID_PATTERN))]
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: String,
    /// The scripts that may use it; any when absent.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub scripts: Vec<Spanned<String>>,
    /// The machines it may reach; any when absent. Limited to tags, it is
    /// also sealed to those tags' recipients.
    #[serde(default)]
    pub targets: Option<TargetsEntry>,
    /// The value: an ASCII-armored age file (`-----BEGIN AGE ENCRYPTED FILE-----`).
    #[schemars(with = "String")]
    pub value: Spanned<String>,
}
