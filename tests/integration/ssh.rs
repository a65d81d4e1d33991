//! The SSH layer against real OpenSSH test hosts.

use std::sync::Arc;
use std::time::Duration;

use linkops::config::SshConfig;
use linkops::ssh::{
    ConnectOptions, Connection, Error, ExitStatus, KeyFile, KnownHosts, OutputEvent, Target,
};
use linkops_reconcilers::enrollment::{self, ClientIdReading, Enrollment};
use testbed::{TEST_USER, TestFleet};

const TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach host `index` of `fleet` with the fleet's client key.
pub(crate) fn target(fleet: &TestFleet, index: usize) -> Target {
    let (host, key) = (fleet.host(index), KeyFile::at(fleet.client_key()));
    Target::new(
        host.address().to_string(),
        host.port(),
        TEST_USER.into(),
        key,
    )
}

/// Connections as the default `[ssh]` makes them, trusting exactly the fleet's host keys.
pub(crate) fn connect_options(fleet: &TestFleet) -> ConnectOptions {
    let known_hosts = fleet.known_hosts().to_owned();
    ConnectOptions::new(&SshConfig::default(), known_hosts, Default::default())
}

#[tokio::test]
async fn reads_each_hosts_own_client_id_over_verified_ssh() {
    let fleet = TestFleet::start(2).unwrap();
    for (index, host) in fleet.hosts().iter().enumerate() {
        let connection = Connection::open(&target(&fleet, index), &connect_options(&fleet))
            .await
            .unwrap();
        assert!(connection.take_learned_host_key().is_none());
        let command = format!("cat {}", enrollment::CLIENT_ID_PATH);
        let output = connection
            .exec(&command, b"", TIMEOUT)
            .await
            .unwrap()
            .collect(4096)
            .await
            .unwrap();
        assert_eq!(output.status, ExitStatus::Code(0));
        let reading = ClientIdReading::Content(String::from_utf8(output.stdout).unwrap());
        assert_eq!(
            enrollment::assess(host.uuid(), reading),
            Enrollment::Enrolled,
            "{}",
            host.name()
        );
    }
    // The two hosts really are different machines as far as enrollment goes.
    assert_ne!(fleet.host(0).uuid(), fleet.host(1).uuid());
}

#[tokio::test]
async fn streams_stdout_and_stderr_and_reports_exit_codes_and_signals() {
    let fleet = TestFleet::start(1).unwrap();
    let connection = Connection::open(&target(&fleet, 0), &connect_options(&fleet))
        .await
        .unwrap();

    let mut execution = connection
        .exec("cat; echo to-stderr >&2; exit 3", b"from-stdin\n", TIMEOUT)
        .await
        .unwrap();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    while let Some(event) = execution.next_output().await.unwrap() {
        match event {
            OutputEvent::Stdout(data) => stdout.extend(data),
            OutputEvent::Stderr(data) => stderr.extend(data),
        }
    }
    assert_eq!(stdout, b"from-stdin\n");
    assert_eq!(stderr, b"to-stderr\n");
    assert_eq!(execution.exit_status(), ExitStatus::Code(3));

    // Several commands share the one connection, and a signal is reported as such.
    let killed = connection
        .exec("kill -TERM $$", b"", TIMEOUT)
        .await
        .unwrap()
        .collect(64)
        .await
        .unwrap();
    assert!(
        matches!(killed.status, ExitStatus::Signal { ref name, .. } if name == "TERM"),
        "{killed:?}"
    );
}

#[tokio::test]
async fn reports_a_missing_client_id_file() {
    let fleet = TestFleet::start(1).unwrap();
    fleet.host(0).remove_client_id().unwrap();
    let connection = Connection::open(&target(&fleet, 0), &connect_options(&fleet))
        .await
        .unwrap();
    let output = connection
        .exec("cat /etc/linkops/client_id", b"", TIMEOUT)
        .await
        .unwrap()
        .collect(4096)
        .await
        .unwrap();
    assert_eq!(output.status, ExitStatus::Code(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("No such file"));
}

#[tokio::test]
async fn command_timeout_kills_and_says_so() {
    let fleet = TestFleet::start(1).unwrap();
    let connection = Connection::open(&target(&fleet, 0), &connect_options(&fleet))
        .await
        .unwrap();
    let error = connection
        .exec("sleep 30", b"", Duration::from_millis(300))
        .await
        .unwrap()
        .collect(64)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::CommandTimeout { .. }), "{error}");
}

#[tokio::test]
async fn unknown_host_key_is_refused() {
    let fleet = TestFleet::start(1).unwrap();
    let mut options = connect_options(&fleet);
    options.known_hosts = Arc::new(KnownHosts::new(fleet.dir().join("empty_known_hosts")));
    let error = Connection::open(&target(&fleet, 0), &options)
        .await
        .err()
        .unwrap();
    assert!(matches!(error, Error::HostKeyUnknown { .. }), "{error}");
    assert!(error.to_string().contains("ssh-keyscan"), "{error}");
}

#[tokio::test]
async fn changed_host_key_is_refused_even_with_trust_on_first_use() {
    let fleet = TestFleet::start(2).unwrap();
    // known_hosts says host 0's address has host 1's key.
    let host0 = fleet.host(0);
    let forged = fleet.dir().join("forged_known_hosts");
    let address = if host0.port() == 22 {
        host0.address().to_string()
    } else {
        format!("[{}]:{}", host0.address(), host0.port())
    };
    std::fs::write(
        &forged,
        format!("{address} {}\n", fleet.host(1).host_public_key()),
    )
    .unwrap();
    let mut options = connect_options(&fleet);
    options.known_hosts = Arc::new(KnownHosts::new(forged));
    options.trust_on_first_use = true;
    let error = Connection::open(&target(&fleet, 0), &options)
        .await
        .err()
        .unwrap();
    assert!(matches!(error, Error::HostKeyChanged { .. }), "{error}");
    assert!(error.to_string().contains("line 1"), "{error}");
}

#[tokio::test]
async fn pinned_host_key_wins_over_known_hosts() {
    let fleet = TestFleet::start(2).unwrap();
    let mut target = target(&fleet, 0);
    target.pinned_host_key = Some(fleet.host(1).host_public_key().to_owned());
    let error = Connection::open(&target, &connect_options(&fleet))
        .await
        .err()
        .unwrap();
    assert!(matches!(error, Error::HostKeyChanged { .. }), "{error}");

    // The right pinned key works even with an empty known_hosts.
    target.pinned_host_key = Some(fleet.host(0).host_public_key().to_owned());
    let mut options = connect_options(&fleet);
    options.known_hosts = Arc::new(KnownHosts::new(fleet.dir().join("empty_known_hosts")));
    Connection::open(&target, &options).await.unwrap();
}

#[tokio::test]
async fn trust_on_first_use_records_the_key_then_trusts_only_it() {
    let fleet = TestFleet::start(1).unwrap();
    let mut options = connect_options(&fleet);
    options.known_hosts = Arc::new(KnownHosts::new(fleet.dir().join("tofu_known_hosts")));
    options.trust_on_first_use = true;
    let first = Connection::open(&target(&fleet, 0), &options)
        .await
        .unwrap();
    assert!(first.take_learned_host_key().is_some());
    assert!(first.take_learned_host_key().is_none(), "taken once");
    let recorded = std::fs::read_to_string(options.known_hosts.path()).unwrap();
    let key_material = fleet.host(0).host_public_key().split(' ').nth(1).unwrap();
    assert!(recorded.contains(key_material), "{recorded}");

    let second = Connection::open(&target(&fleet, 0), &options)
        .await
        .unwrap();
    assert!(second.take_learned_host_key().is_none());
}

#[tokio::test]
async fn rsa_client_keys_authenticate() {
    let fleet = TestFleet::start(1).unwrap();
    let mut target = target(&fleet, 0);
    target.key = linkops::ssh::KeyFile::at(&fleet.add_client_key("id_rsa", "rsa").unwrap());
    let connection = Connection::open(&target, &connect_options(&fleet))
        .await
        .unwrap();
    let output = connection
        .exec("id -un", b"", TIMEOUT)
        .await
        .unwrap()
        .collect(64)
        .await
        .unwrap();
    assert_eq!(output.stdout, b"linkops-test\n");
}

#[tokio::test]
async fn private_key_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let fleet = TestFleet::start(1).unwrap();
    let mut target = target(&fleet, 0);
    let loose = fleet.dir().join("loose_key");
    std::fs::copy(fleet.client_key(), &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    target.key = linkops::ssh::KeyFile::at(&loose);
    let error = Connection::open(&target, &connect_options(&fleet))
        .await
        .err()
        .unwrap();
    assert!(matches!(error, Error::Key { .. }), "{error}");
    assert!(error.to_string().contains("chmod 600"), "{error}");
}

#[tokio::test]
async fn key_not_authorised_is_rejected_by_name() {
    let fleet = TestFleet::start(1).unwrap();
    let stranger = fleet.dir().join("stranger");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .unwrap();
    assert!(status.success());
    let mut target = target(&fleet, 0);
    target.key = linkops::ssh::KeyFile::at(&stranger);
    let error = Connection::open(&target, &connect_options(&fleet))
        .await
        .err()
        .unwrap();
    assert!(matches!(error, Error::AuthRejected { .. }), "{error}");
}

#[tokio::test]
async fn bare_repo_is_reachable_over_ssh_with_the_fleet_key() {
    let fleet = TestFleet::start(1).unwrap();
    let repo = fleet.bare_repo(0, "config").unwrap();
    let work = fleet.dir().join("work");
    let git = |args: &[&str]| {
        let output = std::process::Command::new("git")
            .args(args)
            .env(
                "GIT_SSH_COMMAND",
                format!(
                    "ssh -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
                    fleet.client_key().display(),
                    fleet.known_hosts().display()
                ),
            )
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    // Push a commit over SSH, then read it back over SSH.
    git(&["init", "-q", "-b", "main", work.to_str().unwrap()]);
    std::fs::write(work.join("links.yaml"), "machines: []\n").unwrap();
    let w = work.to_str().unwrap();
    git(&["-C", w, "add", "links.yaml"]);
    git(&[
        "-C",
        w,
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-q",
        "-m",
        "first",
    ]);
    git(&["-C", w, "push", "-q", &repo.url, "main"]);
    let remote = git(&["ls-remote", &repo.url, "refs/heads/main"]);
    let local = git(&["-C", w, "rev-parse", "HEAD"]);
    assert!(remote.starts_with(local.trim()), "{remote} vs {local}");
}

#[tokio::test]
async fn the_pool_reuses_one_connection_and_closes_idle_ones() {
    let fleet = TestFleet::start(1).unwrap();
    let pool = linkops::ssh::Pool::new(connect_options(&fleet), 10);
    let target = target(&fleet, 0);
    let first = pool.get(&target).await.unwrap();
    let again = pool.get(&target).await.unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&first, &again),
        "one connection per machine"
    );
    // In use: not idle, whatever the time.
    pool.close_idle(Duration::ZERO);
    assert!(std::sync::Arc::ptr_eq(
        &first,
        &pool.get(&target).await.unwrap()
    ));
    drop((first, again));
    pool.close_idle(Duration::ZERO);
    let fresh = pool.get(&target).await.unwrap();
    let output = fresh
        .exec("true", b"", TIMEOUT)
        .await
        .unwrap()
        .collect(16)
        .await
        .unwrap();
    assert_eq!(output.status, ExitStatus::Code(0));
}

#[tokio::test]
async fn a_full_pool_closes_its_least_recently_used_idle_connection() {
    use std::sync::Arc;
    let fleet = TestFleet::start(3).unwrap();
    let pool = linkops::ssh::Pool::new(connect_options(&fleet), 2);
    let first = Arc::downgrade(&pool.get(&target(&fleet, 0)).await.unwrap());
    let second = Arc::downgrade(&pool.get(&target(&fleet, 1)).await.unwrap());
    // The first is used again, so the second is the least recently used.
    drop(pool.get(&target(&fleet, 0)).await.unwrap());
    let third = pool.get(&target(&fleet, 2)).await.unwrap();
    assert_eq!(pool.open_connections(), 2);
    assert!(second.upgrade().is_none(), "the least recently used went");
    let first = first.upgrade().expect("the recently used stayed");
    // Connections in use are never closed, even over capacity.
    let again = pool.get(&target(&fleet, 1)).await.unwrap();
    assert_eq!(pool.open_connections(), 3);
    assert!(first.exec("true", b"", TIMEOUT).await.is_ok());
    drop((first, third, again));
}
