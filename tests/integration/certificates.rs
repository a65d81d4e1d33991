//! The SSH certificate authority against real OpenSSH hosts: a login by a
//! short-lived user certificate alone (its key in no `authorized_keys`),
//! named in the host's own log; refused by sshd when the host does not trust
//! the CA, when it has expired, when it names another login, or when another
//! CA signed it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use linkops::config::SshConfig;
use linkops::ssh::ca::{self, Authority};
use linkops::ssh::{Certified, ConnectOptions, Connection, Error, ExitStatus, KeyFile, Target};
use linkops_reconcilers::certificate::{Purpose, UserGrant, user_grant};
use testbed::{TEST_USER, TestFleet};

use crate::support::eventually;

const TIMEOUT: Duration = Duration::from_secs(30);
const FIVE_MINUTES: Duration = Duration::from_secs(300);

/// Host `index` of `fleet` as a certificate reaches it (the key file is not used).
fn target(fleet: &TestFleet, index: usize) -> Target {
    let (host, key) = (fleet.host(index), KeyFile::at(fleet.client_key()));
    Target::new(
        host.address().to_string(),
        host.port(),
        TEST_USER.into(),
        key,
    )
}

fn connect_options(fleet: &TestFleet) -> ConnectOptions {
    let known_hosts = fleet.known_hosts().to_owned();
    ConnectOptions::new(&SshConfig::default(), known_hosts, Default::default())
}

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
async fn sshd_refuses_a_certificate_expired_for_another_login_or_from_another_ca() {
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
    // The same grant, signed by the trusted CA now, is what gets in.
    login(&fleet, certified(&authority, &grant, now))
        .await
        .unwrap();
}
