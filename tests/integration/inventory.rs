//! The Proxmox VE inventory source against a test server written from
//! Proxmox VE's API description (no Proxmox VE can be installed here): HTTPS
//! under `/api2/json`, every answer `{"data": …}`, API tokens as
//! `Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET`, the guests of
//! `GET /cluster/resources?type=vm`, a QEMU guest's addresses from
//! `GET /nodes/{node}/qemu/{vmid}/agent/network-get-interfaces` (500 when its
//! agent does not run) and a container's from `GET
//! /nodes/{node}/lxc/{vmid}/interfaces`. Every request that strays from it is
//! a violation, and the tests require none.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::cli::{linkops_with, logged_in};
use crate::support::FleetSetup;

const TOKEN_ID: &str = "linkops@pve!inventory";
const SECRET: &str = "5f1c9a3e-7d2b-4c8e-9a61-0b3d5e7f9a21";

/// A guest as the test cluster holds it.
#[derive(Clone)]
struct TestGuest {
    vmid: u32,
    name: String,
    qemu: bool,
    running: bool,
    tags: &'static str,
    address: String,
    agent: bool,
}

/// The cluster: 40 guests on two nodes, what it was asked, and what broke the API's description.
#[derive(Default)]
struct Cluster {
    guests: Mutex<Vec<TestGuest>>,
    requests: Mutex<Vec<String>>,
    violations: Mutex<Vec<String>>,
}

fn forty_guests() -> Vec<TestGuest> {
    (100..140)
        .map(|vmid| TestGuest {
            vmid,
            // 101's name is a machine written by hand in links.yaml.
            name: if vmid == 101 {
                "host1".into()
            } else {
                format!("guest-{vmid}")
            },
            qemu: vmid.is_multiple_of(2),
            running: vmid != 110 && vmid != 111,
            tags: match (vmid % 4, vmid % 5) {
                (3, _) => "other",
                (_, 0) => "linkops;web",
                _ => "linkops",
            },
            address: format!("10.20.{}.{}", vmid / 100, vmid % 100),
            agent: vmid != 120,
        })
        .collect()
}

fn node(vmid: u32) -> &'static str {
    if vmid.is_multiple_of(3) {
        "pve2"
    } else {
        "pve1"
    }
}

impl Cluster {
    /// Checks the request's token; records it. `None`: it is refused (401).
    fn asked(&self, headers: &HeaderMap, what: String) -> Option<()> {
        self.requests.lock().unwrap().push(what.clone());
        let wanted = format!("PVEAPIToken={TOKEN_ID}={SECRET}");
        let given = headers.get("authorization").and_then(|v| v.to_str().ok());
        if given != Some(wanted.as_str()) {
            self.violations.lock().unwrap().push(format!(
                "{what}: Authorization is not PVEAPIToken=USER@REALM!TOKENID=SECRET"
            ));
            return None;
        }
        if headers.contains_key("cookie") || headers.contains_key("csrfpreventiontoken") {
            self.violations.lock().unwrap().push(format!(
                "{what}: a ticket's cookie or CSRF header beside a token"
            ));
        }
        Some(())
    }

    fn guest(&self, node_name: &str, vmid: u32, qemu: bool) -> Option<TestGuest> {
        let guests = self.guests.lock().unwrap();
        guests
            .iter()
            .find(|g| g.vmid == vmid && g.qemu == qemu && node(vmid) == node_name)
            .cloned()
    }
}

fn data(value: Value) -> Response {
    axum::Json(json!({ "data": value })).into_response()
}

fn refused() -> Response {
    (StatusCode::UNAUTHORIZED, axum::Json(json!({"data": null}))).into_response()
}

async fn resources(
    State(cluster): State<Arc<Cluster>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let what = format!(
        "GET /cluster/resources?{}",
        query.clone().unwrap_or_default()
    );
    if cluster.asked(&headers, what.clone()).is_none() {
        return refused();
    }
    if query.as_deref() != Some("type=vm") {
        cluster
            .violations
            .lock()
            .unwrap()
            .push(format!("{what}: guests are asked for with type=vm"));
    }
    let guests = cluster.guests.lock().unwrap().clone();
    let mut listed: Vec<Value> = (guests.iter())
        .map(|g| {
            let kind = if g.qemu { "qemu" } else { "lxc" };
            json!({
                "id": format!("{kind}/{}", g.vmid), "type": kind, "node": node(g.vmid), "vmid": g.vmid,
                "name": g.name, "status": if g.running { "running" } else { "stopped" },
                "tags": g.tags, "template": 0, "maxmem": 2147483648u64, "uptime": 3600,
            })
        })
        .collect();
    // A template is listed too, and is never a machine.
    listed.push(json!({"id": "qemu/9000", "type": "qemu", "node": "pve1", "vmid": 9000, "name": "debian-template",
        "status": "stopped", "tags": "linkops", "template": 1}));
    data(Value::Array(listed))
}

async fn agent(
    State(cluster): State<Arc<Cluster>>,
    headers: HeaderMap,
    Path((node_name, vmid)): Path<(String, u32)>,
) -> Response {
    let what = format!("GET /nodes/{node_name}/qemu/{vmid}/agent/network-get-interfaces");
    if cluster.asked(&headers, what.clone()).is_none() {
        return refused();
    }
    let Some(guest) = cluster.guest(&node_name, vmid, true) else {
        cluster
            .violations
            .lock()
            .unwrap()
            .push(format!("{what}: no such QEMU guest on that node"));
        return (StatusCode::NOT_FOUND, axum::Json(json!({"data": null}))).into_response();
    };
    if !guest.running {
        cluster
            .violations
            .lock()
            .unwrap()
            .push(format!("{what}: asked of a stopped guest"));
    }
    if !guest.agent {
        let said = json!({"data": null, "message": format!("QEMU guest agent is not running\n")});
        return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(said)).into_response();
    }
    data(json!({"result": [
        {"name": "lo", "hardware-address": "00:00:00:00:00:00", "ip-addresses": [
            {"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8},
            {"ip-address-type": "ipv6", "ip-address": "::1", "prefix": 128}]},
        {"name": "eth0", "hardware-address": "bc:24:11:00:00:01", "ip-addresses": [
            {"ip-address-type": "ipv6", "ip-address": "fe80::be24:11ff:fe00:1", "prefix": 64},
            {"ip-address-type": "ipv4", "ip-address": "192.168.77.1", "prefix": 24},
            {"ip-address-type": "ipv4", "ip-address": guest.address, "prefix": 16}]},
    ]}))
}

async fn interfaces(
    State(cluster): State<Arc<Cluster>>,
    headers: HeaderMap,
    Path((node_name, vmid)): Path<(String, u32)>,
) -> Response {
    let what = format!("GET /nodes/{node_name}/lxc/{vmid}/interfaces");
    if cluster.asked(&headers, what.clone()).is_none() {
        return refused();
    }
    let Some(guest) = cluster.guest(&node_name, vmid, false) else {
        cluster
            .violations
            .lock()
            .unwrap()
            .push(format!("{what}: no such container on that node"));
        return (StatusCode::NOT_FOUND, axum::Json(json!({"data": null}))).into_response();
    };
    data(json!([
        {"name": "lo", "hwaddr": "00:00:00:00:00:00", "inet": "127.0.0.1/8", "inet6": "::1/128"},
        {"name": "eth0", "hwaddr": "bc:24:11:00:00:02", "inet": format!("{}/16", guest.address)},
    ]))
}

/// Anything else: not in the description.
async fn stray(State(cluster): State<Arc<Cluster>>, request: axum::extract::Request) -> Response {
    let what = format!("{} {}", request.method(), request.uri());
    cluster
        .violations
        .lock()
        .unwrap()
        .push(format!("{what}: not a path LinkOps should ask"));
    (
        StatusCode::NOT_IMPLEMENTED,
        axum::Json(json!({"data": null})),
    )
        .into_response()
}

/// Serves the cluster over HTTPS on loopback with a certificate from `authority`; its URL.
async fn serve(cluster: Arc<Cluster>, authority: &testbed::TestAuthority) -> String {
    let (certificate, key) = authority.issue("pve", "IP:127.0.0.1").unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certificate)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let app = axum::Router::new()
        .route("/api2/json/cluster/resources", get(resources))
        .route(
            "/api2/json/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces",
            get(agent),
        )
        .route(
            "/api2/json/nodes/{node}/lxc/{vmid}/interfaces",
            get(interfaces),
        )
        .fallback(stray)
        .with_state(cluster);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await
                    .ok();
            });
        }
    });
    format!("https://{address}")
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn forty_proxmox_guests_become_a_branch_whose_plan_lists_them_and_hand_written_entries_stay()
{
    let setup = FleetSetup::new(1, &[], "scripts: []\n");
    let daemon = setup.start().await;
    let home = logged_in(&daemon).await;
    let files = testbed::private_dir();
    let authority = testbed::TestAuthority::new(files.path(), "pve").unwrap();
    let cluster = Arc::new(Cluster::default());
    *cluster.guests.lock().unwrap() = forty_guests();
    let url = serve(cluster.clone(), &authority).await;
    let token_file = files.path().join("proxmox-token");
    testbed::write_private(&token_file, &format!("{SECRET}\n"));
    let checkout = &setup.work.dir;
    setup.work.write(
        "inventory/proxmox.yaml",
        &format!(
            "url: {url}\ntoken_id: {TOKEN_ID}\nguests: {{tags: [linkops]}}\nmachines:\n  id: \"{{name}}\"\n  user: root\n  tags: [proxmox]\n  network: 10.20.0.0/16\n"
        ),
    );
    setup.work.commit("the Proxmox source's rules");
    let hand_written = std::fs::read_to_string(checkout.join("links.yaml")).unwrap();
    let repo = checkout.to_str().unwrap();
    let ca = authority.certificate();
    let sync_args = [
        "inventory",
        "sync",
        "--repo",
        repo,
        "--token-file",
        token_file.to_str().unwrap(),
        "--ca-file",
        ca.to_str().unwrap(),
    ];

    let identity = &crate::enroll::GIT_IDENTITY;
    let synced = linkops_with(home.path(), &sync_args, None, identity).await;
    let said = String::from_utf8_lossy(&synced.stdout).into_owned();
    assert!(
        synced.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&synced.stderr)
    );
    // 30 guests tagged linkops: one stopped, one an entry written by hand, one without its agent.
    let added: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("+ machine "))
        .collect();
    assert_eq!(added.len(), 27, "{said}");
    assert!(
        said.contains(
            "skipped container 101 (host1): links.yaml has a machine of that id written by hand"
        ),
        "{said}"
    );
    assert!(
        said.contains("skipped VM 120 (guest-120): no address"),
        "{said}"
    );
    assert!(!said.contains(SECRET));
    assert_eq!(
        cluster.violations.lock().unwrap().clone(),
        Vec::<String>::new()
    );
    // One list, then the addresses of the 29 running guests the rules take (the hand-written one's too).
    assert_eq!(cluster.requests.lock().unwrap().len(), 1 + 29);

    // The checkout is as it was; the branch holds the proposal, the hand-written lines untouched.
    assert_eq!(
        std::fs::read_to_string(checkout.join("links.yaml")).unwrap(),
        hand_written
    );
    git(checkout, &["switch", "--quiet", "inventory/proxmox"]);
    let proposed = std::fs::read_to_string(checkout.join("links.yaml")).unwrap();
    assert!(proposed.starts_with(&hand_written), "{proposed}");
    let planned = linkops_with(home.path(), &["plan", repo], None, &[]).await;
    let plan = String::from_utf8_lossy(&planned.stdout).into_owned();
    let planned_ids: BTreeSet<&str> = (plan.lines())
        .filter_map(|l| l.trim().strip_prefix("+ machine "))
        .collect();
    let synced_ids: BTreeSet<&str> = added
        .iter()
        .map(|l| l.trim_start_matches("+ machine "))
        .collect();
    assert_eq!(planned_ids, synced_ids, "{plan}");
    assert!(planned_ids.contains("guest-100") && !planned_ids.contains("host1"));
    assert!(
        proposed.contains("host: 10.20.1.5\n"),
        "the address in the network, not 192.168.77.1"
    );
    git(checkout, &["switch", "--quiet", "main"]);

    // Guests change: one deleted, one moved. The branch is proposed again from main.
    {
        let mut guests = cluster.guests.lock().unwrap();
        guests.retain(|g| g.vmid != 100);
        guests
            .iter_mut()
            .filter(|g| g.vmid == 102)
            .for_each(|g| g.address = "10.20.9.9".into());
    }
    let again = linkops_with(home.path(), &sync_args, None, identity).await;
    let said = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(again.status.success(), "{said}");
    assert!(
        said.contains("+ machine guest-102"),
        "against main, every entry is new: {said}"
    );
    git(checkout, &["switch", "--quiet", "inventory/proxmox"]);
    let proposed = std::fs::read_to_string(checkout.join("links.yaml")).unwrap();
    assert!(!proposed.contains("id: guest-100\n") && proposed.contains("host: 10.20.9.9\n"));
    assert_eq!(
        git(
            checkout,
            &["rev-list", "--count", "main..inventory/proxmox"]
        )
        .trim(),
        "1",
        "one proposal, replaced"
    );
    git(checkout, &["switch", "--quiet", "main"]);

    // A wrong secret: refused by the API, said so, and the secret never shown.
    testbed::write_private(&token_file, "not-the-secret\n");
    let wrong = linkops_with(home.path(), &sync_args, None, identity).await;
    let told = String::from_utf8_lossy(&wrong.stderr).into_owned();
    assert!(!wrong.status.success());
    assert!(told.contains("HTTP 401"), "{told}");
    assert!(!told.contains("not-the-secret"), "{told}");
    daemon.stop().await;
}
