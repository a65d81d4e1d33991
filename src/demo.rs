//! `linkops demo`: the whole product on one machine, in one command.
//!
//! Starts a handful of real sshd hosts on loopback addresses (the test
//! suite's [`testbed`]; one deliberately not enrolled), writes
//! a small config repository as a real Git repository, runs the daemon on it,
//! and prints where to look and how to log in. Everything it started stops
//! with it (Ctrl-C); its files live in one temporary directory.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use secrecy::ExposeSecret;

use crate::config::Config;
use crate::server::Daemon;
use crate::{auth, store};
use testbed::TestFleet;

/// Demo hosts; the last one's inventory entry carries a uuid it does not hold.
const HOSTS: usize = 5;
const UNENROLLED_UUID: &str = "00000000-0000-4000-8000-00000000dead";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the demo needs root: its machines are sshd processes in their own mount namespaces; run it as root, or as a user with sudo"
    )]
    NotRoot,
    #[error(
        "{missing} missing and this is not Debian: install {packages} (sshd, ssh-keygen, unshare, git), then run the demo again"
    )]
    Missing { missing: String, packages: String },
    #[error(
        "installing {packages} failed ({status}); run `apt-get install -y {packages}` and try again"
    )]
    Install { packages: String, status: String },
    #[error(transparent)]
    Fleet(#[from] testbed::Error),
    #[error("demo files in {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`git {args}` failed in the demo repository: {output}")]
    Git { args: String, output: String },
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Auth(#[from] auth::Error),
    #[error("the demo's secret: {0}")]
    Keyring(#[from] crate::sealed::Error),
    #[error("the demo's secret: {0}")]
    Secret(#[from] crate::sealed::files::Error),
    #[error(transparent)]
    Daemon(#[from] crate::server::Error),
    #[error("stopped at once by a second Ctrl-C (in-flight work was cut short); {0}")]
    Aborted(String),
    #[error("a demo set-up task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Runs the demo until `stop` completes (Ctrl-C), then stops everything it started.
/// Should `abort` complete while the daemon is stopping (a second Ctrl-C), the daemon's
/// in-flight work is cut short, but the demo machines and files are still removed.
pub async fn run(
    listen: SocketAddr,
    step_up: bool,
    stop: impl Future<Output = ()> + Send + 'static,
    abort: impl Future + Send,
) -> Result<(), Error> {
    crate::blocking::run(install_prerequisites).await??;
    eprintln!("starting {HOSTS} demo machines (sshd on loopback addresses)…");
    let mut fleet = crate::blocking::run(|| TestFleet::start(HOSTS)).await??;
    // Ctrl-C leaves the machine as it was: the test user goes too, if the demo made it.
    fleet.tidy();
    let dir = tempfile::Builder::new()
        .prefix("linkops-demo-")
        .tempdir()
        .map_err(|source| io_error(Path::new("/tmp"), source))?;
    let repo = dir.path().join("config");
    let config = {
        let (repo, data) = (repo.clone(), dir.path().join("data"));
        let (key, known_hosts) = (
            fleet.client_key().to_owned(),
            fleet.known_hosts().to_owned(),
        );
        let links = links(&fleet);
        // Where the demo's declared state keeps each machine's file: the
        // machines share this computer's disk, so each writes its own.
        let state_dir = fleet.dir().join("motd");
        crate::blocking::run(move || -> Result<Config, Error> {
            std::fs::create_dir(&state_dir).map_err(|source| io_error(&state_dir, source))?;
            std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o777))
                .map_err(|source| io_error(&state_dir, source))?;
            let mut config = demo_config(&data, &repo, &key, &known_hosts)?;
            // The daemon's age identity, made before it starts: the demo's secret is sealed to it.
            let keyring = crate::sealed::Keyring::load_or_create(&config.age_identity_path())?;
            write_repository(&repo, &links, &state_dir, &keyring.recipients())?;
            config.auth.step_up = step_up;
            Ok(config)
        })
        .await??
    };
    // The admin is created here, so the banner can show its password.
    let password = {
        let path = config.store_path();
        crate::blocking::run(move || -> Result<_, Error> {
            let store = store::Store::open(&path)?;
            Ok(auth::bootstrap_admin(&store)?)
        })
        .await??
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Listen {
            address: listen,
            source,
        })?;
    let address = listener.local_addr().map_err(|source| Error::Listen {
        address: listen,
        source,
    })?;
    let stop = async move {
        stop.await;
        eprintln!("stopping the demo… (Ctrl-C again to cut the daemon's in-flight work short)");
    };
    let daemon = Daemon::start(config, listener, stop).await?;
    daemon.git().first_attempt().await;
    print_banner(address, password.as_ref(), &repo, &fleet);
    let finished = tokio::select! {
        stopped = daemon.wait() => Some(stopped),
        _ = abort => None,
    };
    // The hosts stop as `fleet` drops (and the test user goes); the files go with `dir`.
    crate::blocking::run(move || drop(fleet)).await?;
    let gone = format!(
        "{HOSTS} sshd hosts, their user {} (if the demo created it) and {} are gone",
        testbed::TEST_USER,
        dir.path().display()
    );
    match finished {
        Some(stopped) => {
            stopped?;
            eprintln!("demo stopped: the daemon, {gone}");
            Ok(())
        }
        None => Err(Error::Aborted(gone)),
    }
}

/// Checks for root, and on Debian installs what the demo machines need.
fn install_prerequisites() -> Result<(), Error> {
    if !is_root() {
        return Err(Error::NotRoot);
    }
    let needed = [
        ("/usr/sbin/sshd", "openssh-server"),
        ("/usr/bin/ssh-keygen", "openssh-client"),
        ("/usr/bin/unshare", "util-linux"),
        ("/usr/bin/git", "git"),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages = missing.join(" ");
    if !Path::new("/etc/debian_version").exists() {
        return Err(Error::Missing {
            missing: format!("{packages} is"),
            packages,
        });
    }
    eprintln!("installing {packages} (apt-get)…");
    // policy-rc.d 101: the system's own sshd is not started; the demo starts its own.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let had_policy = policy.exists();
    if !had_policy {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n")
            .map_err(|source| io_error(policy, source))?;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))
            .map_err(|source| io_error(policy, source))?;
    }
    let installed = Command::new("apt-get")
        .arg("update")
        .arg("-qq")
        .status()
        .and_then(|_| {
            Command::new("apt-get")
                .args(["install", "-y", "-qq"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
        });
    if !had_policy {
        std::fs::remove_file(policy).ok();
    }
    match installed {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(Error::Install {
            packages,
            status: status.to_string(),
        }),
        Err(error) => Err(Error::Install {
            packages,
            status: error.to_string(),
        }),
    }
}

/// As a user with sudo, runs this very command again through sudo. Returns
/// only when it did not: as root, without sudo, or when sudo could not start
/// (said on stderr); the demo then says what it needs.
pub fn elevate() {
    use std::os::unix::process::CommandExt;
    if is_root() {
        return;
    }
    let (Some(sudo), Ok(exe)) = (on_path("sudo"), std::env::current_exe()) else {
        return;
    };
    eprintln!(
        "the demo needs root (its machines are sshd processes in their own mount namespaces): asking sudo"
    );
    let error = Command::new(&sudo)
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .exec();
    eprintln!("{}: {error}", sudo.display());
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // The owner of /proc/self is the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The inventory: every demo host, tagged; the last one with a uuid it does not hold.
fn links(fleet: &TestFleet) -> String {
    let mut links = String::from(
        "# yaml-language-server: $schema=https://linkops.invalid/schemas/links.schema.json\nmachines:\n",
    );
    for (index, host) in fleet.hosts().iter().enumerate() {
        let last = index + 1 == fleet.hosts().len();
        let (uuid, tags) = if last {
            (UNENROLLED_UUID, "[demo, lab]")
        } else if index % 2 == 0 {
            (host.uuid(), "[demo, web]")
        } else {
            (host.uuid(), "[demo, db]")
        };
        links.push_str(&format!(
            "  - id: {name}\n    name: Demo {name}\n    host: {address}\n    port: {port}\n    uuid: {uuid}\n    tags: {tags}\n",
            name = host.name(),
            address = host.address(),
            port = host.port(),
        ));
    }
    links
}

const SCRIPTS: &str = r#"scripts:
  - id: system-info
    name: System information
    description: Kernel, uptime and this machine's enrollment id.
    body: |
      echo "$(uname -sr) on $(hostname)"
      uptime
      echo "client id: $(cat /etc/linkops/client_id)"
    targets:
      tags: [web, db]

  - id: greet
    name: Greet
    description: Prints a greeting; the name is a typed parameter (never spliced into the script).
    body: |
      i=0
      while [ "$i" -lt "$LINKOPS_PARAM_TIMES" ]; do
        echo "hello, $LINKOPS_PARAM_NAME ($((i + 1))/$LINKOPS_PARAM_TIMES)"
        i=$((i + 1))
      done
    params:
      - name: name
        type: string
        default: world
      - name: times
        type: int
        default: 3

  - id: countdown
    name: Slow countdown
    description: Counts down for a minute — something to watch live and to stop.
    body: |
      for i in $(seq 60 -1 1); do echo "$i"; sleep 1; done
      echo liftoff
    timeout: 5m

  - id: use-token
    name: Use a secret
    description: Prints the demo's API token as a careless script would — the output shows *** (secrets/demo-token.yaml, sealed with age to the daemon).
    params:
      - name: token
        type: secret
        default: demo-token
    body: |
      echo "calling the API with token $LINKOPS_PARAM_TOKEN"
      echo "Authorization: Basic $(printf 'demo:%s' "$LINKOPS_PARAM_TOKEN" | base64)"

  - id: restart-app
    name: Restart the app
    description: Restarts the demo's app (it only says so) — on the web machines it waits for a second pair of eyes (access.yaml's approvals).
    body: |
      echo "restarting the app on $(cat /etc/linkops/client_id)"

  - id: motd
    name: Message of the day
    description: A message-of-the-day file with exactly this text (the demo keeps one per machine in $STATE_DIR).
    params:
      - name: text
        type: string
        default: Managed by LinkOps
    body: |
      printf '%s\n' "$LINKOPS_PARAM_TEXT" > "$STATE_DIR/$(cat /etc/linkops/client_id)"
    check: |
      f="$STATE_DIR/$(cat /etc/linkops/client_id)"
      [ -f "$f" ] || { echo "$f is missing"; exit 1; }
      [ "$(cat "$f")" = "$LINKOPS_PARAM_TEXT" ] || { echo "$f reads: $(cat "$f")"; exit 1; }
"#;

const MOTD_STATE: &str = "id: motd\ndescription: Every web machine has the message of the day.\nscript: motd\ntargets:\n  tags: [web]\ninterval: 30s\nrollout: {canary: 1, batch: 5, max_failures: 1}\n";

const HELLO_SCHEDULE: &str = "name: morning-hello\ndescription: Greets the web machines every morning, Berlin time.\nscript: greet\ntargets:\n  tags: [web]\ncron: \"0 9 * * *\"\nzone: Europe/Berlin\n";

const ACCESS: &str = "approvals:\n  # Restarting the app on the web machines waits for someone else's approval.\n  - {name: web-restarts, tags: [web], scripts: [restart-app], approvers: 1, expires: 1h}\n";

const WELCOME_RUN: &str = "id: welcome\nscript: system-info\ntargets:\n  tags: [web, db]\n";

const README: &str = "# LinkOps demo configuration\n\nEdit, commit, and watch the daemon follow: a new file under runs/ runs its script once; states/ declares what the machines are kept in; schedules/ runs scripts on a cron expression in a time zone.\n";

/// The demo secret's value: known, so that the browser tests can look for it (never found).
const DEMO_TOKEN: &str = "demo-t0ken/s3cret";

fn write_repository(
    repo: &Path,
    links: &str,
    state_dir: &Path,
    recipients: &[String],
) -> Result<(), Error> {
    let scripts = SCRIPTS.replace("$STATE_DIR", &state_dir.display().to_string());
    let recipients = format!("all: [{}]  # the demo daemon\n", recipients.join(", "));
    let files = [
        ("README.md", README),
        ("links.yaml", links),
        ("scripts.yaml", &scripts),
        ("recipients.yaml", &recipients),
        ("access.yaml", ACCESS),
        ("runs/welcome.yaml", WELCOME_RUN),
        ("states/motd.yaml", MOTD_STATE),
        ("schedules/morning-hello.yaml", HELLO_SCHEDULE),
    ];
    for (name, content) in files {
        let path = repo.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| io_error(parent, source))?;
        }
        std::fs::write(&path, content).map_err(|source| io_error(&path, source))?;
    }
    let limits = crate::sealed::files::Limits {
        description: Some("The demo's API token".into()),
        scripts: Some(vec!["use-token".into()]),
        targets: None,
    };
    crate::sealed::files::Checkout::new(repo).set("demo-token", DEMO_TOKEN.as_bytes(), limits)?;
    git(repo, &["init", "-q", "-b", "main"])?;
    // So that the operator's own commits in the demo repository just work.
    git(repo, &["config", "user.name", "LinkOps demo"])?;
    git(repo, &["config", "user.email", "demo@linkops.invalid"])?;
    git(repo, &["add", "."])?;
    git(repo, &["commit", "-q", "-m", "The demo fleet"])
}

fn git(repo: &Path, args: &[&str]) -> Result<(), Error> {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .map_err(|source| io_error(repo, source))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Git {
        args: args.join(" "),
        output: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// A data dir holding the fleet's key (0600) and host keys, and the config that uses them.
fn demo_config(data: &Path, repo: &Path, key: &Path, known_hosts: &Path) -> Result<Config, Error> {
    let mut config = Config {
        data_dir: data.to_owned(),
        ..Config::default()
    };
    let keys = config.keys_dir();
    let ssh_dir = config
        .known_hosts_path()
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    // The data dir first: the daemon refuses one that others can read.
    for dir in [data, keys.as_path(), ssh_dir.as_path()] {
        std::fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|source| io_error(dir, source))?;
    }
    let demo_key = keys.join("demo_key");
    std::fs::copy(key, &demo_key).map_err(|source| io_error(&demo_key, source))?;
    std::fs::set_permissions(&demo_key, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| io_error(&demo_key, source))?;
    std::fs::copy(known_hosts, config.known_hosts_path())
        .map_err(|source| io_error(known_hosts, source))?;
    config.git.url = Some(crate::config::RepoUrl::parse(&repo.display().to_string()));
    config.ssh.user = testbed::TEST_USER.to_owned();
    config.ssh.key = "demo_key".to_owned();
    // A playground on loopback: terminals and admin pages without a second
    // factor, unless `linkops demo --step-up` asks for one.
    config.auth.step_up = false;
    // Pictures that move while you look: a sample every ten seconds.
    config.pictures.interval = std::time::Duration::from_secs(10);
    Ok(config)
}

fn print_banner(
    address: SocketAddr,
    password: Option<&auth::GeneratedPassword>,
    repo: &Path,
    fleet: &TestFleet,
) {
    let url = format!("http://{address}");
    let console = format!("{url}/");
    let password = password.map_or(
        "(unchanged: this data dir already had users)".to_owned(),
        |p| p.password.expose_secret().to_owned(),
    );
    let hosts: Vec<String> = fleet
        .hosts()
        .iter()
        .map(|h| format!("{} {}:{}", h.name(), h.address(), h.port()))
        .collect();
    let repo = repo.display();
    let unenrolled = fleet.hosts().last().map_or("", |h| h.name());
    let on_path = match cli_on_path() {
        true => String::new(),
        false => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_owned))
            .map_or(String::new(), |dir| {
                format!("export PATH=\"{}:$PATH\"\n  ", dir.display())
            }),
    };
    println!(
        "\nLinkOps demo is running.\n\n  \
         console:   {console}\n  \
         api:       {url}  (OpenAPI: {url}/api/openapi.json)\n  \
         user:      admin\n  \
         password:  {password}\n  \
         machines:  {hosts}\n             ({unenrolled} is deliberately not enrolled: its client id does not match links.yaml)\n  \
         config:    {repo}  (a Git repository the daemon follows; a commit applies within a second)\n\n\
         Try, from another shell:\n  \
         {on_path}linkops login --server {url} --user admin\n  \
         linkops machines\n  \
         linkops ops                           (the `welcome` run-request already ran, once)\n  \
         linkops run greet --tag web -p name=operator -p times=2\n  \
         linkops run system-info --target {unenrolled}  (refused there: not enrolled, so nothing runs; exit 1)\n  \
         linkops run countdown --tag db        (then `linkops stop <id>` from another shell)\n  \
         printf 'id: again\\nscript: system-info\\n' > {repo}/runs/again.yaml && git -C {repo} add . && git -C {repo} commit -qm again\n\n\
         Ctrl-C stops the daemon and every demo machine, and removes what the demo created.",
        hosts = hosts.join(", "),
    );
}

/// Whether `linkops` on the PATH is this very binary (else the banner says
/// how to reach it, as after `cargo run`).
fn cli_on_path() -> bool {
    let Ok(exe) = std::env::current_exe().and_then(std::fs::canonicalize) else {
        return false;
    };
    // The shell runs the first `linkops` on the PATH.
    on_path("linkops")
        .and_then(|found| std::fs::canonicalize(found).ok())
        .is_some_and(|found| found == exe)
}

/// The first `program` on the PATH, as the shell would run it.
fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.exists())
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        source,
    }
}
