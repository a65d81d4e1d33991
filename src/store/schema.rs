//! The tables of the store — each a name, its key and its record type —
//! and the schema version they make ([`super::migrations`] brings older
//! stores up to it).

use linkops_reconcilers::approval::Request;
use linkops_reconcilers::certificate::{IssuedHostCertificate, Revocation};
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::facts::{FactChange, MachineFacts};
use linkops_reconcilers::machine::MachineStatus;
use linkops_reconcilers::operation::{HostResult, Operation, RecordedEvent};
use linkops_reconcilers::outbox::Queued;
use linkops_reconcilers::picture::Rollup;
use linkops_reconcilers::run::RunRecord;
use linkops_reconcilers::schedule::FireRecord;
use linkops_reconcilers::state::{CheckRecord, StateStatus, Target};
use linkops_reconcilers::terminal::{TerminalSession, Workspace};
use linkops_reconcilers::trigger::TriggerRun;

use super::engine::{Json, Raw, Table, Unit};
use super::records::{
    ApiToken, AuditEntry, HealthSample, LoginFailures, MachineRecord, PostedStatus, ScriptRecord,
    SyncAsk, SyncRecord, User,
};

/// Version of the table layout this binary writes. Bump it with a migration step.
///
/// Version 8 keeps every table as ordered bytes (`engine::key`) with JSON
/// records, the same in redb and PostgreSQL; older redb files are converted.
pub const SCHEMA_VERSION: u64 = 15;

/// Store metadata: `schema_version`, `write_probe_ms`.
pub const META: Table<String, Json<u64>> = Table::new("meta");

/// Users by name.
pub const USERS: Table<String, Json<User>> = Table::new("users");
/// Failed-login counters by user name, for accounts only (version 4: unknown
/// names are counted in memory, bounded, so invented names cannot grow the store).
pub const LOGIN_FAILURES: Table<String, Json<LoginFailures>> = Table::new("login_failures");
/// Names of deleted accounts, with when: never reused (version 4).
pub const RETIRED_NAMES: Table<String, Json<i64>> = Table::new("retired_names");
/// Machines the inventory declares or declared, by machine id.
pub const MACHINES: Table<String, Json<MachineRecord>> = Table::new("machines");
/// What was last observed of each machine, by machine id.
pub const MACHINE_STATUS: Table<String, Json<MachineStatus>> = Table::new("machine_status");
/// Health samples by (machine id, time in ms); the newest few hundred per machine.
pub const HEALTH_HISTORY: Table<(String, i64), Json<HealthSample>> = Table::new("health_history");
/// Run-requests seen in Git, with their claims, by run-request id.
pub const RUN_REQUESTS: Table<String, Json<RunRecord>> = Table::new("run_requests");
/// The script catalog of the applied revision, by script id.
pub const SCRIPTS: Table<String, Json<ScriptRecord>> = Table::new("scripts");
/// Operations by id.
pub const OPERATIONS: Table<u64, Json<Operation>> = Table::new("operations");
/// Per-machine results by (operation id, machine id).
pub const OPERATION_HOSTS: Table<(u64, String), Json<HostResult>> = Table::new("operation_hosts");
/// Operations by state, script and machine: `(column, value, operation id)` (version 3).
pub const OPERATION_INDEX: Table<(String, String, u64), Unit> = Table::new("operation_index");
/// Each operation's event log (output, state changes, end) by (operation id, sequence number).
pub const OPERATION_EVENTS: Table<(u64, u64), Json<RecordedEvent>> = Table::new("operation_events");
/// Operations not yet finished, by id: the replica running them (its
/// member id; a dead member's are interrupted by the leader).
pub const OPERATIONS_RUNNING: Table<u64, Json<String>> = Table::new("operations_running");
/// Operations a replica other than the one running them was asked to stop, by id.
pub const STOP_ASKS: Table<u64, Unit> = Table::new("stop_asks");
/// Changes of what machines' views show, by number (a machine id; `None`: the
/// whole fleet), the newest few thousand: how replicas of a shared store
/// learn of each other's (`changes.rs` keeps each one's own log).
pub const FLEET_CHANGES: Table<u64, Json<Option<String>>> = Table::new("fleet_changes");
/// Git sync attempts by sequence number.
pub const SYNC_HISTORY: Table<u64, Json<SyncRecord>> = Table::new("sync_history");
/// The desired state in force, by its revision: one row, what replicas
/// that do not fetch Git follow.
pub const APPLIED_STATE: Table<String, Json<DesiredState>> = Table::new("applied_state");
/// Syncs and plans asked for through a replica that does not lead, by
/// number, for the leader to serve.
pub const SYNC_ASKS: Table<u64, Json<SyncAsk>> = Table::new("sync_asks");
/// Terminal workspaces by id.
pub const TERMINAL_WORKSPACES: Table<String, Json<Workspace>> = Table::new("terminal_workspaces");
/// Terminal sessions by id (version 2).
pub const TERMINAL_SESSIONS: Table<u64, Json<TerminalSession>> = Table::new("terminal_sessions");
/// Terminal sessions still open, by id: the replica whose pane holds them.
pub const TERMINAL_SESSIONS_OPEN: Table<u64, Json<String>> = Table::new("terminal_sessions_open");
/// Asciicast recordings of terminal sessions by (session id, chunk number) (version 2).
pub const TERMINAL_RECORDINGS: Table<(u64, u64), Raw> = Table::new("terminal_recordings");
/// Terminal workspaces whose live side (sessions, socket) a replica holds, by
/// workspace id: that replica's member id. Shared stores only: the others
/// forward the workspace's requests to it.
pub const TERMINAL_HOLDERS: Table<String, Json<String>> = Table::new("terminal_holders");
/// Suspended reconciliation: `*` (the fleet) or a machine id, with since when.
pub const SUSPENSIONS: Table<String, Json<i64>> = Table::new("suspensions");
/// Webhook delivery ids already accepted, with when (replay protection).
pub const WEBHOOK_DELIVERIES: Table<String, Json<i64>> = Table::new("webhook_deliveries");
/// Declared states' status and rollout, by state id (version 6).
pub const STATE_STATUS: Table<String, Json<StateStatus>> = Table::new("state_status");
/// Each declared state on each of its machines, by (state id, machine id) (version 6).
pub const STATE_TARGETS: Table<(String, String), Json<Target>> = Table::new("state_targets");
/// Check results by (state id, machine id, time in ms); the newest few per machine (version 6).
pub const STATE_CHECKS: Table<(String, String, i64), Json<CheckRecord>> =
    Table::new("state_checks");
/// Commit statuses and notifications waiting for delivery, by number (version 7).
pub const OUTBOX: Table<u64, Json<Queued>> = Table::new("outbox");
/// Each channel's waiting messages, by (channel, number) (version 9).
pub const OUTBOX_CHANNELS: Table<(String, u64), Unit> = Table::new("outbox_channels");
/// Messages given up on after their last attempt, by number (version 7).
pub const OUTBOX_DEAD: Table<u64, Json<Queued>> = Table::new("outbox_dead");
/// The last commit status the forge accepted, by (commit, context) (version 7).
pub const FORGE_STATUSES: Table<(String, String), Json<PostedStatus>> =
    Table::new("forge_statuses");
/// Host certificates the host CA signed, by (machine, serial).
pub const HOST_CERTIFICATES: Table<(String, u64), Json<IssuedHostCertificate>> =
    Table::new("host_certificates");
/// Certificates revoked, by serial.
pub const CA_REVOCATIONS: Table<u64, Json<Revocation>> = Table::new("ca_revocations");
/// API tokens by id (version 11).
pub const API_TOKENS: Table<String, Json<ApiToken>> = Table::new("api_tokens");
/// Each machine's last gathered facts, by machine id (version 12).
pub const MACHINE_FACTS: Table<String, Json<MachineFacts>> = Table::new("machine_facts");
/// What each gathering changed, by (machine id, time in ms); the newest
/// hundred per machine (version 12).
pub const FACT_CHANGES: Table<(String, i64), Json<FactChange>> = Table::new("fact_changes");
/// The fleet's pictures: hourly rollups of what the leader sampled, by
/// (series, hour start in ms); eight days kept (version 13).
pub const ROLLUPS: Table<(String, i64), Json<Rollup>> = Table::new("rollups");
/// Schedules' fires by (schedule, due time in ms): started, missed or
/// skipped — claimed before a fire runs, so it runs at most once (version 14).
pub const SCHEDULE_FIRES: Table<(String, i64), Json<FireRecord>> = Table::new("schedule_fires");
/// When each schedule was first seen (ms): its fires are counted from
/// there until it has one (version 14).
pub const SCHEDULE_SINCE: Table<String, Json<i64>> = Table::new("schedule_since");
/// The runs triggers started, by (trigger, start in ms, key): what a resend
/// and the rate are judged by; those older than both windows go as a run is
/// claimed (the operations stay) (version 15).
pub const TRIGGER_RUNS: Table<(String, i64, String), Json<TriggerRun>> = Table::new("trigger_runs");
/// Approval requests by id: runs waiting for approvers, and what became of
/// them (version 15).
pub const APPROVALS: Table<u64, Json<Request>> = Table::new("approvals");
/// The audit log by sequence number.
pub const AUDIT_LOG: Table<u64, Json<AuditEntry>> = Table::new("audit_log");

/// Every table's name: what an engine creates, and what `linkops store migrate` copies.
pub const TABLES: [&str; 44] = [
    META.name,
    USERS.name,
    LOGIN_FAILURES.name,
    RETIRED_NAMES.name,
    MACHINES.name,
    MACHINE_STATUS.name,
    HEALTH_HISTORY.name,
    RUN_REQUESTS.name,
    SCRIPTS.name,
    OPERATIONS.name,
    OPERATION_HOSTS.name,
    OPERATION_INDEX.name,
    OPERATION_EVENTS.name,
    OPERATIONS_RUNNING.name,
    STOP_ASKS.name,
    FLEET_CHANGES.name,
    SYNC_HISTORY.name,
    APPLIED_STATE.name,
    SYNC_ASKS.name,
    TERMINAL_WORKSPACES.name,
    TERMINAL_SESSIONS.name,
    TERMINAL_SESSIONS_OPEN.name,
    TERMINAL_RECORDINGS.name,
    TERMINAL_HOLDERS.name,
    SUSPENSIONS.name,
    WEBHOOK_DELIVERIES.name,
    STATE_STATUS.name,
    STATE_TARGETS.name,
    STATE_CHECKS.name,
    OUTBOX.name,
    OUTBOX_CHANNELS.name,
    OUTBOX_DEAD.name,
    FORGE_STATUSES.name,
    HOST_CERTIFICATES.name,
    CA_REVOCATIONS.name,
    API_TOKENS.name,
    MACHINE_FACTS.name,
    FACT_CHANGES.name,
    ROLLUPS.name,
    SCHEDULE_FIRES.name,
    SCHEDULE_SINCE.name,
    TRIGGER_RUNS.name,
    APPROVALS.name,
    AUDIT_LOG.name,
];

pub const VERSION_KEY: &str = "schema_version";
