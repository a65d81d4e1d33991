//! `POST /api/tables/query`: filtered, sorted, paged reads of any record kind.

use axum::body::Bytes;
use axum::extract::State;

use super::extract::Json;

use super::auth::Authenticated;
use super::{ApiError, AppState};
use crate::contract::{TableColumn, TablePage};
use crate::tables::{self, Readers, query::QueryRequest};

/// `POST /api/tables/query`
#[utoipa::path(post, path = "/api/tables/query", tag = "tables", request_body = crate::tables::query::QueryRequest, responses((status = 200, description = "`{table, columns: [{name, type}], rows: [{column: value}], total?, has_more, next_cursor?}`. Tables: machines, scripts, operations, operation_hosts, sync_history, terminal_workspaces, terminal_sessions, audit_log, users (these four: admin)", body = TablePage), (status = 400, description = "Unknown table or column, a value of the wrong type, or an operator the column does not support; the message names it", body = crate::contract::ErrorBody), (status = 429, description = "Too many table queries at once ([http] table_queries, table_queries_per_user)", body = crate::contract::ErrorBody)))]
pub async fn query(
    State(state): State<AppState>,
    caller: Authenticated,
    body: Bytes,
) -> Result<Json<TablePage>, ApiError> {
    // Parsed here, so that an unknown operator or field is a 400 in the API's own shape.
    let request: QueryRequest = serde_json::from_slice(&body)
        .map_err(|error| ApiError::BadRequest(format!("invalid query: {error}")))?;
    let readers =
        tables::readers(&request.table).map_err(|error| ApiError::BadRequest(error.to_string()))?;
    let user = match readers {
        Readers::Admins => caller.administers(&state)?,
        Readers::Everyone | Readers::SeeingMachine(_) => caller.signed_in(),
    };
    let reach = caller.reach(&state);
    let permit = read_permit(&state, &user.name)?;
    let store = state.store.clone();
    let table = request.table.clone();
    let page = crate::blocking::run(move || {
        // Held until the read ends, even when the caller has gone.
        let _permit = permit;
        tables::run(&store, &request, &|machine| reach.sees(machine))
    })
    .await
    .map_err(|error| ApiError::Internal(error.to_string()))?
    .map_err(|error| match error {
        tables::Error::Query(error) => ApiError::BadRequest(error.to_string()),
        tables::Error::Store(error) => error.into(),
    })?;
    let columns = page
        .columns
        .iter()
        .map(|c| TableColumn {
            name: c.name.to_owned(),
            kind: c.kind,
        })
        .collect();
    Ok(Json(TablePage {
        table,
        columns,
        rows: page.rows_json(),
        total: page.total,
        has_more: page.next_cursor.is_some(),
        next_cursor: page.next_cursor,
    }))
}

/// A place among the reads over whole tables running at once — table queries
/// and pictures (`[http] table_queries`, `table_queries_per_user`), or 429.
pub(super) fn read_permit(state: &AppState, user: &str) -> Result<tables::Permit, ApiError> {
    (state.table_queries.take(user)).map_err(|error| ApiError::Busy {
        message: error.to_string(),
        retry_after_secs: 1,
    })
}
