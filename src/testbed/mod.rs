//! A fleet of real OpenSSH test hosts on one machine, for tests, benchmarks and demos.
//!
//! Each host is an `sshd` on its own loopback address (127.0.x.y), with its
//! own host key, running in its own mount namespace where a per-host
//! directory is bind-mounted over `/etc/linkops` — so every host has its own
//! `/etc/linkops/client_id`. Hosts log in a dedicated unprivileged user whose
//! shell is `/bin/sh`. Everything started is stopped (by pid) on drop.
//!
//! Needs root (namespaces, sshd), `sshd`, `ssh-keygen`, `unshare` and `git`.

mod host;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use host::TestHost;

use crate::ssh;

/// The unprivileged account the test hosts log in.
pub const TEST_USER: &str = "linkops-test";

const SSHD: &str = "/usr/sbin/sshd";
const LOCK_DIR: &str = "/tmp/linkops-testbed";

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
pub struct Fleet {
    root: tempfile::TempDir,
    client_key: PathBuf,
    known_hosts: PathBuf,
    authorized_keys: PathBuf,
    hosts: Vec<TestHost>,
}

impl Fleet {
    /// Starts `count` hosts, all enrolled (each `client_id` holds `LINKOPS-<its uuid>`).
    pub fn start(count: usize) -> Result<Fleet> {
        check_prerequisites()?;
        ensure_test_user()?;
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

        let mut hosts = Vec::with_capacity(count);
        for index in 0..count {
            let name = format!("host{}", index + 1);
            hosts.push(TestHost::start(&name, root.path(), &authorized_keys)?);
        }
        let known_hosts = root.path().join("known_hosts");
        let lines: String = hosts.iter().map(TestHost::known_hosts_line).collect();
        write(&known_hosts, &lines)?;
        Ok(Fleet {
            root,
            client_key,
            known_hosts,
            authorized_keys,
            hosts,
        })
    }

    pub fn hosts(&self) -> &[TestHost] {
        &self.hosts
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

    /// known_hosts with every host's key.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// A scratch directory that lives as long as the fleet.
    pub fn dir(&self) -> &Path {
        self.root.path()
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

    /// How to reach host `index` with the fleet's client key.
    pub fn target(&self, index: usize) -> ssh::Target {
        let host = &self.hosts[index];
        ssh::Target {
            host: host.address().to_string(),
            port: host.port(),
            user: TEST_USER.to_owned(),
            key: ssh::KeyFile::at(&self.client_key),
            pinned_host_key: None,
        }
    }

    /// SSH options that trust exactly this fleet's host keys.
    pub fn connect_options(&self) -> ssh::ConnectOptions {
        ssh::ConnectOptions {
            known_hosts: self.known_hosts.clone(),
            connect_timeout: std::time::Duration::from_secs(10),
            trust_on_first_use: false,
            keepalive_interval: std::time::Duration::from_secs(10),
            keepalive_max: 3,
            metrics: Default::default(),
        }
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

/// A bare repository reachable over SSH through a test host.
#[derive(Debug, Clone)]
pub struct BareRepo {
    pub path: PathBuf,
    pub url: String,
}

fn check_prerequisites() -> Result<()> {
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
    // The mount point each host's namespace binds its own directory over.
    fs::create_dir_all("/etc/linkops")
        .map_err(|source| io_error(Path::new("/etc/linkops"), source))?;
    fs::create_dir_all(LOCK_DIR).map_err(|source| io_error(Path::new(LOCK_DIR), source))
}

/// Creates the test user once per machine; serialised across test processes.
fn ensure_test_user() -> Result<()> {
    let lock_path = Path::new(LOCK_DIR).join("user.lock");
    let lock = fs::File::create(&lock_path).map_err(|source| io_error(&lock_path, source))?;
    lock.lock().map_err(|source| io_error(&lock_path, source))?;
    let exists = Command::new("id")
        .arg(TEST_USER)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !exists {
        run(Command::new("useradd").args(["--create-home", "--shell", "/bin/sh", TEST_USER]))?;
        // sshd without PAM treats an account with a `!` password as locked.
        run(Command::new("usermod").args(["-p", "*", TEST_USER]))?;
    }
    Ok(())
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
