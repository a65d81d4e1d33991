//! One test host: an sshd in its own mount and PID namespaces on its own
//! loopback address, with its own `/etc/linkops` and `/etc/ssh` (what
//! `linkops enroll` writes, and `sshd -t` and a reload read, are the host's).

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rustix::event::{self, PollFd, PollFlags, Timespec};
use rustix::process::{self, Pid, PidfdFlags};

use super::{
    CLAIM_PREFIX, Error, PASSWORD_OPERATOR, Result, SSHD, SharedFiles, TEST_USER, generate_key,
    io_error, read, set_mode, write,
};

/// How long sshd may take to say it listens before the start counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stop waits for sshd and its sessions to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TestHost {
    name: String,
    address: Ipv4Addr,
    port: u16,
    uuid: String,
    /// Bind-mounted over `/etc/linkops` inside the host's namespace.
    etc_dir: PathBuf,
    /// Bind-mounted over `/etc/ssh`; holds `sshd_config` and `sshd_config.d/`.
    etc_ssh: PathBuf,
    host_public_key: String,
    /// `None` while stopped.
    sshd: Option<Child>,
    /// Held for the host's lifetime so no other test process takes the address.
    _address_lease: std::os::unix::net::UnixListener,
}

impl TestHost {
    pub(super) fn start(name: &str, fleet_dir: &Path, shared: &SharedFiles) -> Result<TestHost> {
        let (address, lease) = lease_address()?;
        let port = free_port(address)?;
        let dir = fleet_dir.join(name);
        let etc_dir = dir.join("etc-linkops");
        fs::create_dir_all(&etc_dir).map_err(|source| io_error(&etc_dir, source))?;
        set_mode(&dir, 0o755)?;
        set_mode(&etc_dir, 0o755)?;

        let uuid = uuid::Uuid::new_v4().to_string();
        let client_id = etc_dir.join("client_id");
        write(&client_id, &format!("LINKOPS-{uuid}\n"))?;
        set_mode(&client_id, 0o644)?;

        let host_key = dir.join("ssh_host_ed25519_key");
        generate_key(&host_key, "ed25519")?;
        let host_public_key = read(&host_key.with_extension("pub"))?;

        let etc_ssh = dir.join("etc-ssh");
        let drop_ins = etc_ssh.join("sshd_config.d");
        fs::create_dir_all(&drop_ins).map_err(|source| io_error(&drop_ins, source))?;
        set_mode(&etc_ssh, 0o755)?;
        let config = etc_ssh.join("sshd_config");
        // As Debian's: the drop-ins first (sshd keeps the first value it reads).
        write(
            &config,
            &format!(
                "Include /etc/ssh/sshd_config.d/*.conf\n\
                 ListenAddress {address}:{port}\n\
                 HostKey {host_key}\n\
                 PidFile none\n\
                 UsePAM no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\n\
                 AuthorizedKeysFile {authorized_keys}\n\
                 TrustedUserCAKeys {trusted_user_ca_keys}\n\
                 StrictModes no\n\
                 AllowUsers {TEST_USER} root {PASSWORD_OPERATOR}\n\
                 PermitRootLogin prohibit-password\n\
                 MaxStartups 500\n\
                 MaxSessions 500\n\
                 AcceptEnv LINKOPS_*\n\
                 LogLevel INFO\n\
                 Match User root\n\
                 \x20   AuthorizedKeysFile {operator_authorized_keys}\n\
                 \x20   PubkeyAcceptedAlgorithms ssh-ed25519\n\
                 Match User {PASSWORD_OPERATOR}\n\
                 \x20   PasswordAuthentication yes\n\
                 \x20   PermitRootLogin yes\n",
                host_key = host_key.display(),
                authorized_keys = shared.authorized_keys.display(),
                trusted_user_ca_keys = shared.trusted_user_ca_keys.display(),
                operator_authorized_keys = shared.operator_authorized_keys.display(),
            ),
        )?;

        write_accounts(&dir, "*")?;
        machine_state(&dir)?;
        let sshd = spawn_sshd(name, &etc_dir, &etc_ssh, &dir.join("sshd.log"))?;
        Ok(TestHost {
            name: name.to_owned(),
            address,
            port,
            uuid,
            etc_dir,
            etc_ssh,
            host_public_key,
            sshd: Some(sshd),
            _address_lease: lease,
        })
    }

    /// Stops the host: sshd and every session it started (a machine going down).
    ///
    /// Returns once they are all gone. Reaping `unshare` is not enough: the
    /// kernel kills sshd after that, and sshd's sessions only as sshd exits, so
    /// until then a pooled connection could still be answered.
    pub fn stop(&mut self) {
        if let Some(unshare) = self.sshd.take() {
            stop_namespace(unshare);
        }
    }

    /// Starts a stopped host again, with the same address, port and keys.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let dir = self.etc_dir.parent().expect("host dir").to_owned();
        self.sshd = Some(spawn_sshd(
            &self.name,
            &self.etc_dir,
            &self.etc_ssh,
            &dir.join("sshd.log"),
        )?);
        Ok(())
    }

    /// Makes sshd present `certificate` (an OpenSSH host certificate line for
    /// its ed25519 host key) from now on: written beside the key, named in a
    /// drop-in of its own, sshd restarted.
    pub fn present_host_certificate(&mut self, certificate: &str) -> Result<()> {
        let dir = self.etc_dir.parent().expect("host dir").to_owned();
        let path = dir.join("ssh_host_ed25519_key-cert.pub");
        write(&path, &format!("{}\n", certificate.trim()))?;
        let drop_in = self
            .etc_ssh
            .join("sshd_config.d/testbed-host-certificate.conf");
        write(&drop_in, &format!("HostCertificate {}\n", path.display()))?;
        self.restart()
    }

    /// Lets [`PASSWORD_OPERATOR`] (root by another name) log in to this host
    /// with `password` from now on.
    pub fn set_operator_password(&self, password: &str) -> Result<()> {
        use std::io::Write;
        let mut openssl = Command::new("openssl")
            .args(["passwd", "-6", "-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|source| io_error(Path::new("openssl"), source))?;
        let mut stdin = openssl.stdin.take().expect("stdin is piped");
        writeln!(stdin, "{password}").map_err(|source| io_error(Path::new("openssl"), source))?;
        drop(stdin);
        let hashed = openssl
            .wait_with_output()
            .map_err(|source| io_error(Path::new("openssl"), source))?;
        let hash = String::from_utf8_lossy(&hashed.stdout).trim().to_owned();
        if !hashed.status.success() || !hash.starts_with("$6$") {
            return Err(Error::Command {
                command: "openssl passwd -6 -stdin".into(),
                output: String::from_utf8_lossy(&hashed.stderr).into_owned(),
            });
        }
        write_accounts(self.etc_dir.parent().expect("host dir"), &hash)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The uuid this host is enrolled with (its client_id reads `LINKOPS-<uuid>`).
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// The host's public key, an OpenSSH line (for pinning).
    pub fn host_public_key(&self) -> &str {
        self.host_public_key.trim()
    }

    /// What its sshd has logged so far (at `INFO`: each login accepted, with
    /// a certificate's key id and serial, and each refused).
    pub fn sshd_log(&self) -> Result<String> {
        let dir = self.etc_dir.parent().expect("host dir");
        read(&dir.join("sshd.log"))
    }

    /// Replaces the content of this host's `/etc/linkops/client_id`.
    pub fn set_client_id(&self, content: &str) -> Result<()> {
        write(&self.etc_dir.join("client_id"), content)
    }

    /// This host's `/etc/linkops/client_id`, if it has one.
    pub fn client_id(&self) -> Option<String> {
        fs::read_to_string(self.etc_dir.join("client_id")).ok()
    }

    /// This host's `/etc/ssh`, as seen from outside its namespace.
    /// Sets what the host's package manager says is pending: `(package,
    /// security)` each (none: up to date).
    pub fn set_pending_updates(&self, pending: &[(&str, bool)]) -> Result<()> {
        let list: String = (pending.iter())
            .map(|(package, security)| {
                format!(
                    "{package} {}\n",
                    if *security { "security" } else { "regular" }
                )
            })
            .collect();
        let path = self.dir().join("run/linkops-test/pending");
        write(&path, &list)?;
        set_mode(&path, 0o644)
    }

    /// Raises or clears the host's reboot-required flag (Debian's `/run/reboot-required`).
    pub fn set_reboot_required(&self, required: bool) -> Result<()> {
        let path = self.dir().join("run/reboot-required");
        match required {
            true => write(&path, "*** System restart required ***\n")
                .and_then(|()| set_mode(&path, 0o644)),
            false => match fs::remove_file(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    Err(io_error(&path, error))
                }
                _ => Ok(()),
            },
        }
    }

    /// Makes the host's `shutdown` fail (as a machine whose reboot cannot be
    /// scheduled), or work again.
    pub fn set_shutdown_fails(&self, fails: bool) -> Result<()> {
        let path = self.dir().join("run/linkops-test/shutdown-fails");
        match fails {
            true => write(&path, "").and_then(|()| set_mode(&path, 0o644)),
            false => fs::remove_file(&path).map_err(|source| io_error(&path, source)),
        }
    }

    /// Whether the host's `shutdown -r` ran (its reboot was "scheduled").
    pub fn rebooted(&self) -> bool {
        self.dir().join("run/linkops-test/rebooted").exists()
    }

    /// The host's own directory (beside the fleet's).
    fn dir(&self) -> &Path {
        self.etc_dir.parent().expect("the host's directory")
    }

    pub fn etc_ssh(&self) -> &Path {
        &self.etc_ssh
    }

    /// Removes this host's `/etc/linkops/client_id`.
    pub fn remove_client_id(&self) -> Result<()> {
        let path = self.etc_dir.join("client_id");
        fs::remove_file(&path).map_err(|source| io_error(&path, source))
    }

    pub(super) fn known_hosts_line(&self) -> String {
        known_hosts_line(self.address, self.port, self.host_public_key())
    }
}

/// A known_hosts line for a host key at `address`:`port`.
pub(super) fn known_hosts_line(address: Ipv4Addr, port: u16, host_key: &str) -> String {
    match port {
        22 => format!("{address} {host_key}\n"),
        port => format!("[{address}]:{port} {host_key}\n"),
    }
}

/// The host's own `/etc/passwd` (the machine's, and [`PASSWORD_OPERATOR`]
/// as uid 0) and `/etc/shadow` (no password but the operator's
/// `operator_hash`, `*`: none), in `dir`. Rewritten in place: the host's
/// namespace has them bound, and sees each change.
fn write_accounts(dir: &Path, operator_hash: &str) -> Result<()> {
    let passwd = read(Path::new("/etc/passwd"))?;
    write(
        &dir.join("passwd"),
        &format!("{passwd}{PASSWORD_OPERATOR}:x:0:0:enrolls with a password:/root:/bin/sh\n"),
    )?;
    set_mode(&dir.join("passwd"), 0o644)?;
    let shadow = dir.join("shadow");
    // `*`: no password (and not locked, so keys still log in).
    let line = |user: &str, hash: &str| format!("{user}:{hash}:20000:0:99999:7:::\n");
    write(
        &shadow,
        &format!(
            "{}{}{}",
            line("root", "*"),
            line(TEST_USER, "*"),
            line(PASSWORD_OPERATOR, operator_hash)
        ),
    )?;
    set_mode(&shadow, 0o600)
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test host's `apt-get`: see [`machine_state`].
const APT_GET: &str = r#"#!/bin/sh
case "$*" in
  *-s*upgrade*)
    [ -r /run/linkops-test/pending ] || exit 0
    while read -r package kind; do
      case "$kind" in
        security) echo "Inst $package [1.0-1] (1.0-2 Debian-Security:12/stable-security [amd64])" ;;
        *) echo "Inst $package [1.0-1] (1.0-2 Debian:12.9/stable [amd64])" ;;
      esac
    done < /run/linkops-test/pending
    exit 0 ;;
esac
exec /usr/bin/apt-get "$@"
"#;

/// A test host's `shutdown`: never the real one. It records what it was
/// asked in `/run/linkops-test/rebooted` and says it scheduled it, unless
/// `/run/linkops-test/shutdown-fails` is there.
const SHUTDOWN: &str = r#"#!/bin/sh
if [ -e /run/linkops-test/shutdown-fails ]; then
  echo "shutdown: Failed to set wall message, ignoring: Access denied" >&2
  echo "Failed to call ScheduleShutdown in logind, proceeding with immediate shutdown: Access denied" >&2
  exit 1
fi
echo "$*" >> /run/linkops-test/rebooted
echo "Reboot scheduled for $(date -d '+1 min' 2>/dev/null), use 'shutdown -c' to cancel."
"#;

/// The host's own `/run` (sshd's privilege-separation directory, and what
/// the tests set: `reboot-required`, `linkops-test/pending`) and
/// `/usr/local/bin`, whose `shutdown` is a stand-in ([`SHUTDOWN`]) and whose `apt-get` answers `-s upgrade` from that
/// list as Debian's does (`Inst` lines; a security update from
/// `Debian-Security`) and passes anything else to the real one: the
/// machines share this computer's packages, so what is pending is set per host.
fn machine_state(dir: &Path) -> Result<()> {
    let run = dir.join("run");
    // The test user's `shutdown` writes in linkops-test.
    for (sub, mode) in [("sshd", 0o755), ("linkops-test", 0o1777)] {
        fs::create_dir_all(run.join(sub)).map_err(|source| io_error(&run, source))?;
        set_mode(&run.join(sub), mode)?;
    }
    set_mode(&run, 0o755)?;
    let bin = dir.join("usr-local-bin");
    fs::create_dir_all(&bin).map_err(|source| io_error(&bin, source))?;
    set_mode(&bin, 0o755)?;
    for (name, text) in [("apt-get", APT_GET), ("shutdown", SHUTDOWN)] {
        write(&bin.join(name), text)?;
        set_mode(&bin.join(name), 0o755)?;
    }
    Ok(())
}

/// Kills a server started by [`spawn_in_namespace`] and returns once it and
/// every session it started are gone.
pub(super) fn stop_namespace(mut unshare: Child) {
    // Opened before the kill, so the pid cannot be reused in between.
    let server = namespace_init(&unshare);
    unshare.kill().ok();
    unshare.wait().ok();
    if let Some(server) = server {
        // Readable once the server has exited — as the namespace's init, after
        // every process in it. Bounded, should the kernel not deliver.
        let mut ready = [PollFd::new(&server, PollFlags::IN)];
        let timeout = Timespec {
            tv_sec: STOP_TIMEOUT.as_secs() as _,
            tv_nsec: 0,
        };
        event::poll(&mut ready, Some(&timeout)).ok();
    }
}

/// A pidfd of the server that `unshare` forked as its namespace's init, if it runs.
fn namespace_init(unshare: &Child) -> Option<OwnedFd> {
    let pid = unshare.id();
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    let sshd = children.split_whitespace().next()?.parse().ok()?;
    process::pidfd_open(Pid::from_raw(sshd)?, PidfdFlags::empty()).ok()
}

/// Starts sshd as PID 1 of its own PID and mount namespaces (its own
/// `/proc`), with `etc_dir` over `/etc/linkops`, `etc_ssh` over `/etc/ssh`
/// and the host's accounts ([`write_accounts`]) over `/etc/passwd` and
/// `/etc/shadow`; returns once it listens.
fn spawn_sshd(name: &str, etc_dir: &Path, etc_ssh: &Path, log: &Path) -> Result<Child> {
    let dir = etc_dir.parent().expect("the host's directory");
    let (passwd, shadow) = (dir.join("passwd"), dir.join("shadow"));
    let (run, bin) = (dir.join("run"), dir.join("usr-local-bin"));
    let server = Server {
        name,
        mounts: &[
            (etc_dir, "/etc/linkops"),
            (etc_ssh, "/etc/ssh"),
            (&passwd, "/etc/passwd"),
            (&shadow, "/etc/shadow"),
            (&run, "/run"),
            (&bin, "/usr/local/bin"),
        ],
        command: format!("{SSHD} -D -e -f /etc/ssh/sshd_config"),
        log,
        listening: "Server listening on",
    };
    spawn_in_namespace(&server)
}

/// An SSH server to start in a namespace of its own.
pub(super) struct Server<'a> {
    pub name: &'a str,
    /// Directories bound over mount points inside its namespace.
    pub mounts: &'a [(&'a Path, &'a str)],
    /// Its command line, for `sh -c` (it must log to stderr, in the foreground).
    pub command: String,
    /// Where its log is copied.
    pub log: &'a Path,
    /// What its log says once it listens.
    pub listening: &'a str,
}

/// Starts `server` as PID 1 of its own PID and mount namespaces (its own
/// `/proc`), its directories bound; returns once it listens.
///
/// Killing the returned `unshare` kills the server (`--kill-child`), and
/// with it, as the namespace's init, every session it started — so
/// established connections drop as they would when a machine goes down.
pub(super) fn spawn_in_namespace(server: &Server) -> Result<Child> {
    let mut script = String::new();
    for (index, (_, mount_point)) in server.mounts.iter().enumerate() {
        script.push_str(&format!(
            "mount --bind \"${}\" {mount_point} && ",
            index + 1
        ));
    }
    script.push_str("exec ");
    script.push_str(&server.command);
    let mut child = Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "private",
            "sh",
            "-c",
        ])
        .arg(script)
        .arg("sh")
        .args(server.mounts.iter().map(|(dir, _)| dir))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| io_error(Path::new("unshare"), source))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    if let Err(log) = wait_until_listening(stderr, server.log, server.listening) {
        child.kill().ok();
        child.wait().ok();
        return Err(Error::SshdStart {
            host: server.name.to_owned(),
            log,
        });
    }
    Ok(child)
}

/// Reads a server's log until it says `listening`; then keeps copying it to `log_path`.
fn wait_until_listening(
    stderr: std::process::ChildStderr,
    log_path: &Path,
    listening: &str,
) -> Result<(), String> {
    let wanted = listening.to_owned();
    let (ready_tx, ready_rx) = mpsc::channel();
    let log_path = log_path.to_owned();
    std::thread::spawn(move || {
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .ok();
        let mut seen = String::new();
        let mut ready = Some(ready_tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(file) = log.as_mut() {
                use std::io::Write;
                writeln!(file, "{line}").ok();
            }
            if let Some(tx) = ready.take() {
                if line.contains(&wanted) {
                    tx.send(Ok(())).ok();
                } else {
                    seen.push_str(&line);
                    seen.push('\n');
                    ready = Some(tx);
                }
            }
        }
        // The server exited before it listened.
        if let Some(tx) = ready {
            tx.send(Err(seen)).ok();
        }
    });
    match ready_rx.recv_timeout(START_TIMEOUT) {
        Ok(result) => result,
        Err(_) => Err(format!("no \"{listening}\" within {START_TIMEOUT:?}")),
    }
}

/// Takes an address from 127.0.10.1–127.0.49.254 that no other test process
/// holds. The claim is an abstract Unix socket named for the address: the
/// kernel frees it when the holder exits, however it exits, and it leaves no
/// file behind.
pub(super) fn lease_address() -> Result<(Ipv4Addr, std::os::unix::net::UnixListener)> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    for third in 10..50u8 {
        for fourth in 1..255u8 {
            let address = Ipv4Addr::new(127, 0, third, fourth);
            let name = format!("{CLAIM_PREFIX}address/{address}");
            let claim = SocketAddr::from_abstract_name(&name)
                .map_err(|source| io_error(Path::new(&name), source))?;
            if let Ok(lease) = UnixListener::bind_addr(&claim) {
                return Ok((address, lease));
            }
        }
    }
    Err(Error::NoAddress)
}

/// Port 22 when free on `address` (it is unless a wildcard sshd runs), else any free port.
pub(super) fn free_port(address: Ipv4Addr) -> Result<u16> {
    if TcpListener::bind((address, 22)).is_ok() {
        return Ok(22);
    }
    let listener =
        TcpListener::bind((address, 0)).map_err(|source| io_error(Path::new("bind"), source))?;
    let port = listener
        .local_addr()
        .map_err(|source| io_error(Path::new("bind"), source))?
        .port();
    Ok(port)
}
