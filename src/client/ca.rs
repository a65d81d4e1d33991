//! `linkops ca`: the SSH certificate authority as the daemon serves it —
//! its keys and the rotation under way, a rotation's steps, revocations.

use linkops_reconcilers::certificate::Revocation;
use serde_json::json;

use super::print::{api_name, or_dash, print_json, print_table};
use super::{Client, Result};
use crate::contract::{CaView, RotateRequest};

/// `linkops ca`: the CAs' fingerprints, the user CA's age, the rotation
/// under way (and the machines it waits for), the revocations.
pub async fn show(client: &Client, json: bool) -> Result<()> {
    let view: CaView = client.get("/api/ca").await?;
    if json {
        return print_json(&view);
    }
    print_view(&view);
    Ok(())
}

/// `linkops ca rotate [--finish [--force]]`.
pub async fn rotate(client: &Client, request: RotateRequest, json: bool) -> Result<()> {
    let view: CaView = client.post("/api/ca/rotation", &request).await?;
    if json {
        return print_json(&view);
    }
    match request.finish {
        false => eprintln!(
            "rotation begun: both user CAs are trusted from now on; the machines' trust state rolls the next one out"
        ),
        true => eprintln!(
            "rotation finished: the new user CA signs; the machines' trust state stops trusting the old one"
        ),
    }
    print_view(&view);
    Ok(())
}

/// `linkops ca revoke`: a certificate by serial, or a machine's host certificates.
pub async fn revoke(
    client: &Client,
    serial: Option<&str>,
    machine: Option<&str>,
    reason: &str,
    json: bool,
) -> Result<()> {
    let body = json!({ "serial": serial, "machine": machine, "reason": reason });
    let revoked: Vec<Revocation> = client.post("/api/ca/revocations", &body).await?;
    if json {
        return print_json(&revoked);
    }
    print_revocations(&revoked);
    Ok(())
}

fn print_view(view: &CaView) {
    let due = match view.user_ca_rotation_due_days {
        Some(days) if days < 0 => format!(", rotation overdue by {} days", -days),
        Some(days) => format!(", rotation due in {days} days"),
        None => String::new(),
    };
    println!(
        "user CA  {}  signing since {}{due}",
        view.user_ca_fingerprint,
        or_dash(view.user_ca_since)
    );
    println!("host CA  {}", view.host_ca_fingerprint);
    match &view.rotation {
        None => println!("rotation: none under way (`linkops ca rotate` begins one)"),
        Some(rotation) if rotation.waiting_for.is_empty() => println!(
            "rotation: next user CA {} is trusted everywhere it must be: `linkops ca rotate --finish`",
            rotation.next_user_ca_fingerprint
        ),
        Some(rotation) => {
            println!(
                "rotation: next user CA {}, waiting for {} machine(s):",
                rotation.next_user_ca_fingerprint,
                rotation.waiting_for.len()
            );
            for wait in &rotation.waiting_for {
                println!("  {}  {}", wait.machine, wait.reason);
            }
        }
    }
    println!(
        "host certificates signed: {}; certificates revoked: {}",
        view.host_certificates.len(),
        view.revocations.len()
    );
    print_revocations(&view.revocations);
}

fn print_revocations(revocations: &[Revocation]) {
    if revocations.is_empty() {
        return;
    }
    let rows = revocations
        .iter()
        .map(|r| {
            vec![
                r.serial.to_string(),
                api_name(&r.kind),
                or_dash(r.machine.as_ref()),
                r.revoked_by.clone(),
                r.reason.clone(),
            ]
        })
        .collect();
    print_table(&["SERIAL", "KIND", "MACHINE", "BY", "REASON"], rows);
}
