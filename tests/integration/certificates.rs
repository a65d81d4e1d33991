//! The SSH certificate authority against real OpenSSH hosts: a login by a
//! short-lived user certificate alone (its key in no `authorized_keys`),
//! named in the host's own log; refused by sshd when the host does not trust
//! the CA, when it has expired, when it names another login, or when another
//! CA signed it; and a daemon whose machines say `auth: certificate` checking
//! them, running operations and opening terminals through certificates alone,
//! each login's certificate recorded with what it opened; and hosts proved
//! by host certificates of the daemon's host CA, a bad one refused.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use linkops::config::SshConfig;
use linkops::contract::{CaView, ClusterView, MachineView, OperationView, PaneState};
use linkops::ssh::ca::{self, Authority, Certifier, PublicKey};
use linkops::ssh::{Certified, ConnectOptions, Connection, Error, ExitStatus};
use linkops_reconcilers::certificate::{
    CertificateLogin, HOST_CERTIFICATE_LIFETIME, Purpose, UserGrant, host_grant, user_grant,
};
use linkops_reconcilers::enrollment::Enrollment;
use linkops_reconcilers::operation::OperationState;
use reqwest::StatusCode;
use serde_json::json;
use testbed::{TEST_USER, TestFleet};

use crate::ssh::{connect_options, target};
use crate::support::{ADMIN, FleetSetup, TestDaemon, eventually, run_to_end};
use crate::terminal::{self, Terminal};

const TIMEOUT: Duration = Duration::from_secs(30);
const FIVE_MINUTES: Duration = Duration::from_secs(300);

/// A new in-memory key and a certificate `authority` signed for it, at `now`.
fn certified(authority: &Authority, grant: &UserGrant, now: SystemTime) -> Certified {
    let key = ca::session_key();
    let certificate = authority.sign_user(key.public_key(), grant, now).unwrap();
    Certified {
        key: Arc::new(key),
        certificate,
    }
}

async fn login(fleet: &TestFleet, certified: Certified) -> Result<Connection, Error> {
    Connection::open_certified(&target(fleet, 0), &connect_options(fleet), certified).await
}

fn refused(result: Result<Connection, Error>, why: &str) -> String {
    match result {
        Err(error @ Error::AuthRejected { .. }) => error.to_string(),
        Err(other) => panic!("{why}: refused otherwise: {other}"),
        Ok(_) => panic!("{why}: sshd accepted it"),
    }
}

#[tokio::test]
async fn a_user_certificate_alone_logs_in_and_the_machine_s_log_names_who_and_why() {
    let fleet = TestFleet::start(1).unwrap();
    let dir = testbed::private_dir();
    let authority = Authority::open(&dir.path().join("ca")).unwrap();
    let purpose = Purpose::Operation {
        id: 42,
        requested_by: "alice".into(),
    };
    let grant = user_grant("r1", TEST_USER, &purpose, FIVE_MINUTES);

    // Not trusted yet: sshd refuses it, and the error names the certificate.
    let said = refused(
        login(&fleet, certified(&authority, &grant, SystemTime::now())).await,
        "an untrusted CA",
    );
    assert!(
        said.contains("certificate linkops:r1:op-42:alice (serial "),
        "{said}"
    );

    fleet
        .trust_user_ca(&authority.user_public().to_openssh().unwrap())
        .unwrap();
    let accepted = certified(&authority, &grant, SystemTime::now());
    let serial = accepted.certificate.serial();
    let connection = login(&fleet, accepted).await.unwrap();
    let output = (connection.exec("id -un", b"", TIMEOUT).await.unwrap())
        .collect(4096)
        .await
        .unwrap();
    assert_eq!(output.status, ExitStatus::Code(0));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), TEST_USER);

    // The machine's own log says who ran what (sshd writes it as it accepts).
    let logged = format!("ID linkops:r1:op-42:alice (serial {serial})");
    eventually("sshd to log the certificate's login", || async {
        let log = fleet.host(0).sshd_log().unwrap();
        log.lines()
            .any(|line| line.contains("Accepted publickey") && line.contains(&logged))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn sshd_refuses_a_certificate_expired_for_another_login_from_another_address_or_ca() {
    let fleet = TestFleet::start(1).unwrap();
    let dir = testbed::private_dir();
    let authority = Authority::open(&dir.path().join("ca")).unwrap();
    let stranger = Authority::open(&dir.path().join("other-ca")).unwrap();
    fleet
        .trust_user_ca(&authority.user_public().to_openssh().unwrap())
        .unwrap();
    let grant = user_grant("r1", TEST_USER, &Purpose::Health, FIVE_MINUTES);
    let now = SystemTime::now();

    let an_hour_ago = now - Duration::from_secs(3600);
    refused(
        login(&fleet, certified(&authority, &grant, an_hour_ago)).await,
        "an expired certificate",
    );
    let as_root = user_grant("r1", "root", &Purpose::Health, FIVE_MINUTES);
    refused(
        login(&fleet, certified(&authority, &as_root, now)).await,
        "a certificate for another login",
    );
    refused(
        login(&fleet, certified(&stranger, &grant, now)).await,
        "another CA's certificate",
    );
    let elsewhere = UserGrant {
        source_address: Some("10.9.9.9".into()),
        ..grant.clone()
    };
    refused(
        login(&fleet, certified(&authority, &elsewhere, now)).await,
        "a certificate good from another address only",
    );
    // The same grant, signed by the trusted CA now, is what gets in.
    login(&fleet, certified(&authority, &grant, now))
        .await
        .unwrap();
}

/// The certificate operation `id`'s (first) host logged in with.
pub(crate) async fn operation_login(daemon: &TestDaemon, token: &str, id: u64) -> CertificateLogin {
    let operation: OperationView = daemon.read(&format!("/api/operations/{id}"), token).await;
    let host = operation.hosts.into_iter().next().expect("a host");
    host.certificate.expect("a certificate login")
}

/// That `host`'s sshd logged an accepted login with `certificate`.
pub(crate) async fn logged(host: &testbed::TestHost, certificate: &CertificateLogin) {
    let named = format!("ID {} (serial {})", certificate.key_id, certificate.serial);
    eventually("sshd to log the login", || async {
        let log = host.sshd_log().unwrap();
        log.lines()
            .any(|line| line.contains("Accepted publickey") && line.contains(&named))
            .then_some(())
    })
    .await;
}

/// A daemon on `config` whose CA (as its first start makes it) the hosts
/// trust, their fleet key authorised no more; and its user CA's line.
async fn on_certificates_alone(
    setup: &FleetSetup,
    config: linkops::config::Config,
) -> (TestDaemon, String) {
    let authority = Authority::open(&config.ca_dir()).unwrap();
    let user_ca = authority.user_public().to_openssh().unwrap();
    setup.fleet.trust_user_ca(&user_ca).unwrap();
    setup.fleet.revoke_client_keys().unwrap();
    (setup.start_with(config).await, user_ca)
}

#[tokio::test]
async fn machines_on_certificates_alone_are_checked_and_run_operations_their_logs_name() {
    let scripts = "scripts:\n  - {id: whoami, name: Who am I, body: id -un}\n";
    let setup = FleetSetup::new(2, &[], scripts);
    let links = setup.fleet.inventory("test", &[], "");
    let certified = links.replace("    key: fleet_key\n", "    auth: certificate\n");
    setup.work.write("links.yaml", &certified);
    setup.work.commit("certificates instead of the fleet key");
    let mut config = setup.config();
    // Each certificate good only from the address its connection leaves from.
    config.ssh.certificate_source_address = true;
    let (daemon, user_ca) = on_certificates_alone(&setup, config).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let replica = daemon
        .read::<ClusterView>("/api/cluster", &token)
        .await
        .replica;
    // The API shows the CA the hosts were told to trust.
    let shown: CaView = daemon.read("/api/ca", &token).await;
    assert_eq!(shown.user_ca, user_ca);
    assert!(
        shown.user_ca_fingerprint.starts_with("SHA256:"),
        "{shown:?}"
    );
    assert_ne!(shown.host_ca, shown.user_ca);

    let verified = daemon.post("/api/links/host1/verify", Some(&token)).await;
    assert_eq!(verified.status(), StatusCode::OK);
    let machine: MachineView = verified.json().await.unwrap();
    assert_eq!(machine.enrollment, Enrollment::Enrolled, "{machine:?}");
    let host1 = setup.fleet.host(0);
    let health = format!("ID linkops:{replica}:health (serial ");
    eventually("sshd to log the check's login", || async {
        let log = host1.sshd_log().unwrap();
        log.lines()
            .any(|line| line.contains("Accepted publickey") && line.contains(&health))
            .then_some(())
    })
    .await;

    // The operation logs in on its own (the check's connection is still
    // pooled): its record and host1's log name the same certificate.
    let (id, ended) = run_to_end(&daemon, &token, "whoami", &["host1"]).await;
    assert_eq!(ended, OperationState::Succeeded);
    let login = operation_login(&daemon, &token, id).await;
    assert_eq!(
        login.key_id,
        format!("linkops:{replica}:op-{id}:{}", ADMIN.0)
    );
    logged(host1, &login).await;

    // A terminal logs in on its own, with a certificate that permits a pty.
    let workspace = terminal::workspace(&daemon, &token, "single", &[Some("host1")]).await;
    let mut shell = Terminal::open_at(&daemon.url, &workspace, &token).await;
    let panes = terminal::connect_all(&daemon, &token, &workspace, json!({})).await;
    assert_eq!(panes[0].state, PaneState::Connected, "{panes:?}");
    shell.run(0, "tty", "/dev/pts/").await;
    let session = panes[0].session.expect("a session");
    let recorded = terminal::recording(&daemon, &token, session).await;
    let login = recorded.session.certificate.expect("a certificate login");
    assert_eq!(
        login.key_id,
        format!("linkops:{replica}:terminal:{workspace}:{}", ADMIN.0)
    );
    logged(host1, &login).await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_host_is_proved_by_a_certificate_of_the_host_ca_naming_it_and_nothing_less() {
    let mut fleet = TestFleet::start(1).unwrap();
    let dir = testbed::private_dir();
    let authority = Arc::new(Authority::open(&dir.path().join("ca")).unwrap());
    let stranger = Authority::open(&dir.path().join("other-ca")).unwrap();
    let certifier = Arc::new(Certifier::new(authority.clone(), "r1", FIVE_MINUTES));
    // Nothing in known_hosts: only a certificate can prove the host.
    let known_hosts = dir.path().join("known_hosts");
    let options = ConnectOptions::new(&SshConfig::default(), known_hosts, Default::default())
        .with_certifier(certifier);
    let target = target(&fleet, 0);
    let host_key = PublicKey::from_openssh(fleet.host(0).host_public_key()).unwrap();
    let address = fleet.host(0).address().to_string();
    let now = SystemTime::now();

    // Its bare key, unknown and unpinned: refused.
    match Connection::open(&target, &options).await {
        Err(Error::HostKeyUnknown { .. }) => {}
        Err(other) => panic!("refused otherwise: {other}"),
        Ok(_) => panic!("an unknown bare key was trusted"),
    }

    let for_names = |names: &[&str]| {
        host_grant(
            "host1",
            &names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
    };
    let refusals = [
        (
            stranger.sign_host(&host_key, &for_names(&[&address]), now),
            "not the host CA",
        ),
        (
            authority.sign_host(&host_key, &for_names(&["10.99.0.1"]), now),
            "not 127.",
        ),
        (
            authority.sign_host(
                &host_key,
                &for_names(&[&address]),
                now - HOST_CERTIFICATE_LIFETIME - Duration::from_secs(3600),
            ),
            "expired at",
        ),
    ];
    for (certificate, why) in refusals {
        let line = certificate.unwrap().to_openssh().unwrap();
        fleet.hosts_mut()[0]
            .present_host_certificate(&line)
            .unwrap();
        match Connection::open(&target, &options).await {
            Err(error @ Error::HostCertificate { .. }) => {
                let said = error.to_string();
                assert!(said.contains(why), "{why}: {said}");
            }
            Err(other) => panic!("{why}: refused otherwise: {other}"),
            Ok(_) => panic!("{why}: trusted"),
        }
    }

    let good = authority.sign_host(&host_key, &for_names(&["host1", &address]), now);
    let line = good.unwrap().to_openssh().unwrap();
    fleet.hosts_mut()[0]
        .present_host_certificate(&line)
        .unwrap();
    let connection = Connection::open(&target, &options).await.unwrap();
    assert!(
        connection.take_learned_host_key().is_none(),
        "a certified key is not learned"
    );
}

/// Dropbear (what routers run) takes no certificates: beside a machine on
/// certificates alone, a router on `auth: key` is checked and runs
/// operations with its key, as before.
#[tokio::test]
async fn a_dropbear_router_is_reached_with_its_key_beside_machines_on_certificates() {
    let setup = FleetSetup::new(
        1,
        &[],
        "scripts:\n  - {id: whoami, name: Who am I, body: id -un}\n",
    );
    let router = setup.fleet.start_dropbear("router1").unwrap();
    let links = setup.fleet.inventory("test", &[], "");
    let certified = links.replace("    key: fleet_key\n", "    auth: certificate\n");
    setup.work.write(
        "links.yaml",
        &format!("{certified}{}", router.inventory_entry("routers")),
    );
    setup
        .work
        .commit("host1 on certificates, router1 on its key");
    let config = setup.config();
    let known_hosts = std::fs::read_to_string(config.known_hosts_path()).unwrap();
    std::fs::write(
        config.known_hosts_path(),
        format!("{known_hosts}{}", router.known_hosts_line()),
    )
    .unwrap();
    let (daemon, _) = on_certificates_alone(&setup, config).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;

    for machine in ["host1", "router1"] {
        let verified = daemon
            .post(&format!("/api/links/{machine}/verify"), Some(&token))
            .await;
        assert_eq!(verified.status(), StatusCode::OK);
        let view: MachineView = verified.json().await.unwrap();
        assert_eq!(view.enrollment, Enrollment::Enrolled, "{machine}: {view:?}");
    }
    let (id, ended) = run_to_end(&daemon, &token, "whoami", &["host1", "router1"]).await;
    assert_eq!(ended, OperationState::Succeeded);
    let operation: OperationView = daemon.read(&format!("/api/operations/{id}"), &token).await;
    let logins: Vec<(&str, bool)> = operation
        .hosts
        .iter()
        .map(|host| (host.machine_id.as_str(), host.certificate.is_some()))
        .collect();
    assert_eq!(logins, [("host1", true), ("router1", false)]);
    let events = crate::support::read_events(&daemon, &token, id, None).await;
    let output = crate::support::output_text(&events, "router1", "stdout");
    assert_eq!(
        output.trim(),
        TEST_USER,
        "the router's script ran as the test user"
    );
    daemon.stop().await;
}
