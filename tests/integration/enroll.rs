//! `linkops enroll` against a real OpenSSH host that starts bare — no
//! enrollment id, no key of the daemon's authorised, no CA trusted, its host
//! key in no known_hosts of the daemon's: one command installs the trust and
//! proposes the entry on a branch; once merged, the daemon checks the host
//! and runs operations through certificates alone, and the host's own log
//! names them. Enrolling again changes nothing; a refused step leaves the
//! host as it was. With the trust state shipped in `examples/`, a revoked
//! certificate is refused by the host's sshd, and a revoked host by the daemon.

use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use linkops::contract::{CaView, ClusterView, MachineView, StateDetail, TablePage};
use linkops::ssh::ca::{self, Authority};
use linkops::ssh::{Certified, Connection};
use linkops_reconcilers::certificate::{CertificateKind, Purpose, Revocation, user_grant};
use linkops_reconcilers::enrollment::Enrollment;
use linkops_reconcilers::operation::OperationState;
use reqwest::StatusCode;
use serde_json::json;
use testbed::{TEST_USER, TestHost};

use crate::cli::{linkops_with, logged_in, stderr, stdout};
use crate::support::{ADMIN, FleetSetup, TestDaemon, answer, eventually, run_to_end};

const SCRIPTS: &str = "scripts:\n  - {id: whoami, name: Who am I, body: id -un}\n";
/// Commits the CLI makes in the operator's checkout are theirs.
pub(crate) const GIT_IDENTITY: [(&str, &str); 4] = [
    ("GIT_AUTHOR_NAME", "Operator"),
    ("GIT_AUTHOR_EMAIL", "operator@example.invalid"),
    ("GIT_COMMITTER_NAME", "Operator"),
    ("GIT_COMMITTER_EMAIL", "operator@example.invalid"),
];

/// A daemon with an empty inventory and no host key in its known_hosts, and
/// a fleet of one bare host.
async fn bare_host_and_daemon() -> (FleetSetup, TestDaemon) {
    bare_host_and_daemon_with(|_| {}).await
}

/// The same, its config changed by `change` first.
async fn bare_host_and_daemon_with(
    change: impl FnOnce(&mut linkops::config::Config),
) -> (FleetSetup, TestDaemon) {
    let setup = FleetSetup::new(1, &[], SCRIPTS);
    setup.work.write("links.yaml", "machines: []\n");
    setup.work.commit("no machines yet");
    let host = setup.fleet.host(0);
    host.remove_client_id().unwrap();
    setup.fleet.revoke_client_keys().unwrap();
    let mut config = setup.config();
    std::fs::write(config.known_hosts_path(), "").unwrap();
    change(&mut config);
    let daemon = setup.start_with(config).await;
    (setup, daemon)
}

/// `linkops enroll` of host 0 as `host1`, as root with the operator's key
/// file, its host key confirmed as `fingerprint` (the host's own when
/// `None`), and `extra` arguments.
async fn enroll(
    daemon: &TestDaemon,
    setup: &FleetSetup,
    home: &std::path::Path,
    fingerprint: Option<&str>,
    extra: &[&str],
) -> Output {
    let host = setup.fleet.host(0);
    let (address, port) = (host.address().to_string(), host.port().to_string());
    let operator_key = setup.fleet.operator_key().to_str().unwrap().to_owned();
    let fingerprint = fingerprint.map_or_else(|| self::fingerprint(host), str::to_owned);
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
        "--identity",
        &operator_key,
        "--host-key-fingerprint",
        &fingerprint,
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

    let enrolled = enroll(
        &daemon,
        &setup,
        home.path(),
        None,
        &["--repo", checkout.to_str().unwrap(), "--push"],
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
    let login = crate::certificates::operation_login(&daemon, &token, id).await;
    let replica = daemon
        .read::<ClusterView>("/api/cluster", &token)
        .await
        .replica;
    assert_eq!(
        login.key_id,
        format!("linkops:{replica}:op-{id}:{}", ADMIN.0)
    );
    crate::certificates::logged(host, &login).await;

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
async fn an_operator_with_a_password_alone_enrolls_typing_it_once() {
    let (setup, daemon) = bare_host_and_daemon().await;
    let home = logged_in(&daemon).await;
    let host = setup.fleet.host(0);
    let password = format!("pw-{}", uuid::Uuid::new_v4());
    host.set_operator_password(&password).unwrap();
    let (address, port) = (host.address().to_string(), host.port().to_string());
    let fingerprint = fingerprint(host);
    let with_password = |typed: String| {
        let args = [
            "--server",
            daemon.url.as_str(),
            "enroll",
            &address,
            "--port",
            &port,
            "--id",
            "host1",
            "--user",
            TEST_USER,
            "--login",
            testbed::PASSWORD_OPERATOR,
            "--password-stdin",
            "--host-key-fingerprint",
            &fingerprint,
            "--print",
        ]
        .map(str::to_owned);
        let home = home.path().to_owned();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            linkops_with(&home, &args, Some(&format!("{typed}\n")), &[]).await
        }
    };

    // A wrong one: refused before anything is written, and never shown.
    let refused = with_password("not-the-password".into()).await;
    let said = format!("{}{}", stdout(&refused), stderr(&refused));
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("refused the login of user linkops-operator with the password given"),
        "{said}"
    );
    assert!(!said.contains("not-the-password"), "{said}");
    assert_eq!(host.client_id(), None);

    let enrolled = with_password(password.clone()).await;
    let said = format!("{}{}", stdout(&enrolled), stderr(&enrolled));
    assert!(enrolled.status.success(), "{said}");
    assert!(
        said.contains("sshd reloaded: it presents its host certificate"),
        "{said}"
    );
    assert!(!said.contains(&password), "the password is never shown");
    let client_id = host.client_id().expect("a client id written");
    assert!(client_id.starts_with("LINKOPS-"), "{client_id}");
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
    let refused = enroll(&daemon, &setup, home.path(), None, &["--print"]).await;
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
    let not_this_one = Some("SHA256:not-this-one");
    let wrong = enroll(&daemon, &setup, home.path(), not_this_one, &["--print"]).await;
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

/// Puts the trust state shipped in `examples/config-repo` (its script's
/// entry, its two files, the state) into the test's config repository.
fn ship_the_trust_state(setup: &FleetSetup) {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config-repo");
    let read = |path: &str| std::fs::read_to_string(example.join(path)).unwrap();
    let catalog = read("scripts.yaml");
    let entry = &catalog[catalog
        .find("  - id: linkops-trust")
        .expect("the example's trust script")..];
    let scripts = setup.work.read("scripts.yaml");
    setup
        .work
        .write("scripts.yaml", &format!("{scripts}{entry}"));
    for path in [
        "scripts/linkops-trust.sh",
        "scripts/linkops-trust-check.sh",
        "states/linkops-trust.yaml",
    ] {
        setup.work.write(path, &read(path));
    }
}

/// `POST /api/ca/revocations` as `token`'s holder; what was revoked.
async fn revoke(daemon: &TestDaemon, token: &str, body: serde_json::Value) -> Vec<Revocation> {
    let (status, revoked) = daemon
        .request(
            reqwest::Method::POST,
            "/api/ca/revocations",
            token,
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    answer(&revoked)
}

/// Waits until the trust state stands `standing` on host1.
async fn trust_stands(daemon: &TestDaemon, token: &str, standing: &str) {
    eventually(
        &format!("the trust state to stand {standing} on host1"),
        || async {
            let detail: StateDetail = daemon.read("/api/states/linkops-trust", token).await;
            let now = detail.machines.first().map(|m| format!("{:?}", m.standing));
            now.filter(|now| now.to_lowercase().replace('_', "") == standing.replace('_', ""))
                .map(drop)
        },
    )
    .await;
}

/// Enrolls host 0 as `host1` (its entry printed, then committed with the
/// trust state shipped in `examples/`) and waits for the trust state to
/// hold on it; an admin's token.
async fn enrolled_under_the_trust_state(setup: &FleetSetup, daemon: &TestDaemon) -> String {
    let home = logged_in(daemon).await;
    let enrolled = enroll(daemon, setup, home.path(), None, &["--print"]).await;
    let said = stdout(&enrolled);
    assert!(enrolled.status.success(), "{said}{}", stderr(&enrolled));
    let entry = &said[said.find("  - id: host1").expect("the entry printed")..];
    assert!(
        entry.contains("linkops-trust"),
        "enroll tags it for the trust state: {entry}"
    );
    setup
        .work
        .write("links.yaml", &format!("machines:\n{entry}"));
    ship_the_trust_state(setup);
    setup.work.commit("host1, and the trust state");
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let synced = daemon.post("/api/git/sync", Some(&token)).await;
    assert_eq!(synced.status(), StatusCode::OK);
    trust_stands(daemon, &token, "in_sync").await;
    token
}

/// The user CAs host1 trusts now (its `TrustedUserCAKeys` file).
fn trusted_on_host(setup: &FleetSetup) -> String {
    let file = setup
        .fleet
        .host(0)
        .etc_ssh()
        .join("linkops/kept/user_ca.pub");
    std::fs::read_to_string(file).unwrap()
}

/// `POST /api/ca/rotation` with `body`: its status and answer.
async fn rotation(
    daemon: &TestDaemon,
    token: &str,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let path = "/api/ca/rotation";
    daemon
        .request(reqwest::Method::POST, path, token, Some(body))
        .await
}

/// A certificate of `authority` for the test login, signed now.
fn certified_by(authority: &Authority) -> Certified {
    let grant = user_grant(
        "elsewhere",
        TEST_USER,
        &Purpose::Health,
        Duration::from_secs(300),
    );
    let key = ca::session_key();
    let certificate = authority
        .sign_user(key.public_key(), &grant, SystemTime::now())
        .unwrap();
    Certified {
        key: Arc::new(key),
        certificate,
    }
}

#[tokio::test]
async fn the_user_ca_rotates_under_continuous_operations_and_none_fails() {
    // The user CA's key outside the data dir, as `[ssh] user_ca_key` puts it.
    let outside = testbed::private_dir();
    let user_ca_key = outside.path().join("linkops-user-ca");
    let (setup, daemon) = bare_host_and_daemon_with(|config| {
        config.ssh.user_ca_key = Some(user_ca_key.clone());
    })
    .await;
    let ca_dir = setup.data.path().join("ca");
    assert!(
        !ca_dir.join("user_ca").exists(),
        "no user CA in the data dir"
    );
    let token = enrolled_under_the_trust_state(&setup, &daemon).await;
    let before: CaView = daemon.read("/api/ca", &token).await;
    assert!(before.rotation.is_none(), "{before:?}");
    assert!(
        before
            .user_ca_rotation_due_days
            .is_some_and(|days| days > 360)
    );
    let (status, said) = rotation(&daemon, &token, json!({"finish": true})).await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing to finish: {said}");
    // The old key, kept by the test to show the machine refuses it after.
    let keys = testbed::private_dir();
    std::fs::copy(&user_ca_key, keys.path().join("user_ca")).unwrap();
    let old = Authority::open(keys.path()).unwrap();
    assert_eq!(
        old.user_public().to_openssh().unwrap(),
        before.user_ca,
        "the daemon signs with the key where user_ca_key says"
    );

    let home = logged_in(&daemon).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let operations = async {
        let mut ended = Vec::new();
        let mut stopped = stopped;
        while !*stopped.borrow_and_update() {
            ended.push(run_to_end(&daemon, &token, "whoami", &["host1"]).await);
        }
        ended
    };
    let rotating = async {
        // Begun by the command an operator types.
        let ca = |args: &'static [&'static str]| {
            let mut all = vec!["--server", daemon.url.as_str(), "ca"];
            all.extend_from_slice(args);
            let home = home.path().to_owned();
            async move { linkops_with(&home, &all, None, &[]).await }
        };
        let said = ca(&["rotate"]).await;
        assert!(said.status.success(), "{}", stderr(&said));
        assert!(
            stderr(&said).contains("rotation begun"),
            "{}",
            stderr(&said)
        );
        assert!(
            stdout(&said).contains("rotation: next user CA SHA256:"),
            "{}",
            stdout(&said)
        );
        let begun: CaView = daemon.read("/api/ca", &token).await;
        let next = begun.rotation.expect("a rotation under way");
        assert_eq!(begun.user_ca, before.user_ca, "the old CA still signs");
        let next_key = outside.path().join("linkops-user-ca.next");
        assert!(next_key.exists(), "the next key beside the user CA's");
        // Rolled out by the trust state: the host trusts both.
        eventually("the trust state to roll the next CA out", || async {
            let now: CaView = daemon.read("/api/ca", &token).await;
            now.rotation
                .filter(|rotation| rotation.waiting_for.is_empty())
                .map(drop)
        })
        .await;
        let trusted = trusted_on_host(&setup);
        assert!(trusted.contains(before.user_ca.as_str()), "{trusted}");
        assert!(trusted.contains(next.next_user_ca.as_str()), "{trusted}");

        let (status, finished) = rotation(&daemon, &token, json!({"finish": true})).await;
        assert_eq!(status, StatusCode::OK, "{finished}");
        let finished: CaView = answer(&finished);
        assert_eq!(finished.user_ca, next.next_user_ca);
        assert!(finished.rotation.is_none());
        eventually("the trust state to retire the old CA", || async {
            (trusted_on_host(&setup).trim() == next.next_user_ca).then_some(())
        })
        .await;
        // Operations logged in with the new CA once the old one was gone too.
        for _ in 0..2 {
            let (_, ended) = run_to_end(&daemon, &token, "whoami", &["host1"]).await;
            assert_eq!(ended, OperationState::Succeeded);
        }
        stop.send(true).unwrap();
    };
    let (ended, ()) = tokio::join!(operations, rotating);
    assert!(ended.len() >= 2, "operations ran throughout: {ended:?}");
    let mut failed = Vec::new();
    for (id, state) in &ended {
        if *state != OperationState::Succeeded {
            let operation = crate::support::operation(&daemon, &token, *id).await;
            failed.push(format!("{id}: {state:?}: {:?}", operation.hosts));
        }
    }
    let log = setup.fleet.host(0).sshd_log().unwrap();
    assert!(failed.is_empty(), "operations failed: {failed:#?}\n{log}");

    // The old CA's certificates are refused by the machine now; the new one's get in.
    let (options, target) = (
        crate::ssh::connect_options(&setup.fleet),
        crate::ssh::target(&setup.fleet, 0),
    );
    match Connection::open_certified(&target, &options, certified_by(&old)).await {
        Err(linkops::ssh::Error::AuthRejected { .. }) => {}
        other => panic!("the retired CA's certificate: {:?}", other.map(drop)),
    }
    let new = Authority::open_keys(&user_ca_key, &ca_dir.join("host_ca")).unwrap();
    Connection::open_certified(&target, &options, certified_by(&new))
        .await
        .unwrap();
    let body = json!({ "table": "audit_log", "filter": [{ "column": "action", "op": "eq", "value": "ca.rotate" }] });
    let path = "/api/tables/query";
    let (_, page) = (daemon.request(reqwest::Method::POST, path, &token, Some(body))).await;
    let audited = answer::<TablePage>(&page).rows;
    assert_eq!(audited.len(), 2, "begun and finished: {audited:?}");
    let metrics = daemon.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("linkops_ssh_user_ca_rotating 0"),
        "{metrics}"
    );
    let server = daemon.url.clone();
    let shown = linkops_with(home.path(), &["--server", &server, "ca"], None, &[]).await;
    assert!(
        stdout(&shown).contains("rotation: none under way"),
        "{}",
        stdout(&shown)
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_by_the_machine_and_a_revoked_host_by_the_daemon() {
    let (setup, daemon) = bare_host_and_daemon().await;
    let token = enrolled_under_the_trust_state(&setup, &daemon).await;

    // A certificate of the daemon's CA, live: it logs in.
    // The daemon's own CA (`setup.config()` would copy the fleet's known_hosts back).
    let authority = Authority::open(&setup.data.path().join("ca")).unwrap();
    let (leaked, fresh) = (certified_by(&authority), certified_by(&authority));
    let options = crate::ssh::connect_options(&setup.fleet);
    let target = crate::ssh::target(&setup.fleet, 0);
    Connection::open_certified(&target, &options, leaked.clone())
        .await
        .unwrap();

    // Revoked: the trust state writes it into the machine's list at once, and sshd refuses it.
    let revoked = revoke(
        &daemon,
        &token,
        json!({ "serial": leaked.certificate.serial().to_string(), "reason": "leaked" }),
    )
    .await;
    assert_eq!(revoked[0].kind, CertificateKind::User, "{revoked:?}");
    eventually("sshd to refuse the revoked certificate", || async {
        match Connection::open_certified(&target, &options, leaked.clone()).await {
            Err(linkops::ssh::Error::AuthRejected { .. }) => Some(()),
            _ => None,
        }
    })
    .await;
    trust_stands(&daemon, &token, "in_sync").await;
    // Another certificate, and the daemon's own logins, still get in.
    Connection::open_certified(&target, &options, fresh)
        .await
        .unwrap();
    let (_, ended) = run_to_end(&daemon, &token, "whoami", &["host1"]).await;
    assert_eq!(ended, OperationState::Succeeded);
    let shown: CaView = daemon.read("/api/ca", &token).await;
    assert_eq!(shown.revocations.len(), 1, "{shown:?}");
    let signed: Vec<&str> = shown
        .host_certificates
        .iter()
        .map(|c| c.machine.as_str())
        .collect();
    assert_eq!(signed, ["host1"], "the host certificate enroll asked for");

    // The machine revoked: its host certificate proves nothing to the daemon any more.
    let revoked = revoke(
        &daemon,
        &token,
        json!({ "machine": "host1", "reason": "decommissioned" }),
    )
    .await;
    assert_eq!(revoked[0].kind, CertificateKind::Host, "{revoked:?}");
    let verified = daemon.post("/api/links/host1/verify", Some(&token)).await;
    let machine: MachineView = verified.json().await.unwrap();
    match &machine.enrollment {
        Enrollment::HostKeyMismatch { error } => assert!(error.contains("is revoked"), "{error}"),
        other => panic!("a revoked host was trusted: {other:?}"),
    }
    daemon.stop().await;
}
