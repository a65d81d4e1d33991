//! `linkops enroll` against a real OpenSSH host that starts bare — no
//! enrollment id, no key of the daemon's authorised, no CA trusted, its host
//! key in no known_hosts of the daemon's: one command installs the trust and
//! proposes the entry on a branch; once merged, the daemon checks the host
//! and runs operations through certificates alone, and the host's own log
//! names them. Enrolling again changes nothing; a refused step leaves the
//! host as it was.

use std::process::{Child, Command, Output, Stdio};

use linkops::contract::{ClusterView, MachineView, OperationView, TablePage};
use linkops_reconcilers::enrollment::Enrollment;
use linkops_reconcilers::operation::OperationState;
use reqwest::StatusCode;
use serde_json::json;
use testbed::{TEST_USER, TestHost};

use crate::cli::{linkops_with, logged_in, stderr, stdout};
use crate::support::{ADMIN, FleetSetup, TestDaemon, answer, eventually, run_to_end};

const SCRIPTS: &str = "scripts:\n  - {id: whoami, name: Who am I, body: id -un}\n";
/// Commits the CLI makes in the operator's checkout are theirs.
const GIT_IDENTITY: [(&str, &str); 4] = [
    ("GIT_AUTHOR_NAME", "Operator"),
    ("GIT_AUTHOR_EMAIL", "operator@example.invalid"),
    ("GIT_COMMITTER_NAME", "Operator"),
    ("GIT_COMMITTER_EMAIL", "operator@example.invalid"),
];

/// A daemon with an empty inventory and no host key in its known_hosts, and
/// a fleet of one bare host.
async fn bare_host_and_daemon() -> (FleetSetup, TestDaemon) {
    let setup = FleetSetup::new(1, &[], SCRIPTS);
    setup.work.write("links.yaml", "machines: []\n");
    setup.work.commit("no machines yet");
    let host = setup.fleet.host(0);
    host.remove_client_id().unwrap();
    setup.fleet.revoke_client_keys().unwrap();
    let config = setup.config();
    std::fs::write(config.known_hosts_path(), "").unwrap();
    let daemon = setup.start_with(config).await;
    (setup, daemon)
}

/// `linkops enroll` of host 0 as `host1`, as root with the operator's key
/// file, its host key confirmed by fingerprint, and `extra` arguments.
async fn enroll(
    daemon: &TestDaemon,
    setup: &FleetSetup,
    home: &std::path::Path,
    extra: &[&str],
) -> Output {
    let host = setup.fleet.host(0);
    let (address, port) = (host.address().to_string(), host.port().to_string());
    let mut args = vec![
        "--server",
        &daemon.url,
        "enroll",
        &address,
        "--port",
        &port,
        "--id",
        "host1",
        "--tag",
        "test",
        "--user",
        TEST_USER,
    ];
    args.extend_from_slice(extra);
    linkops_with(home, &args, None, &GIT_IDENTITY).await
}

fn fingerprint(host: &TestHost) -> String {
    let key = linkops::ssh::ca::PublicKey::from_openssh(host.host_public_key()).unwrap();
    key.fingerprint(Default::default()).to_string()
}

/// An ssh-agent holding `key`, stopped on drop.
struct Agent {
    process: Child,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn holding(key: &std::path::Path) -> Agent {
        let dir = testbed::private_dir();
        let socket = dir.path().join("agent.sock");
        let process = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let agent = Agent {
            process,
            socket,
            _dir: dir,
        };
        // ssh-add retries until the agent listens (its socket appears as it does).
        let added = (0..100).find_map(|_| {
            let added = Command::new("ssh-add")
                .arg(key)
                .env("SSH_AUTH_SOCK", &agent.socket)
                .output()
                .unwrap();
            if added.status.success() {
                return Some(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            None
        });
        added.expect("ssh-add could not reach the agent within 5 s");
        agent
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.process.kill().ok();
        self.process.wait().ok();
    }
}

#[tokio::test]
async fn a_bare_host_is_enrolled_by_one_command_and_reached_by_certificates_alone() {
    let (setup, daemon) = bare_host_and_daemon().await;
    let home = logged_in(&daemon).await;
    let host = setup.fleet.host(0);
    // The operator's checkout of the config repository.
    let checkout = setup.fleet.dir().join("checkout");
    setup.work.git(&[
        "clone",
        "-q",
        setup.work.dir.to_str().unwrap(),
        checkout.to_str().unwrap(),
    ]);

    let operator_key = setup.fleet.operator_key().to_str().unwrap().to_owned();
    let fingerprint = fingerprint(host);
    let enrolled = enroll(
        &daemon,
        &setup,
        home.path(),
        &[
            "--identity",
            &operator_key,
            "--host-key-fingerprint",
            &fingerprint,
            "--repo",
            checkout.to_str().unwrap(),
            "--push",
        ],
    )
    .await;
    let said = stdout(&enrolled);
    assert!(enrolled.status.success(), "{said}{}", stderr(&enrolled));
    for step in [
        "as --host-key-fingerprint says",
        "host certificate serial",
        "sshd reloaded: it presents its host certificate",
        "entry committed on branch enroll/host1",
        "pushed enroll/host1 to origin",
    ] {
        assert!(said.contains(step), "{step}: {said}");
    }
    let client_id = host.client_id().expect("a client id written");
    assert!(client_id.starts_with("LINKOPS-"), "{client_id}");
    // The host certificate is audited as the admin's and counted.
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let body = json!({ "table": "audit_log", "filter": [{ "column": "action", "op": "eq", "value": "ca.host_certificate" }] });
    let (_, page) = daemon
        .request(
            reqwest::Method::POST,
            "/api/tables/query",
            &token,
            Some(body),
        )
        .await;
    let issued = answer::<TablePage>(&page).rows;
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(
        (&issued[0]["actor"], &issued[0]["target"]),
        (&json!(ADMIN.0), &json!("host1"))
    );
    let metrics = daemon.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains(r#"linkops_ssh_certificates_issued_total{kind="host"} 1"#),
        "{metrics}"
    );

    // Reviewed and merged: the daemon follows.
    setup
        .work
        .git(&["merge", "-q", "--ff-only", "enroll/host1"]);
    let entry = setup.work.read("links.yaml");
    assert!(entry.contains("auth: certificate"), "{entry}");
    assert!(
        entry.contains(client_id.trim().trim_start_matches("LINKOPS-")),
        "{entry}"
    );
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let synced = daemon.post("/api/git/sync", Some(&token)).await;
    assert_eq!(synced.status(), StatusCode::OK);
    let verified = daemon.post("/api/links/host1/verify", Some(&token)).await;
    assert_eq!(verified.status(), StatusCode::OK);
    let machine: MachineView = verified.json().await.unwrap();
    assert_eq!(machine.enrollment, Enrollment::Enrolled, "{machine:?}");

    // An operation, through a certificate the host's own log names.
    let (id, ended) = run_to_end(&daemon, &token, "whoami", &["host1"]).await;
    assert_eq!(ended, OperationState::Succeeded);
    let operation: OperationView = daemon.read(&format!("/api/operations/{id}"), &token).await;
    let login = operation.hosts[0]
        .certificate
        .clone()
        .expect("a certificate login");
    let replica = daemon
        .read::<ClusterView>("/api/cluster", &token)
        .await
        .replica;
    assert_eq!(
        login.key_id,
        format!("linkops:{replica}:op-{id}:{}", ADMIN.0)
    );
    let named = format!("ID {} (serial {})", login.key_id, login.serial);
    eventually("sshd to log the operation's login", || async {
        let log = host.sshd_log().unwrap();
        log.lines()
            .any(|line| line.contains("Accepted publickey") && line.contains(&named))
            .then_some(())
    })
    .await;

    // Again, with the operator's ssh-agent and nothing to confirm: the host
    // proves itself by its certificate, and nothing changes.
    setup
        .work
        .git(&["-C", checkout.to_str().unwrap(), "pull", "-q", "--ff-only"]);
    let agent = Agent::holding(setup.fleet.operator_key());
    let socket = agent.socket.to_str().unwrap().to_owned();
    let mut env = GIT_IDENTITY.to_vec();
    env.push(("SSH_AUTH_SOCK", &socket));
    let host_of = host.address().to_string();
    let port = host.port().to_string();
    let again = linkops_with(
        home.path(),
        &[
            "--server",
            &daemon.url,
            "enroll",
            &host_of,
            "--port",
            &port,
            "--id",
            "host1",
            "--user",
            TEST_USER,
            "--repo",
            checkout.to_str().unwrap(),
        ],
        None,
        &env,
    )
    .await;
    let said = stdout(&again);
    assert!(again.status.success(), "{said}{}", stderr(&again));
    for step in [
        "proved by its host certificate",
        "host1 is enrolled already: nothing changed on it",
        "host1 is in links.yaml already: nothing to propose",
    ] {
        assert!(said.contains(step), "{step}: {said}");
    }
    assert_eq!(host.client_id(), Some(client_id));
    daemon.stop().await;
}

#[tokio::test]
async fn a_refused_step_leaves_the_host_as_it_was() {
    let (setup, daemon) = bare_host_and_daemon().await;
    let home = logged_in(&daemon).await;
    let host = setup.fleet.host(0);
    // Another CA trusted by a drop-in read before LinkOps' own: sshd would
    // never take the user CA, so enrolling refuses and puts everything back.
    let other = host.etc_ssh().join("sshd_config.d/00-other-ca.conf");
    std::fs::write(&other, "TrustedUserCAKeys /etc/ssh/other_ca.pub\n").unwrap();
    let operator_key = setup.fleet.operator_key().to_str().unwrap().to_owned();
    let fingerprint = fingerprint(host);
    let refused = enroll(
        &daemon,
        &setup,
        home.path(),
        &[
            "--identity",
            &operator_key,
            "--host-key-fingerprint",
            &fingerprint,
            "--print",
        ],
    )
    .await;
    let said = stderr(&refused);
    assert!(!refused.status.success(), "{}", stdout(&refused));
    assert!(
        said.contains("host1: writing the trust: sshd does not take TrustedUserCAKeys"),
        "{said}"
    );
    assert_eq!(
        host.client_id(),
        None,
        "the client id was put back (absent)"
    );
    assert!(!host.etc_ssh().join("sshd_config.d/linkops.conf").exists());
    assert!(
        !host.etc_ssh().join("linkops").exists(),
        "the directory it made is gone, backup and all"
    );

    // A host key other than the one confirmed: nothing is sent at all.
    let wrong = enroll(
        &daemon,
        &setup,
        home.path(),
        &[
            "--identity",
            &operator_key,
            "--host-key-fingerprint",
            "SHA256:not-this-one",
            "--print",
        ],
    )
    .await;
    let said = stderr(&wrong);
    assert!(
        said.contains("not SHA256:not-this-one as --host-key-fingerprint says"),
        "{said}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn machines_listed_in_a_file_are_enrolled_at_once_with_a_line_each_and_a_summary() {
    let setup = FleetSetup::new(3, &[], SCRIPTS);
    setup.work.write("links.yaml", "machines: []\n");
    setup.work.commit("no machines yet");
    for host in setup.fleet.hosts() {
        host.remove_client_id().unwrap();
    }
    let daemon = setup.start().await;
    let home = logged_in(&daemon).await;
    let hosts = setup.fleet.hosts();
    let line = |index: usize, fingerprint: &str| {
        let host = &hosts[index];
        format!(
            "{}:{} {} {fingerprint}\n",
            host.address(),
            host.port(),
            host.name()
        )
    };
    // host3's fingerprint is wrong on purpose: it is refused, the others go on.
    let list = format!(
        "# the new rack\n{}{}{}",
        line(0, &fingerprint(&hosts[0])),
        line(1, &fingerprint(&hosts[1])),
        line(2, &fingerprint(&hosts[0])),
    );
    let path = setup.fleet.dir().join("rack.txt");
    std::fs::write(&path, list).unwrap();
    let operator_key = setup.fleet.operator_key().to_str().unwrap().to_owned();
    let output = linkops_with(
        home.path(),
        &[
            "--server",
            &daemon.url,
            "enroll",
            "--from",
            path.to_str().unwrap(),
            "--concurrency",
            "3",
            "--user",
            TEST_USER,
            "--identity",
            &operator_key,
            "--tag",
            "rack",
        ],
        None,
        &GIT_IDENTITY,
    )
    .await;
    let said = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "one failed: {said}{}",
        stderr(&output)
    );
    for host in ["host1", "host2"] {
        assert!(
            said.contains(&format!(": enrolled as {host}")),
            "{host}: {said}"
        );
    }
    assert!(said.contains("/3] "), "a progress count: {said}");
    assert!(
        said.contains("2 enrolled (0 of them already were), 1 failed"),
        "{said}"
    );
    assert!(said.contains("as --host-key-fingerprint says"), "{said}");
    // Printed together, the failed one not among them.
    assert!(said.contains("add to links.yaml:"), "{said}");
    assert_eq!(said.matches("auth: certificate").count(), 2, "{said}");
    assert!(hosts[0].client_id().is_some() && hosts[1].client_id().is_some());
    assert_eq!(
        hosts[2].client_id(),
        None,
        "the refused one was not touched"
    );
    daemon.stop().await;
}
