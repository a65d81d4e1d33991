//! `/api/operations`: run scripts, follow them live, stop them, read their history.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;

use super::extract::{Json, Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use base64::Engine as _;
use futures::{SinkExt, Stream};
use linkops_reconcilers::operation::{
    HostResult, Operation, OperationEvent, RecordedEvent, Requester, Stream as OutputStream,
};
use linkops_reconcilers::run;
use linkops_reconcilers::script::{ParamValue, Targets};
use serde_json::Value;
use tokio::sync::broadcast;

use super::auth::Authenticated;
use super::{ApiError, AppState, at};
use crate::contract::{
    EventsQuery, HistoryQuery, HostEvent, OperationView, OutputBytes, OutputChunk, OutputPage,
    OutputQuery, RunBody, StateEvent, Stopping,
};
use crate::metrics::Open;
use crate::operations::{HostPlan, LiveEvent, Plan};
use crate::store::{Actor, Audit, AuditAction, Followed, Outcome};
use linkops_reconcilers::role::Role;

/// About how much of the event log one read takes (per SSE client catching up, or per output page).
const PAGE_BYTES: usize = 64 << 10;

fn operation_view(operation: Operation, hosts: Vec<HostResult>) -> OperationView {
    OperationView {
        created_at: at(operation.created_at_ms),
        finished_at: operation.finished_at_ms.and_then(at),
        operation,
        hosts,
    }
}

/// An operation and its hosts' results, or a 404 naming it.
async fn recorded(state: &AppState, id: u64) -> Result<(Operation, Vec<HostResult>), ApiError> {
    state
        .store
        .run(move |store| store.operation(id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no operation {id}")))
}

/// `GET /api/operations/{id}`
#[utoipa::path(get, path = "/api/operations/{id}", tag = "operations", params(("id" = u64, Path, description = "Operation id")), responses((status = 200, description = "An operation and its per-machine results", body = OperationView)))]
pub async fn get(
    State(state): State<AppState>,
    _caller: Authenticated,
    Path(id): Path<u64>,
) -> Result<Json<OperationView>, ApiError> {
    let (operation, hosts) = recorded(&state, id).await?;
    Ok(Json(operation_view(operation, hosts)))
}

/// `POST /api/operations/run`: starts at once and answers with the operation;
/// it continues in the background (follow it at `/api/operations/{id}/events`).
#[utoipa::path(post, path = "/api/operations/run", tag = "operations", request_body = RunBody, responses((status = 202, description = "Started; follow it at /api/operations/{id}/events (operator); suspended machines are skipped, naming their suspension", body = OperationView), (status = 409, description = "The fleet, or every machine it selects, is suspended", body = crate::contract::ErrorBody), (status = 422, description = "Unknown script, bad parameters or no targets; details.field names it", body = crate::contract::ErrorBody)))]
pub async fn run(
    State(state): State<AppState>,
    caller: Authenticated,
    Json(body): Json<RunBody>,
) -> Result<(StatusCode, Json<OperationView>), ApiError> {
    let user = caller.require(Role::Operator)?;
    let desired = state.git.desired().borrow().clone().ok_or_else(|| {
        ApiError::NotConfigured("no desired state has been applied yet: nothing to run".into())
    })?;
    let script = desired
        .scripts
        .get(&body.script)
        .ok_or_else(|| ApiError::Unprocessable {
            field: "script".into(),
            message: format!("no script {:?} in the catalog", body.script),
        })?;
    let mut given = BTreeMap::new();
    for (name, value) in body.params {
        let value = match value {
            Value::String(s) => ParamValue::String(s),
            Value::Bool(b) => ParamValue::Bool(b),
            Value::Number(n) if n.as_i64().is_some() => {
                ParamValue::Int(n.as_i64().unwrap_or_default())
            }
            other => {
                return Err(ApiError::Unprocessable {
                    field: format!("params.{name}"),
                    message: format!(
                        "parameter {name}: expected a string, an integer or a boolean, got {other}"
                    ),
                });
            }
        };
        given.insert(name, value);
    }
    let params = script.resolve_params(&given).map_err(|problems| {
        let (name, message) = problems.into_iter().next().unwrap_or_default();
        ApiError::Unprocessable {
            field: format!("params.{name}"),
            message: format!("parameter {name}: {message}"),
        }
    })?;
    let targets = script.targets_or_default(Targets {
        machines: body.targets.machines,
        tags: body.targets.tags,
    });
    if targets.is_empty() {
        return Err(ApiError::Unprocessable {
            field: "targets".into(),
            message: format!(
                "no targets given, and script {} has no default targets",
                script.id
            ),
        });
    }
    // A tag that matches nothing is a typo, not an empty run (as in a run-request's file).
    if let Some(tag) = targets.unmatched_tag(&desired.machines) {
        return Err(ApiError::Unprocessable {
            field: "targets.tags".into(),
            message: format!("tag {tag:?} matches no machine in links.yaml"),
        });
    }
    if let Some(problem) = body.rollout.and_then(|rollout| rollout.problem()) {
        return Err(ApiError::Unprocessable {
            field: "rollout".into(),
            message: problem.into(),
        });
    }
    let plan = Plan {
        script: script.clone(),
        params,
        hosts: placed(&state, &desired, &targets).await?,
        requested_by: Requester::User {
            name: user.name.clone(),
        },
        concurrency: body.concurrency,
        rollout: body.rollout,
        retry_of: None,
    };
    started(&state, plan).await
}

/// `POST /api/operations/{id}/retry`: the same script and parameters again, on
/// the machines of the operation that failed, timed out or were interrupted.
#[utoipa::path(post, path = "/api/operations/{id}/retry", tag = "operations", params(("id" = u64, Path, description = "Operation id")), responses((status = 202, description = "Started (operator): a new operation whose `retry_of` is this one", body = OperationView), (status = 409, description = "Still running, no machine of it failed, timed out or was interrupted, a state's apply (resume the state instead), or its machines are suspended", body = crate::contract::ErrorBody), (status = 422, description = "Its script left the catalog, or its parameters no longer fit it", body = crate::contract::ErrorBody)))]
pub async fn retry(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<u64>,
) -> Result<(StatusCode, Json<OperationView>), ApiError> {
    let user = caller.require(Role::Operator)?;
    let (operation, hosts) = recorded(&state, id).await?;
    if let Requester::State { id: state_id, .. } = &operation.requested_by {
        // A state's applies keep its windows, rollout and halt: retried by hand they would not.
        return Err(ApiError::Conflict(format!(
            "operation {id} applied state {state_id}, whose applies follow its windows and \
             rollout: resume the state instead (POST /api/states/{state_id}/resume)"
        )));
    }
    if operation.finished_at_ms.is_none() {
        return Err(ApiError::Conflict(format!(
            "operation {id} is still {}: retry it once it has ended",
            operation.state.name()
        )));
    }
    let again: Vec<String> = hosts
        .iter()
        .filter(|host| host.state.is_retried())
        .map(|host| host.machine_id.clone())
        .collect();
    if again.is_empty() {
        return Err(ApiError::Conflict(format!(
            "no machine of operation {id} failed, timed out or was interrupted: nothing to retry"
        )));
    }
    let desired = state.git.desired().borrow().clone().ok_or_else(|| {
        ApiError::NotConfigured("no desired state has been applied yet: nothing to run".into())
    })?;
    let script = desired
        .scripts
        .get(&operation.script)
        .ok_or_else(|| ApiError::Unprocessable {
            field: "script".into(),
            message: format!("script {:?} is no longer in the catalog", operation.script),
        })?;
    // The values it ran with, checked against the script as it is now.
    let params = script
        .resolve_params(&operation.params)
        .map_err(|problems| {
            let (name, message) = problems.into_iter().next().unwrap_or_default();
            ApiError::Unprocessable {
                field: format!("params.{name}"),
                message: format!(
                    "parameter {name} no longer fits script {}: {message}",
                    script.id
                ),
            }
        })?;
    let targets = Targets {
        machines: again,
        tags: Vec::new(),
    };
    let plan = Plan {
        script: script.clone(),
        params,
        hosts: placed(&state, &desired, &targets).await?,
        requested_by: Requester::User {
            name: user.name.clone(),
        },
        concurrency: None,
        rollout: operation.rollout,
        retry_of: Some(id),
    };
    started(&state, plan).await
}

/// Where a run goes. Nothing starts on a suspended machine (the whole run
/// is refused when nothing it selects may start). Right after a start or an
/// inventory change a target may not have been checked yet: it is checked
/// now rather than skipped as "not checked yet".
async fn placed(
    state: &AppState,
    desired: &linkops_reconcilers::desired::DesiredState,
    targets: &Targets,
) -> Result<Vec<HostPlan>, ApiError> {
    let held = state.controller.held().await?;
    let selected = targets.select(&desired.machines);
    if let Some(reason) = run::refused_by_suspension(&held, &selected) {
        return Err(ApiError::Conflict(format!("nothing was started: {reason}")));
    }
    let statuses_of = |selected: Vec<String>| {
        state
            .store
            .run(move |store| store.machine_statuses(&selected))
    };
    let before = statuses_of(selected.clone()).await?;
    let unchecked: Vec<&String> = selected
        .iter()
        .filter(|id| {
            held.refusal(Some(id)).is_none()
                && before.get(*id).is_none_or(|status| {
                    status.enrollment == linkops_reconcilers::enrollment::Enrollment::Unknown
                })
        })
        .collect();
    let checks = unchecked.iter().map(|id| state.controller.verify(id, None));
    for checked in futures::future::join_all(checks).await {
        checked?;
    }
    let statuses = statuses_of(selected).await?;
    let placements = run::place(targets, &desired.machines, &statuses, &held);
    Ok(HostPlan::from_placements(placements))
}

/// Starts a plan; answers as `POST /api/operations/run` does.
async fn started(
    state: &AppState,
    plan: Plan,
) -> Result<(StatusCode, Json<OperationView>), ApiError> {
    let engine = state.controller.operations().clone();
    let operation = crate::blocking::run(move || engine.start(plan, None))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))?
        .map_err(|error| match error {
            crate::operations::Error::Store(error) => ApiError::from(error),
            other => ApiError::Unprocessable {
                field: "params".into(),
                message: other.to_string(),
            },
        })?;
    let (operation, hosts) = recorded(state, operation.id).await?;
    Ok((StatusCode::ACCEPTED, Json(operation_view(operation, hosts))))
}

/// `POST /api/operations/{id}/stop`
#[utoipa::path(post, path = "/api/operations/{id}/stop", tag = "operations", params(("id" = u64, Path, description = "Operation id")), responses((status = 202, description = "Stopping (operator): unstarted machines never start, running scripts get SIGTERM then SIGKILL", body = Stopping), (status = 409, description = "Not running", body = crate::contract::ErrorBody)))]
pub async fn stop(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<u64>,
) -> Result<(StatusCode, Json<Stopping>), ApiError> {
    let user = caller.require(Role::Operator)?;
    let (operation, _) = recorded(&state, id).await?;
    let audit = Audit {
        actor: Actor::user(&user.name),
        action: AuditAction::OperationStop,
        target: id.to_string(),
        outcome: Outcome::Success,
        detail: None,
    };
    let stopped_here = state.controller.operations().stop(id);
    let stopping = state
        .store
        .run(move |store| match stopped_here {
            true => {
                let Audit {
                    actor,
                    action,
                    target,
                    outcome,
                    detail,
                } = audit;
                store.audit(&actor, action, &target, outcome, detail)?;
                Ok(true)
            }
            // Another replica runs it: asked through the store, which it reads.
            false => store.ask_stop(id, &audit),
        })
        .await?;
    if !stopping {
        return Err(ApiError::Conflict(format!(
            "operation {id} is not running (it is {:?})",
            operation.state
        )));
    }
    Ok((StatusCode::ACCEPTED, Json(Stopping { stopping: id })))
}

/// `GET /api/operations`: newest first, filtered.
#[utoipa::path(get, path = "/api/operations", tag = "operations", params(HistoryQuery), responses((status = 200, description = "Operations, newest first", body = Vec<OperationView>)))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Authenticated,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<Vec<OperationView>>, ApiError> {
    let since = query.since.map(|t| t.as_millisecond());
    let operations = state
        .store
        .run(move |store| {
            store.operations(query.limit.unwrap_or(50).min(500), |operation| {
                query.script.as_ref().is_none_or(|s| *s == operation.script)
                    && query
                        .machine
                        .as_ref()
                        .is_none_or(|m| operation.machines.contains(m))
                    && query.state.is_none_or(|s| s == operation.state)
                    && since.is_none_or(|since| operation.created_at_ms >= since)
            })
        })
        .await?;
    Ok(Json(
        operations
            .into_iter()
            .map(|operation| operation_view(operation, Vec::new()))
            .collect(),
    ))
}

/// `GET /api/operations/{id}/output`: recorded output, paged by event sequence number.
#[utoipa::path(get, path = "/api/operations/{id}/output", tag = "operations", params(("id" = u64, Path, description = "Operation id"), OutputQuery), responses((status = 200, description = "Recorded output, paged by event sequence number", body = OutputPage)))]
pub async fn output(
    State(state): State<AppState>,
    _caller: Authenticated,
    Path(id): Path<u64>,
    Query(query): Query<OutputQuery>,
) -> Result<Json<OutputPage>, ApiError> {
    recorded(&state, id).await?;
    let limit = query.limit.unwrap_or(1000).min(5000);
    let after = query.after;
    let events = state
        .store
        .run(move |store| store.operation_events(id, after, limit, PAGE_BYTES))
        .await?;
    let next_after = events.last().map(|e| e.seq);
    let chunks = events
        .into_iter()
        .filter_map(|e| match e.event {
            OperationEvent::Output {
                machine_id,
                stream,
                data,
            } if query.machine.as_ref().is_none_or(|m| *m == machine_id) => {
                Some(output_chunk(machine_id, stream, &data))
            }
            _ => None,
        })
        .collect();
    Ok(Json(OutputPage { chunks, next_after }))
}

/// `GET /api/operations/{id}/events`: Server-Sent Events.
///
/// Every event has the sequence number of the operation's log as its `id`:
/// reconnecting with `Last-Event-ID` resumes exactly after it; a finished
/// operation replays in full, then `end`. The token may be passed as
/// `?access_token=` (EventSource cannot set headers).
#[utoipa::path(get, path = "/api/operations/{id}/events", tag = "operations", params(("id" = u64, Path, description = "Operation id"), ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event"), EventsQuery), responses((status = 200, description = "Server-Sent Events `output` (data: OutputChunk), `host` (HostEvent), `operation` and `end` (StateEvent); each `id` is the log sequence number. EventSource cannot send headers: pass ?access_token=", content_type = "text/event-stream", body = String)))]
pub async fn events(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<u64>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    recorded(&state, id).await?;
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .or(query.last_event_id)
        .unwrap_or(0);
    // Subscribe before reading the log, so nothing falls between the two.
    let live = state.controller.operations().subscribe(id);
    // Small: a slow client holds few events; behind that, its follower reads the store.
    let (sender, receiver) = futures::channel::mpsc::channel(1);
    let open = Open::new(&state.metrics.sse_clients);
    let follow = follow(
        open,
        state.store.clone(),
        state.controller.operations().clone(),
        id,
        last,
        live,
        sender,
    );
    // A deleted user's stream, or one whose token a password change revoked, ends.
    let revoked = state.auth.revoked(caller.1, Role::Viewer);
    tokio::spawn(async move {
        tokio::select! {
            () = follow => {}
            () = revoked => {}
        }
    });
    Ok(Sse::new(receiver).keep_alive(KeepAlive::default()))
}

/// Feeds one SSE client: the log from the store, then live events; back to
/// the store whenever it fell behind. Ends after `end` or when the client goes.
async fn follow(
    _open: Open,
    store: crate::store::Store,
    engine: crate::operations::Engine,
    id: u64,
    mut last: u64,
    mut live: Option<broadcast::Receiver<Arc<LiveEvent>>>,
    mut client: futures::channel::mpsc::Sender<Result<Event, Infallible>>,
) {
    let mut behind = true;
    // Seen finished in the store: the page after that is the last.
    let mut ended = false;
    // Woken by another replica's writes of the log (subscribed once needed).
    let mut rung: Option<crate::store::Ring> = None;
    loop {
        if behind {
            let (reading, after) = (store.clone(), last);
            let permit = engine.catch_up_permit().await;
            let page = match crate::blocking::run(move || {
                let _permit = permit;
                reading.operation_events(id, after, 512, PAGE_BYTES)
            })
            .await
            {
                Ok(Ok(page)) => page,
                // The database restarting: read again shortly, from where it was.
                Ok(Err(error)) if error.is_transient() && !client.is_closed() => {
                    tokio::time::sleep(ELSEWHERE_POLL).await;
                    continue;
                }
                Ok(Err(error)) => {
                    tracing::warn!(operation = id, %error, "cannot read the operation's events: its stream ends here (the client may resume with Last-Event-ID)");
                    return;
                }
                Err(_) => return,
            };
            if page.is_empty() {
                behind = false;
                if live.is_none() {
                    // Not running here: it ended (its `end` sent), or another
                    // replica runs it and the store is read again shortly.
                    if client.is_closed() || ended {
                        return;
                    }
                    match running_elsewhere(&store, id).await {
                        true => {
                            rung.get_or_insert_with(|| store.doorbell(Followed::OperationLogs))
                                .wait(ELSEWHERE_POLL)
                                .await;
                        }
                        // It ended since the page was read: its last events
                        // are in the store now, read once more.
                        false => ended = true,
                    }
                    behind = true;
                }
                continue;
            }
            for event in page {
                last = event.seq;
                let end = matches!(event.event, OperationEvent::End { .. });
                if client.send(Ok(sse_event(&event))).await.is_err() || end {
                    return;
                }
            }
            continue;
        }
        let Some(receiver) = live.as_mut() else {
            return;
        };
        match receiver.recv().await {
            Ok(live) if live.recorded.seq <= last => {}
            Ok(live) if live.recorded.seq == last + 1 => {
                last = live.recorded.seq;
                let end = matches!(live.recorded.event, OperationEvent::End { .. });
                // Encoded once for all subscribers.
                let data = live
                    .encoded
                    .get_or_init(|| event_data(&live.recorded.event));
                if client
                    .send(Ok(sse_frame(&live.recorded, data.clone())))
                    .await
                    .is_err()
                    || end
                {
                    return;
                }
            }
            // A gap or a lag: the store has everything broadcast (it is written first).
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => behind = true,
            Err(broadcast::error::RecvError::Closed) => {
                live = None;
                behind = true;
            }
        }
    }
}

/// How often a follower reads the log of an operation another replica runs
/// by itself: the store's doorbell wakes it as soon as that one writes.
const ELSEWHERE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether operation `id` has not finished (so another replica runs it), or
/// the store cannot tell for a moment.
async fn running_elsewhere(store: &crate::store::Store, id: u64) -> bool {
    let store = store.clone();
    match crate::blocking::run(move || store.operation_state(id)).await {
        Ok(Ok(Some(state))) => !state.is_finished(),
        // The database restarting: it may well still run.
        Ok(Err(error)) => error.is_transient(),
        _ => false,
    }
}

fn sse_event(event: &RecordedEvent) -> Event {
    sse_frame(event, event_data(&event.event))
}

fn sse_frame(event: &RecordedEvent, data: String) -> Event {
    let name = match event.event {
        OperationEvent::Output { .. } => "output",
        OperationEvent::Host { .. } => "host",
        OperationEvent::Operation { .. } => "operation",
        OperationEvent::End { .. } => "end",
    };
    Event::default()
        .id(event.seq.to_string())
        .event(name)
        .data(data)
}

/// An event's data as JSON: [`OutputChunk`], [`HostEvent`] or [`StateEvent`].
fn event_data(event: &OperationEvent) -> String {
    let data = match event {
        OperationEvent::Output {
            machine_id,
            stream,
            data,
        } => serde_json::to_string(&output_chunk(machine_id.clone(), *stream, data)),
        OperationEvent::Host { machine_id, state } => serde_json::to_string(&HostEvent {
            machine: machine_id.clone(),
            state: state.clone(),
        }),
        OperationEvent::Operation { state } | OperationEvent::End { state } => {
            serde_json::to_string(&StateEvent { state: *state })
        }
    };
    data.expect("event data serialises")
}

/// Output is `text` when it is UTF-8, `base64` otherwise.
fn output_chunk(machine: String, stream: OutputStream, data: &[u8]) -> OutputChunk {
    let bytes = match std::str::from_utf8(data) {
        Ok(text) => OutputBytes::Text {
            text: text.to_owned(),
        },
        Err(_) => OutputBytes::Base64 {
            base64: base64::engine::general_purpose::STANDARD.encode(data),
        },
    };
    OutputChunk {
        machine,
        stream,
        bytes,
    }
}
