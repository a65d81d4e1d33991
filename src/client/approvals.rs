//! `linkops approvals`, `linkops approve ID`, `linkops reject ID`: runs
//! waiting for approvers, and a vote on one.

use serde_json::json;

use super::print::{print_json, print_table};
use super::{Client, Result};
use crate::contract::ApprovalView;

/// `linkops approvals [ID]`: the requests, newest first; with an id, one and its votes.
pub async fn approvals(client: &Client, id: Option<u64>, json: bool) -> Result<()> {
    if let Some(id) = id {
        let view: ApprovalView = client.get(&format!("/api/approvals/{id}")).await?;
        if json {
            return print_json(&view);
        }
        describe(&view);
        let rows = (view.request.votes.iter())
            .map(|vote| {
                let word = if vote.approve { "approved" } else { "rejected" };
                vec![vote.by.clone(), word.to_owned(), vote.comment.clone()]
            })
            .collect();
        print_table(&["BY", "VOTE", "COMMENT"], rows);
        return Ok(());
    }
    let views: Vec<ApprovalView> = client.get("/api/approvals").await?;
    if json {
        return print_json(&views);
    }
    let rows = (views.iter())
        .map(|view| {
            let request = &view.request;
            vec![
                request.id.to_string(),
                view.state.name().to_owned(),
                request.content.script.clone(),
                request.content.machines.join(","),
                request.requested_by.label(),
                format!("{}/{}", view.approvals, request.approvers),
            ]
        })
        .collect();
    print_table(
        &["ID", "STATE", "SCRIPT", "MACHINES", "BY", "APPROVALS"],
        rows,
    );
    Ok(())
}

/// `linkops approve ID` / `linkops reject ID`: votes; exits 0 when counted.
pub async fn vote(
    client: &Client,
    id: u64,
    approve: bool,
    comment: &str,
    json: bool,
) -> Result<()> {
    let verb = if approve { "approve" } else { "reject" };
    let view: ApprovalView = client
        .post(
            &format!("/api/approvals/{id}/{verb}"),
            &json!({"comment": comment}),
        )
        .await?;
    if json {
        return print_json(&view);
    }
    describe(&view);
    Ok(())
}

/// A request in two lines: what it runs, and where it stands.
pub(super) fn describe(view: &ApprovalView) {
    use linkops_reconcilers::approval::RequestState;
    let request = &view.request;
    let expires = jiff::Timestamp::from_millisecond(request.expires_at_ms)
        .map_or_else(|_| "-".to_owned(), |at| at.to_string());
    eprintln!(
        "approval request {}: {} on {} for {} (rules {})",
        request.id,
        request.content.script,
        request.content.machines.join(", "),
        request.requested_by.label(),
        request.rules.join(", ")
    );
    let stands = match &view.state {
        RequestState::AwaitingApproval => format!(
            "awaiting approval: {} of {} by others holding {} (expires {expires}); `linkops approve {}`",
            view.approvals, request.approvers, request.role, request.id
        ),
        RequestState::Approved => "approved: its run-request starts it".to_owned(),
        RequestState::Started { operation_id } => {
            format!(
                "approved: operation {operation_id} started (`linkops ops logs {operation_id} -f`)"
            )
        }
        RequestState::NotStarted { reason } => format!("approved, but not started: {reason}"),
        RequestState::Rejected { by } => format!("rejected by {by}: it never runs"),
        RequestState::Expired => "expired: it never runs (ask again)".to_owned(),
        RequestState::Superseded { reason } => format!("superseded: {reason}"),
    };
    eprintln!("  {stands}");
}
