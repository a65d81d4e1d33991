//! `/api/operations`: run scripts, follow them live, stop them, read their history.

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::extract::State;

use super::error::StepUp;
use super::extract::{Json, Path, Query};
use crate::controller::{Caller, RunError};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::{Stream, StreamExt};
use linkops_reconcilers::ask::Ask;
use linkops_reconcilers::operation::{
    HostResult, Operation, OperationEvent, RecordedEvent, Stream as OutputStream,
};
use linkops_reconcilers::script::{ParamValue, Targets};
use serde_json::Value;

use super::auth::{Authenticated, Reach};
use super::{ApiError, AppState, at};
use crate::contract::{
    EventsQuery, HistoryQuery, HostEvent, OperationStreamEvent, OperationView, OutputBytes,
    OutputChunk, OutputPage, OutputQuery, RunBody, StateEvent, Stopping,
};
use crate::metrics::Open;
use crate::store::Actor;

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

/// An operation as `reach` may read it: refused unless it sees one of its
/// machines; the results of those it does not see left out.
async fn readable(
    state: &AppState,
    reach: &Reach,
    id: u64,
) -> Result<(Operation, Vec<HostResult>), ApiError> {
    let (operation, mut hosts) = recorded(state, id).await?;
    reach.sees_any(&operation.machines)?;
    hosts.retain(|host| reach.sees(&host.machine_id));
    Ok((operation, hosts))
}

/// `GET /api/operations/{id}`
#[utoipa::path(get, path = "/api/operations/{id}", tag = "operations", params(("id" = u64, Path, description = "Operation id")), responses((status = 200, description = "An operation and its per-machine results", body = OperationView)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<u64>,
) -> Result<Json<OperationView>, ApiError> {
    let (operation, hosts) = readable(&state, &caller.reach(&state), id).await?;
    Ok(Json(operation_view(operation, hosts)))
}

/// `POST /api/operations/run`: starts at once and answers with the operation;
/// it continues in the background (follow it at `/api/operations/{id}/events`).
#[utoipa::path(post, path = "/api/operations/run", tag = "operations", request_body = RunBody, responses((status = 202, description = "Started; follow it at /api/operations/{id}/events (operator); suspended machines are skipped, naming their suspension", body = OperationView), (status = 201, description = "Recorded as awaiting approval (access.yaml's approvals): the request at Location", body = crate::contract::ApprovalView), (status = 409, description = "The fleet, or every machine it selects, is suspended", body = crate::contract::ErrorBody), (status = 422, description = "Unknown script, bad parameters or no targets; details.field names it", body = crate::contract::ErrorBody)))]
pub async fn run(
    State(state): State<AppState>,
    caller: Authenticated,
    Json(body): Json<RunBody>,
) -> Result<Response, ApiError> {
    let grants = caller.grants(&state);
    let fresh = caller.stepped_up(&state, "running on a protected machine");
    let by = Caller {
        name: &caller.user.name,
        grants: &grants,
        second_factor_fresh: fresh.is_ok(),
    };
    let mut params = BTreeMap::new();
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
        params.insert(name, value);
    }
    let ask = Ask {
        script: body.script,
        params,
        targets: Targets {
            machines: body.targets.machines,
            tags: body.targets.tags,
            where_: body.targets.where_,
        },
        rollout: body.rollout,
    };
    match state.controller.run(ask, body.concurrency, by).await {
        Ok(operation) => Ok(started(&state, operation.id).await?.into_response()),
        Err(RunError::AwaitingApproval(request)) => Ok(super::approvals::awaiting(*request)),
        Err(error) => Err(refused(error, fresh)),
    }
}

/// `POST /api/operations/{id}/retry`: the same script and parameters again, on
/// the machines of the operation that failed, timed out or were interrupted.
#[utoipa::path(post, path = "/api/operations/{id}/retry", tag = "operations", params(("id" = u64, Path, description = "Operation id")), responses((status = 202, description = "Started (operator): a new operation whose `retry_of` is this one", body = OperationView), (status = 201, description = "Recorded as awaiting approval: the request at Location", body = crate::contract::ApprovalView), (status = 409, description = "Still running, no machine of it failed, timed out or was interrupted, a state's apply (resume the state instead), or its machines are suspended", body = crate::contract::ErrorBody), (status = 422, description = "Its script left the catalog, or its parameters no longer fit it", body = crate::contract::ErrorBody)))]
pub async fn retry(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    let grants = caller.grants(&state);
    let fresh = caller.stepped_up(&state, "running on a protected machine");
    let by = Caller {
        name: &caller.user.name,
        grants: &grants,
        second_factor_fresh: fresh.is_ok(),
    };
    match state.controller.retry(id, by).await {
        Ok(operation) => Ok(started(&state, operation.id).await?.into_response()),
        Err(RunError::AwaitingApproval(request)) => Ok(super::approvals::awaiting(*request)),
        Err(error) => Err(refused(error, fresh)),
    }
}

/// A run refused: for protected machines without a fresh second factor,
/// how to give one.
fn refused(error: RunError, fresh: Result<(), StepUp>) -> ApiError {
    match (error, fresh) {
        (RunError::SecondFactor(machines), Err(step_up)) => ApiError::StepUpRequired(StepUp {
            message: step_up.message.replace(
                "running on a protected machine",
                &format!("running on protected machines {}", machines.join(", ")),
            ),
            ..step_up
        }),
        (error, _) => error.into(),
    }
}

/// Answers as `POST /api/operations/run` does, for a started operation.
async fn started(state: &AppState, id: u64) -> Result<(StatusCode, Json<OperationView>), ApiError> {
    let (operation, hosts) = recorded(state, id).await?;
    Ok((StatusCode::ACCEPTED, Json(operation_view(operation, hosts))))
}

/// `POST /api/operations/{id}/stop`
#[utoipa::path(post, path = "/api/operations/{id}/stop", tag = "operations", params(("id" = u64, Path, description = "Operation id")), responses((status = 202, description = "Stopping (operator): unstarted machines never start, running scripts get SIGTERM then SIGKILL", body = Stopping), (status = 409, description = "Not running", body = crate::contract::ErrorBody)))]
pub async fn stop(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<u64>,
) -> Result<(StatusCode, Json<Stopping>), ApiError> {
    let (operation, _) = recorded(&state, id).await?;
    (caller.reach(&state)).may_run(&operation.script, &operation.machines)?;
    let stopping = (state.controller.operations())
        .stop_as(id, &Actor::user(&caller.user.name))
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
    caller: Authenticated,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<Vec<OperationView>>, ApiError> {
    let reach = caller.reach(&state);
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
                    && reach.sees_any(&operation.machines).is_ok()
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
    caller: Authenticated,
    Path(id): Path<u64>,
    Query(query): Query<OutputQuery>,
) -> Result<Json<OutputPage>, ApiError> {
    let reach = caller.reach(&state);
    readable(&state, &reach, id).await?;
    let limit = query.limit.unwrap_or(1000).min(5000);
    let after = query.after;
    let events = state
        .store
        .run(move |store| store.operation_events(id, after, limit, crate::operations::PAGE_BYTES))
        .await?;
    let next_after = events.last().map(|e| e.seq);
    let chunks = events
        .into_iter()
        .filter_map(|e| match e.event {
            OperationEvent::Output {
                machine_id,
                stream,
                data,
            } if query.machine.as_ref().is_none_or(|m| *m == machine_id)
                && reach.sees(&machine_id) =>
            {
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
    let reach = caller.reach(&state);
    readable(&state, &reach, id).await?;
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .or(query.last_event_id)
        .unwrap_or(0);
    let mut followed = state.controller.operations().follow(id, last);
    let open = Open::new(&state.metrics.sse_clients);
    let opened = reach.sight().clone();
    let events = futures::stream::poll_fn(move |cx| followed.poll_recv(cx))
        // Only the machines the caller sees: their output, their results.
        .filter(move |live| std::future::ready(reach.sees_event(&live.recorded.event)))
        .map(move |live| {
            let _open = &open;
            // Encoded once for all the operation's live subscribers.
            let data = live
                .encoded
                .get_or_init(|| event_data(&live.recorded.event));
            Ok(sse_frame(&live.recorded, data.clone()))
        });
    // Ends when the user is deleted, a password change revoked their token,
    // or what their grants see changed (a reconnect resumes with what it sees now).
    let revoked = caller.lost(&state, move |held| held.sight() == opened);
    Ok(Sse::new(events.take_until(revoked)).keep_alive(KeepAlive::default()))
}

fn sse_frame(event: &RecordedEvent, data: String) -> Event {
    let name = match event.event {
        OperationEvent::Output { .. } => OperationStreamEvent::Output,
        OperationEvent::Host { .. } => OperationStreamEvent::Host,
        OperationEvent::Operation { .. } => OperationStreamEvent::Operation,
        OperationEvent::End { .. } => OperationStreamEvent::End,
    };
    Event::default()
        .id(event.seq.to_string())
        .event(name.name())
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
