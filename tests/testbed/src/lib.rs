//! A fleet of real OpenSSH test hosts on one machine, for tests, benchmarks and demos.
//!
//! Each host is an `sshd` on its own loopback address (127.0.x.y), with its
//! own host key, running in its own mount namespace where a per-host
//! directory is bind-mounted over `/etc/linkops` — so every host has its own
//! `/etc/linkops/client_id`. Hosts log in a dedicated unprivileged user whose
//! shell is `/bin/sh`. Everything started is stopped (by pid) on drop.
//!
//! Needs root (namespaces, sshd), `sshd`, `ssh-keygen`, `unshare` and `git`.
//!
//! Beside the fleet, the other real things LinkOps is tested against: a
//! PostgreSQL server ([`postgres`]), a TLS certificate authority for
//! replicas' mutual TLS ([`TestAuthority`]), Git repositories driven by the real `git`
//! ([`WorkRepo`]), the daemon as its own process ([`ServeProcess`]), a certified
//! OpenID provider ([`oidc`]), and, for
//! benchmarks beyond what real sshd fits on one machine, a [`simulated`]
//! fleet. It knows the daemon only from outside — its command line, its
//! log and its HTTP API — so the product can use it too (`linkops demo`).

mod authority;
mod dropbear;
mod files;
mod git;
mod host;
pub mod measure;
pub mod oidc;
mod partition;
pub mod postgres;
mod serve;
pub mod simulated;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use authority::TestAuthority;
pub use dropbear::DropbearHost;
pub use files::{copy_private, private_dir, write_private};
pub use git::WorkRepo;
pub use host::TestHost;
pub use partition::Partition;
pub use serve::{ServeProcess, until_machines};

/// The unprivileged account the test hosts log in.
pub const TEST_USER: &str = "linkops-test";
/// A second name for root that exists only inside the test hosts (their own
/// `/etc/passwd` and `/etc/shadow`), logging in with a password the test
/// sets: the operator who enrolls with a password typed once. Nothing of it
/// reaches the machine running the tests.
pub const PASSWORD_OPERATOR: &str = "linkops-operator";

const SSHD: &str = "/usr/sbin/sshd";
/// Abstract Unix socket names that claim addresses and mark running fleets:
/// the kernel drops them with their process, and they leave no file behind.
const CLAIM_PREFIX: &str = "linkops-testbed/";
/// The mount point each host's namespace binds its own directory over.
const ETC_LINKOPS: &str = "/etc/linkops";
/// Serialises creating the test user with removing it, across processes:
/// one empty file in the system's lock directory (a tmpfs, empty at boot).
const USER_LOCK: &str = "/run/lock/linkops-testbed.lock";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the test fleet needs root (for mount namespaces and sshd); run the tests as root")]
    NotRoot,
    #[error("`{program}` is missing: {fix}")]
    Missing {
        program: &'static str,
        fix: &'static str,
    },
    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },
    #[error("test fleet I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no free loopback address for a test host (all of 127.0.10-49.x are leased)")]
    NoAddress,
    #[error("sshd for test host {host} did not start: {log}")]
    SshdStart { host: String, log: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// N running test hosts sharing one client key and one known_hosts file.
pub struct TestFleet {
    /// Says, while the fleet runs, that it does (see [`TestFleet::tidy`]).
    claim: std::os::unix::net::UnixListener,
    /// What this fleet created on the machine, and whether it removes it on drop.
    created: Created,
    tidy: bool,
    root: tempfile::TempDir,
    client_key: PathBuf,
    known_hosts: PathBuf,
    authorized_keys: PathBuf,
    trusted_user_ca_keys: PathBuf,
    operator_key: PathBuf,
    hosts: Vec<TestHost>,
}

/// What every host of a fleet reads beside its own files.
pub(crate) struct SharedFiles<'a> {
    /// The test user's authorized keys.
    pub authorized_keys: &'a Path,
    /// The user CAs the hosts trust.
    pub trusted_user_ca_keys: &'a Path,
    /// Root's authorized keys: the operator's own access, as `linkops
    /// enroll` uses it (with a plain key: root takes no certificate).
    pub operator_authorized_keys: &'a Path,
}

impl TestFleet {
    /// Starts `count` hosts, all enrolled (each `client_id` holds `LINKOPS-<its uuid>`).
    pub fn start(count: usize) -> Result<TestFleet> {
        // Claimed first: a tidying fleet that has not yet looked will see
        // this one and keep the user; one that has is waited for by the lock.
        let claim = claim_fleet()?;
        let etc_linkops = check_prerequisites()?;
        let user = {
            let _lock = user_lock()?;
            ensure_test_user()?
        };
        let created = Created { user, etc_linkops };
        let root = tempfile::Builder::new()
            .prefix("linkops-fleet-")
            .tempdir()
            .map_err(|source| io_error(Path::new("/tmp"), source))?;
        // The test user must reach repositories and authorized_keys below it.
        set_mode(root.path(), 0o755)?;

        let client_key = root.path().join("id_ed25519");
        generate_key(&client_key, "ed25519")?;
        let authorized_keys = root.path().join("authorized_keys");
        let public = read(&client_key.with_extension("pub"))?;
        write(&authorized_keys, &public)?;
        set_mode(&authorized_keys, 0o644)?;
        // No user CA is trusted until a test says so.
        let trusted_user_ca_keys = root.path().join("trusted_user_ca_keys");
        write(&trusted_user_ca_keys, "")?;
        set_mode(&trusted_user_ca_keys, 0o644)?;

        // The operator's key, which logs in as root (to enroll a host).
        let operator_key = root.path().join("operator_ed25519");
        generate_key(&operator_key, "ed25519")?;
        let operator_authorized_keys = root.path().join("operator_authorized_keys");
        write(
            &operator_authorized_keys,
            &read(&operator_key.with_extension("pub"))?,
        )?;
        set_mode(&operator_authorized_keys, 0o644)?;

        let shared = SharedFiles {
            authorized_keys: &authorized_keys,
            trusted_user_ca_keys: &trusted_user_ca_keys,
            operator_authorized_keys: &operator_authorized_keys,
        };
        let mut hosts = Vec::with_capacity(count);
        for index in 0..count {
            let name = format!("host{}", index + 1);
            hosts.push(TestHost::start(&name, root.path(), &shared)?);
        }
        let known_hosts = root.path().join("known_hosts");
        let lines: String = hosts.iter().map(TestHost::known_hosts_line).collect();
        write(&known_hosts, &lines)?;
        Ok(TestFleet {
            claim,
            created,
            tidy: false,
            root,
            client_key,
            known_hosts,
            authorized_keys,
            trusted_user_ca_keys,
            operator_key,
            hosts,
        })
    }

    pub fn hosts(&self) -> &[TestHost] {
        &self.hosts
    }

    /// On drop, also removes what this fleet created on the machine (the
    /// test user with its home, an empty `/etc/linkops`) unless another
    /// fleet runs. The demo does; the tests keep the user, which every run
    /// would otherwise create again.
    pub fn tidy(&mut self) {
        self.tidy = true;
    }

    /// For stopping and restarting hosts.
    pub fn hosts_mut(&mut self) -> &mut [TestHost] {
        &mut self.hosts
    }

    pub fn host(&self, index: usize) -> &TestHost {
        &self.hosts[index]
    }

    /// Private key (ed25519, mode 0600) authorised on every host.
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// The operator's private key (ed25519, mode 0600), which logs in to
    /// every host as root — with the key only, never a certificate.
    pub fn operator_key(&self) -> &Path {
        &self.operator_key
    }

    /// known_hosts with every host's key.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// A scratch directory that lives as long as the fleet.
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// `links.yaml` listing every host (ids `host1`, `host2`, …, named `Test
    /// host1`, …, tagged `tag`, logging in with the key `fleet_key`), the hosts
    /// at `wrong_uuid` with a uuid they do not hold (an enrollment wrong on
    /// purpose), and `extra` (`field: value`) added to each entry.
    pub fn inventory(&self, tag: &str, wrong_uuid: &[usize], extra: &str) -> String {
        let mut links = String::from("machines:\n");
        for (index, host) in self.hosts.iter().enumerate() {
            let uuid = match wrong_uuid.contains(&index) {
                true => "00000000-0000-4000-8000-000000000000",
                false => host.uuid(),
            };
            links.push_str(&format!(
                "  - id: {name}\n    name: Test {name}\n    host: {address}\n    port: {port}\n    user: {TEST_USER}\n    key: fleet_key\n    uuid: {uuid}\n    tags: [{tag}]\n",
                name = host.name(),
                address = host.address(),
                port = host.port(),
            ));
            if !extra.is_empty() {
                links.push_str(&format!("    {extra}\n"));
            }
        }
        links
    }

    /// Generates another client key (`ed25519`, `rsa`, …) and authorises it on every host.
    pub fn add_client_key(&self, name: &str, kind: &str) -> Result<PathBuf> {
        let path = self.root.path().join(name);
        generate_key(&path, kind)?;
        let mut authorized = read(&self.authorized_keys)?;
        authorized.push_str(&read(&path.with_extension("pub"))?);
        write(&self.authorized_keys, &authorized)?;
        Ok(path)
    }

    /// Makes every host accept user certificates signed by the CA whose public
    /// key (an OpenSSH line) is `ca` — for a login its certificate names as a
    /// principal (sshd reads the file at each login: no restart).
    pub fn trust_user_ca(&self, ca: &str) -> Result<()> {
        write(&self.trusted_user_ca_keys, &format!("{}\n", ca.trim()))
    }

    /// Takes every client key out of the hosts' `authorized_keys`: no key
    /// opens them any more, only certificates of a trusted CA do.
    pub fn revoke_client_keys(&self) -> Result<()> {
        write(&self.authorized_keys, "")
    }

    /// Creates a bare Git repository served over SSH by host `index`.
    ///
    /// Returns its path on this machine (push to it locally) and its SSH URL
    /// (`linkops-test@127.0.x.y:/path/name.git`, or `ssh://…` on a non-22 port).
    pub fn bare_repo(&self, index: usize, name: &str) -> Result<BareRepo> {
        let path = self.root.path().join("git").join(format!("{name}.git"));
        fs::create_dir_all(&path).map_err(|source| io_error(&path, source))?;
        run(Command::new("git")
            .args(["init", "--quiet", "--bare", "--initial-branch=main"])
            .arg(&path))?;
        run(Command::new("chown").args(["-R", TEST_USER]).arg(&path))?;
        let host = &self.hosts[index];
        let url = if host.port() == 22 {
            format!("{TEST_USER}@{}:{}", host.address(), path.display())
        } else {
            format!(
                "ssh://{TEST_USER}@{}:{}{}",
                host.address(),
                host.port(),
                path.display()
            )
        };
        Ok(BareRepo { path, url })
    }
}

impl Drop for TestFleet {
    fn drop(&mut self) {
        if !self.tidy {
            return;
        }
        let created = self.created;
        // The user's processes end with its hosts; userdel refuses a user in use.
        self.hosts.clear();
        let Ok(_lock) = user_lock() else {
            return;
        };
        if other_fleets(&self.claim) {
            return;
        }
        if created.user {
            run(Command::new("userdel").args(["--remove", TEST_USER])).ok();
        }
        if created.etc_linkops {
            // Only when empty: it may hold an installed daemon's config by now.
            fs::remove_dir(ETC_LINKOPS).ok();
        }
    }
}

/// What a fleet found missing on the machine and created.
#[derive(Debug, Clone, Copy)]
struct Created {
    user: bool,
    etc_linkops: bool,
}

/// Marks a running fleet: `linkops-testbed/fleet/<pid>/<n>`.
fn claim_fleet() -> Result<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "{CLAIM_PREFIX}fleet/{}/{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let address = SocketAddr::from_abstract_name(&name)
        .map_err(|source| io_error(Path::new(&name), source))?;
    UnixListener::bind_addr(&address).map_err(|source| io_error(Path::new(&name), source))
}

/// Whether a fleet other than `own` runs on this machine (any process):
/// the kernel lists bound abstract names in /proc/net/unix as `@name`.
fn other_fleets(own: &std::os::unix::net::UnixListener) -> bool {
    let own = own
        .local_addr()
        .ok()
        .and_then(|a| {
            use std::os::linux::net::SocketAddrExt;
            a.as_abstract_name()
                .map(|n| format!("@{}", String::from_utf8_lossy(n)))
        })
        .unwrap_or_default();
    let fleets = format!("@{CLAIM_PREFIX}fleet/");
    // Unreadable: assume another fleet, and leave everything in place.
    fs::read_to_string("/proc/net/unix").map_or(true, |table| {
        table
            .lines()
            .filter_map(|line| line.split_whitespace().nth(7))
            .any(|name| name.starts_with(&fleets) && name != own)
    })
}

/// A bare repository reachable over SSH through a test host.
#[derive(Debug, Clone)]
pub struct BareRepo {
    pub path: PathBuf,
    pub url: String,
}

/// Checks for root and the programs; returns whether it created `/etc/linkops`.
fn check_prerequisites() -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    let proc_self =
        fs::metadata("/proc/self").map_err(|source| io_error(Path::new("/proc/self"), source))?;
    if proc_self.uid() != 0 {
        return Err(Error::NotRoot);
    }
    let programs: [(&'static str, &'static str); 4] = [
        (SSHD, "apt-get install -y openssh-server"),
        ("/usr/bin/ssh-keygen", "apt-get install -y openssh-client"),
        ("/usr/bin/unshare", "apt-get install -y util-linux"),
        ("git", "apt-get install -y git"),
    ];
    for (program, fix) in programs {
        let found = if program.starts_with('/') {
            Path::new(program).exists()
        } else {
            Command::new(program).arg("--version").output().is_ok()
        };
        if !found {
            return Err(Error::Missing { program, fix });
        }
    }
    // sshd's privilege separation directory.
    fs::create_dir_all("/run/sshd").map_err(|source| io_error(Path::new("/run/sshd"), source))?;
    let etc = Path::new(ETC_LINKOPS);
    let existed = etc.exists();
    fs::create_dir_all(etc).map_err(|source| io_error(etc, source))?;
    Ok(!existed)
}

/// Held while the test user is created or removed.
fn user_lock() -> Result<fs::File> {
    let path = Path::new(USER_LOCK);
    let file = fs::File::create(path).map_err(|source| io_error(path, source))?;
    file.lock().map_err(|source| io_error(path, source))?;
    Ok(file)
}

/// Creates the test user when missing; returns whether it did.
fn ensure_test_user() -> Result<bool> {
    let exists = Command::new("id")
        .arg(TEST_USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if exists {
        return Ok(false);
    }
    // The `*` password: sshd without PAM treats an account with `!` as locked.
    run(Command::new("useradd").args([
        "--create-home",
        "--shell",
        "/bin/sh",
        "--password",
        "*",
        TEST_USER,
    ]))?;
    Ok(true)
}

fn generate_key(path: &Path, kind: &str) -> Result<()> {
    let mut command = Command::new("ssh-keygen");
    command
        .args(["-q", "-t", kind, "-N", "", "-C", "linkops-testbed", "-f"])
        .arg(path);
    if kind == "rsa" {
        command.args(["-b", "3072"]);
    }
    run(&mut command)
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .map_err(|source| io_error(Path::new(command.get_program()), source))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        command: format!("{command:?}"),
        output: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| io_error(path, source))
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|source| io_error(path, source))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|source| io_error(path, source))
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        source,
    }
}
