//! `linkops enroll HOST`: from a bare machine to one the daemon reaches with
//! certificates alone, through the operator's own SSH access, once.
//!
//! The steps, each refused with its reason and leaving the machine as it was:
//! read the host key and have it confirmed (or proved by a host certificate
//! of the daemon's host CA); log in as the operator (an ssh-agent's keys or a
//! key file); read what the machine holds; write what
//! `linkops_reconcilers::trust::plan` says differs — the enrollment id, the
//! user CA, the principals, the revocation list, a host certificate the
//! daemon signs, the sshd drop-in — check it with `sshd -t`, reload sshd and
//! see it present the new host certificate (else put everything back); then
//! propose the machine's inventory entry, printed or committed on a branch
//! for review in Git.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use linkops_reconcilers::desired::{self, LINKS_FILE};
use linkops_reconcilers::enrollment::CLIENT_ID_PATH;
use linkops_reconcilers::trust::{
    self, KEPT_DIR, ManagedFile, NewMachine, PRINCIPALS_DIR, SSHD_DROP_IN_PATH, Trust, USER_CA_PATH,
};

use super::Client;
use crate::config::SshConfig;
use crate::contract::{CaView, HostCertificateRequest, HostCertificateView};
use crate::git::propose;
use crate::ssh::ca::{PublicKey, examine_host_certificate};
use crate::ssh::{self, ConnectOptions, Connection, ExitStatus, KeyFile, KnownHosts, Target};

/// A command on the machine may take this long (`sshd -t` and a reload included).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// What a step may print (the files read are a few KiB).
const STEP_OUTPUT: usize = 1 << 20;
/// sshd re-executes itself on SIGHUP: new connections are refused for a moment.
const RELOAD_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] Box<super::Error>),
    #[error(transparent)]
    Ssh(#[from] ssh::Error),
    #[error("the daemon's CA key {what} is unreadable: {reason}")]
    CaKey { what: &'static str, reason: String },
    #[error(
        "{target} presents host key {presented}, not {expected} as --host-key-fingerprint says: refusing (is it the machine you mean?)"
    )]
    Fingerprint {
        target: String,
        presented: String,
        expected: String,
    },
    #[error(
        "cannot confirm the host key of {target} ({presented}): nothing confirms it and there is no one to ask (stdin is no terminal, or several machines are enrolled at once); check it on the machine (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`) and pass --host-key-fingerprint {presented} (in a list: after the host)"
    )]
    Unconfirmable { target: String, presented: String },
    #[error("the host key of {target} was not confirmed: nothing was sent")]
    NotConfirmed { target: String },
    #[error(
        "no way to log in as the operator: pass --identity KEY_FILE, --password (typed once, never stored) or run an ssh-agent (SSH_AUTH_SOCK) holding a key {login}@{host} accepts"
    )]
    NoCredential { login: String, host: String },
    #[error("{machine}: {step}: {reason}")]
    Step {
        machine: String,
        step: &'static str,
        reason: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Propose(#[from] crate::git::propose::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<super::Error> for Error {
    fn from(error: super::Error) -> Error {
        Error::Api(Box::new(error))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the machine's inventory entry goes.
#[derive(Debug, Clone)]
pub enum Proposal {
    /// Printed, for the operator to place.
    Print,
    /// Committed on the branch `enroll/<id>` of the checkout at `repo` (and pushed to `origin`).
    Branch { repo: PathBuf, push: bool },
}

/// What `linkops enroll` was asked.
#[derive(Debug, Clone)]
pub struct EnrollArgs {
    pub host: String,
    pub port: u16,
    /// The machine's id; from the host name when absent.
    pub id: Option<String>,
    pub tags: Vec<String>,
    /// The login the daemon will use.
    pub user: String,
    /// The operator's own login, which enrolls (root: it writes /etc/ssh).
    pub login: String,
    /// The operator's key file; the ssh-agent's keys when absent.
    pub identity: Option<PathBuf>,
    /// The operator's password, typed once for every machine enrolled (never
    /// stored, never shown); instead of a key.
    pub password: Option<secrecy::SecretString>,
    /// The host key's `SHA256:…`, confirmed beforehand (unattended use).
    pub host_key_fingerprint: Option<String>,
    /// Whether a host key nothing else confirms is shown for the operator to
    /// confirm (when stdin is a terminal; never when enrolling several at once).
    pub ask: bool,
    pub proposal: Proposal,
}

/// `linkops enroll HOST`: the machine enrolled, each step printed as it is
/// done, then its entry proposed; returns 0.
pub async fn enroll(client: &Client, args: &EnrollArgs) -> Result<i32> {
    let enrolled = enroll_machine(client, args, &Reporter::alone()).await?;
    propose(&args.proposal, &[enrolled.entry], &Reporter::alone())?;
    Ok(0)
}

/// One machine enrolled: its proposed entry, and whether anything changed on it.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub entry: NewMachine,
    pub changed: bool,
}

/// Says what each step did, prefixed with the machine when several are enrolled at once.
pub struct Reporter {
    prefix: String,
}

impl Reporter {
    /// For one machine: `• step`.
    pub fn alone() -> Reporter {
        Reporter {
            prefix: "•".to_owned(),
        }
    }

    /// For one of several: `[host] step`.
    pub fn for_machine(host: &str) -> Reporter {
        Reporter {
            prefix: format!("[{host}]"),
        }
    }

    fn step(&self, what: &str) {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{} {what}", self.prefix).ok();
        stdout.flush().ok();
    }
}

/// Enrolls the machine `args` names, saying each step to `report`.
pub async fn enroll_machine(
    client: &Client,
    args: &EnrollArgs,
    report: &Reporter,
) -> Result<Enrolled> {
    let id = match &args.id {
        Some(id) => id.clone(),
        None => id_from_host(&args.host)?,
    };
    if !desired::is_id(&id) {
        return Err(Error::Usage(format!(
            "{id:?} is no machine id (lowercase letters, digits, '.', '_', '-'): pass --id"
        )));
    }
    // It names a file on the machine (its principals) and goes into sshd's certificates.
    if !is_login_name(&args.user) {
        return Err(Error::Usage(format!(
            "{:?} is no login name (a lowercase letter or '_', then letters, digits, '_', '-'; at most 32)",
            args.user
        )));
    }
    let ca: CaView = client.get("/api/ca").await?;
    let user_ca = parse_key(&ca.user_ca, "user CA")?;
    let host_ca = parse_key(&ca.host_ca, "host CA")?;
    let known_hosts = operator_known_hosts();
    let options = ConnectOptions::new(
        &SshConfig::default(),
        known_hosts.clone(),
        Default::default(),
    )
    .with_host_ca(host_ca.clone());
    let target_name = format!("{}:{}", args.host, args.port);

    // 1. The host key, confirmed before anything is sent.
    let presented = ssh::scan_host_key(&args.host, args.port, &options).await?;
    let how = confirm_host_key(args, &presented, &host_ca, &known_hosts, &target_name)?;
    report.step(&format!("host key {} ({how})", presented.fingerprint()));

    // 2. The operator's login.
    let target = Target {
        pinned_host_key: Some(presented.key.to_openssh().unwrap_or_default()),
        ..Target::new(
            args.host.clone(),
            args.port,
            args.login.clone(),
            KeyFile::at(args.identity.as_deref().unwrap_or(Path::new(""))),
        )
    };
    let connection = operator_login(&target, &options, args).await?;
    let machine = Machine {
        id: &id,
        connection: &connection,
    };

    // 3. What it holds.
    let host_keys = machine.host_keys().await?;
    let host_key_path = host_keys
        .iter()
        .find(|(_, key)| key.key_data() == presented.key.key_data())
        .map(|(path, _)| path.clone())
        .ok_or_else(|| {
            machine.refused(
                "finding its host key",
                format!(
                    "sshd presents {} but none of its HostKey files ({}) holds it",
                    presented.fingerprint(),
                    host_keys
                        .iter()
                        .map(|(path, _)| path.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
    let certificate_path = format!("{host_key_path}-cert.pub");
    let principals = format!("{PRINCIPALS_DIR}/{}", args.user);
    let paths = [
        CLIENT_ID_PATH,
        USER_CA_PATH,
        principals.as_str(),
        trust::REVOKED_KEYS_PATH,
        trust::REVOKED_SERIALS_PATH,
        SSHD_DROP_IN_PATH,
        certificate_path.as_str(),
    ];
    let observed = machine.read_files(&paths).await?;

    // 4. What to change.
    let uuid = trust::enrollment_uuid(
        observed.get(CLIENT_ID_PATH).map(String::as_str),
        &uuid::Uuid::new_v4().to_string(),
    );
    let wanted = trust::files(&Trust {
        user_cas: vec![user_ca.to_openssh().unwrap_or_default()],
        login: args.user.clone(),
        uuid: uuid.clone(),
        host_certificate_path: certificate_path.clone(),
    });
    let mut plan = trust::plan(wanted, &observed);
    let names = vec![args.host.clone()];
    let found = observed
        .get(&certificate_path)
        .and_then(|text| examine_host_certificate(text, &host_ca, &presented.key));
    let now = unix_now();
    if !trust::host_certificate_current(found.as_ref(), &names, now) {
        let request = HostCertificateRequest {
            machine: id.clone(),
            names: names.clone(),
            host_key: presented.key.to_openssh().unwrap_or_default(),
        };
        let issued: HostCertificateView =
            client.post("/api/ca/host-certificates", &request).await?;
        report.step(&format!(
            "host certificate serial {} for {} until {}",
            issued.serial,
            issued.principals.join(", "),
            issued.valid_before
        ));
        plan.writes.push(ManagedFile {
            path: certificate_path.clone(),
            content: format!("{}\n", issued.certificate.trim()),
            only_if_absent: false,
            owned_by_login: false,
        });
        plan.reload_sshd = true;
    }

    // 5. Written, checked, reloaded — or put back.
    let changed = !plan.is_empty();
    if !changed {
        report.step(&format!("{id} is enrolled already: nothing changed on it"));
    } else {
        let written = machine.write(&plan, &args.user).await?;
        let paths: Vec<&str> = plan.writes.iter().map(|file| file.path.as_str()).collect();
        report.step(&format!("wrote {}", paths.join(", ")));
        if plan.reload_sshd {
            let proved = presents_its_certificate(&args.host, args.port, &options, args).await;
            if let Err(reason) = proved {
                machine.restore(&written).await?;
                return Err(machine.refused(
                    "reloading sshd",
                    format!("{reason}; what enrolling wrote was put back and sshd reloaded"),
                ));
            }
            report.step("sshd reloaded: it presents its host certificate and trusts the user CA");
        }
        machine.forget(&written).await?;
    }

    let mut tags = args.tags.clone();
    if !tags.iter().any(|tag| tag == trust::TRUST_TAG) {
        tags.push(trust::TRUST_TAG.to_owned());
    }
    let entry = NewMachine {
        id,
        host: args.host.clone(),
        port: args.port,
        user: args.user.clone(),
        uuid,
        tags,
    };
    Ok(Enrolled { entry, changed })
}

/// One line of `linkops enroll --from FILE`: `HOST[:PORT] [ID] [SHA256:…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedMachine {
    pub host: String,
    pub port: Option<u16>,
    pub id: Option<String>,
    pub fingerprint: Option<String>,
}

/// The machines of an enrollment list: one per line, blank lines and `#`
/// comments skipped; a line that says more is refused naming it.
pub fn parse_list(text: &str) -> Result<Vec<ListedMachine>> {
    let mut listed = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let refused = || {
            Error::Usage(format!(
                "line {}: {line:?}: write HOST[:PORT] [ID] [SHA256:fingerprint]",
                number + 1
            ))
        };
        let mut words = line.split_whitespace();
        let (host, port) = host_and_port(words.next().unwrap_or_default()).ok_or_else(refused)?;
        let (mut id, mut fingerprint) = (None, None);
        for word in words {
            match word.starts_with("SHA256:") {
                true if fingerprint.is_none() => fingerprint = Some(word.to_owned()),
                false if id.is_none() && fingerprint.is_none() => id = Some(word.to_owned()),
                _ => return Err(refused()),
            }
        }
        listed.push(ListedMachine {
            host,
            port,
            id,
            fingerprint,
        });
    }
    Ok(listed)
}

/// `host`, `host:port` or `[v6 address]:port`.
fn host_and_port(word: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = word.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return Some((host.to_owned(), Some(port.parse().ok()?)));
    }
    match word.split_once(':') {
        // A bare IPv6 address has several colons: no port.
        Some((host, port)) if !port.contains(':') => {
            Some((host.to_owned(), Some(port.parse().ok()?)))
        }
        _ => Some((word.to_owned(), None)),
    }
}

/// `linkops enroll --from FILE`: each listed machine enrolled as `template`
/// says (its host, id and fingerprint from the list), `concurrency` at once,
/// a line per machine as it ends, then a summary; the entries of those
/// enrolled proposed together. Exit code 1 when any failed.
pub async fn enroll_many(
    client: &Client,
    listed: &[ListedMachine],
    template: &EnrollArgs,
    concurrency: usize,
) -> Result<i32> {
    use futures::StreamExt;
    let total = listed.len();
    let runs = futures::stream::iter(listed.iter().cloned().map(|machine| {
        let args = EnrollArgs {
            host: machine.host.clone(),
            port: machine.port.unwrap_or(template.port),
            id: machine.id.clone(),
            host_key_fingerprint: machine.fingerprint.clone(),
            ask: false,
            ..template.clone()
        };
        async move {
            let report = Reporter::for_machine(&machine.host);
            (machine.host, enroll_machine(client, &args, &report).await)
        }
    }))
    .buffer_unordered(concurrency.max(1));
    futures::pin_mut!(runs);
    let (mut entries, mut unchanged, mut failed) = (Vec::new(), 0, Vec::new());
    let mut done = 0;
    while let Some((host, result)) = runs.next().await {
        done += 1;
        match result {
            Ok(enrolled) => {
                println!("[{done}/{total}] {host}: enrolled as {}", enrolled.entry.id);
                unchanged += usize::from(!enrolled.changed);
                entries.push(enrolled.entry);
            }
            Err(error) => {
                println!("[{done}/{total}] {host}: FAILED: {error}");
                failed.push((host, error));
            }
        }
    }
    println!(
        "{} enrolled ({unchanged} of them already were), {} failed",
        entries.len(),
        failed.len()
    );
    for (host, error) in &failed {
        println!("  {host}: {error}");
    }
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    if !entries.is_empty() {
        propose(&template.proposal, &entries, &Reporter::alone())?;
    }
    Ok(i32::from(!failed.is_empty()))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn parse_key(line: &str, what: &'static str) -> Result<PublicKey> {
    PublicKey::from_openssh(line.trim()).map_err(|error| Error::CaKey {
        what,
        reason: error.to_string(),
    })
}

/// A machine id from a host name: its first label, lowercased
/// (`web-1.lan` → `web-1`); an address as it is (`10.0.1.5`).
fn id_from_host(host: &str) -> Result<String> {
    let is_address = host.parse::<std::net::IpAddr>().is_ok();
    let id = match is_address {
        true => host.replace(':', "-"),
        false => host.split('.').next().unwrap_or(host).to_lowercase(),
    };
    match desired::is_id(&id) {
        true => Ok(id),
        false => Err(Error::Usage(format!(
            "cannot make a machine id of {host:?}: pass --id"
        ))),
    }
}

/// A POSIX-portable login name, as `useradd` takes by default.
fn is_login_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 32
        && chars
            .next()
            .is_some_and(|first| first.is_ascii_lowercase() || first == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

/// The operator's own known_hosts (`~/.ssh/known_hosts`).
fn operator_known_hosts() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".ssh/known_hosts")
}

/// How the presented host key is trusted, or why it is not.
fn confirm_host_key(
    args: &EnrollArgs,
    presented: &ssh::Presented,
    host_ca: &PublicKey,
    known_hosts: &Path,
    target: &str,
) -> Result<&'static str> {
    let fingerprint = presented.fingerprint();
    if let Some(expected) = &args.host_key_fingerprint {
        return match expected.trim() == fingerprint {
            true => Ok("as --host-key-fingerprint says"),
            false => Err(Error::Fingerprint {
                target: target.to_owned(),
                presented: fingerprint,
                expected: expected.clone(),
            }),
        };
    }
    if presented.certified(host_ca, &args.host).is_ok() {
        return Ok("proved by its host certificate of the daemon's host CA");
    }
    let known = KnownHosts::new(known_hosts.to_owned())
        .keys(&args.host, args.port)
        .unwrap_or_default();
    if known
        .iter()
        .any(|(_, key)| key.key_data() == presented.key.key_data())
    {
        return Ok("in your known_hosts");
    }
    if !args.ask || !std::io::stdin().is_terminal() {
        return Err(Error::Unconfirmable {
            target: target.to_owned(),
            presented: fingerprint,
        });
    }
    eprint!(
        "{target} presents host key {fingerprint} ({}).\nIs it the machine you mean (compare with `ssh-keygen -lf` on its console)? [y/N] ",
        presented.key.algorithm()
    );
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).ok();
    match answer.trim().to_lowercase().as_str() {
        "y" | "yes" => Ok("confirmed by you"),
        _ => Err(Error::NotConfirmed {
            target: target.to_owned(),
        }),
    }
}

/// Logs in as the operator: with the key file, else the password typed,
/// else the ssh-agent's keys.
async fn operator_login(
    target: &Target,
    options: &ConnectOptions,
    args: &EnrollArgs,
) -> Result<Connection> {
    if args.identity.is_some() {
        return Ok(Connection::open(target, options).await?);
    }
    if let Some(password) = &args.password {
        return Ok(Connection::open_with_password(target, options, password).await?);
    }
    match std::env::var_os("SSH_AUTH_SOCK") {
        Some(socket) => Ok(Connection::open_with_agent(target, options, Path::new(&socket)).await?),
        None => Err(Error::NoCredential {
            login: args.login.clone(),
            host: args.host.clone(),
        }),
    }
}

/// After a reload: a new connection, trusting nothing but the daemon's host
/// CA, gets in — sshd reads the new configuration and presents its
/// certificate. Tried until [`RELOAD_WAIT`] (sshd re-executes itself).
async fn presents_its_certificate(
    host: &str,
    port: u16,
    options: &ConnectOptions,
    args: &EnrollArgs,
) -> Result<(), String> {
    let target = Target::new(
        host.to_owned(),
        port,
        args.login.clone(),
        KeyFile::at(args.identity.as_deref().unwrap_or(Path::new(""))),
    );
    let options = ConnectOptions {
        known_hosts: std::sync::Arc::new(KnownHosts::new(PathBuf::from("/dev/null"))),
        ..options.clone()
    };
    let deadline = tokio::time::Instant::now() + RELOAD_WAIT;
    let mut pause = Duration::from_millis(50);
    loop {
        let error = match operator_login(&target, &options, args).await {
            Ok(connection) => {
                connection.disconnect().await;
                return Ok(());
            }
            Err(error) => error,
        };
        if tokio::time::Instant::now() + pause > deadline {
            return Err(format!(
                "after the reload, sshd did not let a connection in within {RELOAD_WAIT:?} proving itself by its new host certificate: {error}"
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// The operator's session on the machine being enrolled.
struct Machine<'a> {
    id: &'a str,
    connection: &'a Connection,
}

/// Where a write put what it replaced, and which directories it made.
struct Written {
    backup: String,
    made: String,
    paths: Vec<String>,
}

/// Walks up from the shell to the sshd that listens (the last `sshd` among
/// its ancestors: a session's own processes are `sshd-session`, or `sshd`
/// below the listener on older OpenSSH) — what `systemctl reload ssh` signals.
const FIND_LISTENER: &str = r#"listener=
pid=$(awk '{print $4}' /proc/self/stat)
while [ "${pid:-0}" -ge 1 ] 2>/dev/null; do
  [ "$(cat /proc/$pid/comm 2>/dev/null)" = sshd ] && listener=$pid
  pid=$(awk '{print $4}' /proc/$pid/stat 2>/dev/null)
done
"#;

impl Machine<'_> {
    fn refused(&self, step: &'static str, reason: String) -> Error {
        Error::Step {
            machine: self.id.to_owned(),
            step,
            reason,
        }
    }

    /// Runs `script` with `sh` as root; its standard output, or the refusal.
    async fn run(&self, step: &'static str, script: &str) -> Result<String> {
        let script = format!(
            "set -u\nif [ \"$(id -u)\" != 0 ]; then echo 'enrolling writes /etc/ssh and reloads sshd: log in as root (--login root)' >&2; exit 10; fi\n{script}"
        );
        let execution = self
            .connection
            .exec("sh -s", script.as_bytes(), STEP_TIMEOUT)
            .await?;
        let output = execution.collect(STEP_OUTPUT).await?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        match output.status {
            ExitStatus::Code(0) => Ok(stdout),
            status => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                Err(self.refused(step, format!("{} ({status:?})", stderr.trim())))
            }
        }
    }

    /// sshd's host keys: each `HostKey` path with its public key.
    async fn host_keys(&self) -> Result<Vec<(String, PublicKey)>> {
        let script = r#"sshd=$(command -v sshd || echo /usr/sbin/sshd)
"$sshd" -T | while read -r key value; do
  [ "$key" = hostkey ] && [ -f "$value.pub" ] && printf '%s\t%s\n' "$value" "$(cat "$value.pub")"
done
true
"#;
        let listed = self
            .run("reading sshd's host keys (`sshd -T`)", script)
            .await?;
        Ok(listed
            .lines()
            .filter_map(|line| {
                let (path, key) = line.split_once('\t')?;
                Some((path.to_owned(), PublicKey::from_openssh(key.trim()).ok()?))
            })
            .collect())
    }

    /// The content of each of `paths` that exists.
    async fn read_files(&self, paths: &[&str]) -> Result<BTreeMap<String, String>> {
        let quoted: Vec<String> = paths.iter().map(|path| quote(path)).collect();
        let script = format!(
            "for f in {}; do [ -f \"$f\" ] && printf '%s\\t%s\\n' \"$f\" \"$(base64 -w0 < \"$f\")\"; done; true\n",
            quoted.join(" ")
        );
        let listed = self.run("reading what it holds", &script).await?;
        let mut files = BTreeMap::new();
        for line in listed.lines() {
            let Some((path, encoded)) = line.split_once('\t') else {
                continue;
            };
            let content = BASE64.decode(encoded.trim()).map_err(|error| {
                self.refused("reading what it holds", format!("{path}: {error}"))
            })?;
            files.insert(
                path.to_owned(),
                String::from_utf8_lossy(&content).into_owned(),
            );
        }
        Ok(files)
    }

    /// Writes the plan's files (what they replace kept aside), then, when sshd
    /// must reload: `sshd -t`, a check that sshd reads the drop-in first, and
    /// SIGHUP to the listener. Any refusal puts everything back.
    async fn write(&self, plan: &trust::Plan, login: &str) -> Result<Written> {
        let mut script = String::from("set -e\numask 022\nmade=\n");
        script.push_str(&format!(
            "for d in {TRUST_DIRS}; do [ -d \"$d\" ] || made=\"$d $made\"; done\nmkdir -p {TRUST_DIRS}\nchown {} {KEPT_DIR}\nbackup=$(mktemp -d /etc/ssh/linkops/.enroll-XXXXXX)\n",
            quote(login)
        ));
        let paths: Vec<String> = plan.writes.iter().map(|file| file.path.clone()).collect();
        script.push_str(&restore_function(&paths));
        for (index, file) in plan.writes.iter().enumerate() {
            let path = quote(&file.path);
            script.push_str(&format!(
                "if [ -e {path} ]; then cp -p {path} \"$backup/{index}\"; fi\nprintf '%s' '{}' | base64 -d > {path}.linkops-new\nchmod 644 {path}.linkops-new\nmv -f {path}.linkops-new {path}\n",
                BASE64.encode(file.content.as_bytes())
            ));
            if file.owned_by_login {
                script.push_str(&format!("chown {} {path}\n", quote(login)));
            }
        }
        if plan.reload_sshd {
            script.push_str("set +e\nsshd=$(command -v sshd || echo /usr/sbin/sshd)\n");
            script.push_str(
                "if ! checked=$(\"$sshd\" -t 2>&1); then restore; echo \"sshd -t refuses the configuration: $checked\" >&2; exit 20; fi\n",
            );
            script.push_str(&format!(
                "if ! \"$sshd\" -T 2>/dev/null | grep -qx 'trustedusercakeys {USER_CA_PATH}'; then restore; echo 'sshd does not take TrustedUserCAKeys from {SSHD_DROP_IN_PATH}: its sshd_config must Include /etc/ssh/sshd_config.d/*.conf before setting TrustedUserCAKeys itself' >&2; exit 21; fi\n"
            ));
            script.push_str(FIND_LISTENER);
            script.push_str(
                "if [ -z \"$listener\" ]; then restore; echo 'no listening sshd among this session'\\''s ancestors to reload' >&2; exit 22; fi\nkill -HUP \"$listener\"\n",
            );
        }
        script.push_str("printf '%s\\n%s\\n' \"$backup\" \"$made\"\n");
        let printed = self.run("writing the trust", &script).await?;
        let mut lines = printed.lines();
        Ok(Written {
            backup: lines.next().unwrap_or_default().trim().to_owned(),
            made: lines.next().unwrap_or_default().trim().to_owned(),
            paths,
        })
    }

    /// Puts back what a write replaced and reloads sshd.
    async fn restore(&self, written: &Written) -> Result<()> {
        let mut script = format!(
            "backup={}\nmade={}\n",
            quote(&written.backup),
            quote(&written.made)
        );
        script.push_str(&restore_function(&written.paths));
        script.push_str("restore\n");
        script.push_str(FIND_LISTENER);
        script.push_str("if [ -n \"$listener\" ]; then kill -HUP \"$listener\"; fi\n");
        self.run("putting back what enrolling wrote", &script)
            .await
            .map(drop)
    }

    /// Drops what a successful write kept aside.
    async fn forget(&self, written: &Written) -> Result<()> {
        let script = format!("rm -rf {}\n", quote(&written.backup));
        self.run("removing the backup", &script).await.map(drop)
    }
}

/// The directories the trust lives in, parents first.
const TRUST_DIRS: &str = "/etc/linkops /etc/ssh/sshd_config.d /etc/ssh/linkops /etc/ssh/linkops/principals /etc/ssh/linkops/kept";

/// A shell function `restore` putting `paths` back from `$backup` (a file
/// that was not there is removed), then removing the backup and the
/// directories the write made (`$made`, deepest first).
fn restore_function(paths: &[String]) -> String {
    let mut function = String::from("restore() {\n");
    for (index, path) in paths.iter().enumerate() {
        let path = quote(path);
        function.push_str(&format!(
            "  if [ -e \"$backup/{index}\" ]; then cp -p \"$backup/{index}\" {path}; else rm -f {path}; fi\n"
        ));
    }
    function.push_str(
        "  rm -rf \"$backup\"\n  for d in $made; do rmdir \"$d\" 2>/dev/null; done\n  true\n}\n",
    );
    function
}

fn quote(text: &str) -> String {
    shlex::try_quote(text)
        .map(|quoted| quoted.into_owned())
        .unwrap_or_else(|_| "''".to_owned())
}

/// Proposes `machines`' entries as `proposal` says.
fn propose(proposal: &Proposal, machines: &[NewMachine], report: &Reporter) -> Result<()> {
    match proposal {
        Proposal::Print => {
            report.step(&format!("add to {LINKS_FILE}:"));
            let entries: String = machines
                .iter()
                .map(|machine| trust::inventory_entry(machine, "  "))
                .collect();
            print!("{entries}");
            Ok(())
        }
        Proposal::Branch { repo, push } => commit_entries(repo, machines, *push, report),
    }
}

/// Commits the machines' entries on a branch (`enroll/<id>`, or
/// `enroll/<first id>-and-<n>-more`) of the checkout at `repo` (its own branch
/// checked out again after), validated as the daemon would; pushes it to
/// `origin` when asked. Machines already there (same uuid) are skipped.
fn commit_entries(
    repo: &Path,
    machines: &[NewMachine],
    push: bool,
    report: &Reporter,
) -> Result<()> {
    let links_path = repo.join(LINKS_FILE);
    let mut links = std::fs::read_to_string(&links_path).map_err(|source| Error::Io {
        path: links_path.clone(),
        source,
    })?;
    let files = crate::git::read_dir(repo).map_err(|error| Error::Usage(error.to_string()))?;
    let current = desired::load("(checkout)", &files).ok();
    let mut added = Vec::new();
    for machine in machines {
        match current
            .as_ref()
            .and_then(|state| state.machine(&machine.id))
        {
            Some(existing) if existing.uuid == machine.uuid => {
                report.step(&format!(
                    "{} is in {LINKS_FILE} already: nothing to propose",
                    machine.id
                ));
            }
            Some(existing) => {
                return Err(Error::Usage(format!(
                    "{LINKS_FILE} has a machine {} with uuid {}, but the machine holds {}: another machine under that id? pass another --id",
                    machine.id, existing.uuid, machine.uuid
                )));
            }
            None => {
                links = trust::append_entry(&links, machine).ok_or_else(|| {
                    Error::Usage(format!(
                        "{LINKS_FILE} does not end with its machines: list; add this entry yourself:\n{}",
                        trust::inventory_entry(machine, "  ")
                    ))
                })?;
                added.push(machine.id.as_str());
            }
        }
    }
    let Some(first) = added.first() else {
        return Ok(());
    };
    let mut checked = files;
    checked.insert(LINKS_FILE.to_owned(), links.clone().into_bytes());
    if let Err(problems) = desired::load("(proposed)", &checked) {
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(Error::Usage(format!(
            "the entries would make the checkout invalid:\n{}",
            problems.join("\n")
        )));
    }
    let branch = match added.len() {
        1 => format!("enroll/{first}"),
        n => format!("enroll/{first}-and-{}-more", n - 1),
    };
    let message = format!("Enroll {}", added.join(", "));
    let proposal = propose::Proposal {
        branch: &branch,
        files: &[(LINKS_FILE, links)],
        message: &message,
        replaces: false,
    };
    propose::commit(repo, &proposal)?;
    report.step(&format!(
        "{} committed on branch {branch} of {}",
        match added.len() {
            1 => "entry".to_owned(),
            n => format!("{n} entries"),
        },
        repo.display()
    ));
    if push {
        propose::push(repo, &branch, false)?;
        report.step(&format!(
            "pushed {branch} to origin: open a pull request to merge it"
        ));
    } else {
        report.step(&format!(
            "push it (`git push -u origin {branch}`) and open a pull request"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enrollment_list_names_a_host_per_line_with_its_id_and_fingerprint() {
        let text = "# the new rack\nweb-7.lan\n10.0.1.8:2222 web-8\n10.0.1.9 web-9 SHA256:abc  # checked\n\n[fd00::a]:22 SHA256:def\nfd00::b\n";
        let listed = parse_list(text).unwrap();
        let line = |host: &str, port, id: Option<&str>, fingerprint: Option<&str>| ListedMachine {
            host: host.into(),
            port,
            id: id.map(Into::into),
            fingerprint: fingerprint.map(Into::into),
        };
        assert_eq!(
            listed,
            [
                line("web-7.lan", None, None, None),
                line("10.0.1.8", Some(2222), Some("web-8"), None),
                line("10.0.1.9", None, Some("web-9"), Some("SHA256:abc")),
                line("fd00::a", Some(22), None, Some("SHA256:def")),
                line("fd00::b", None, None, None),
            ]
        );
        for bad in ["a b c\n", "host:notaport\n"] {
            let refused = parse_list(bad).unwrap_err().to_string();
            assert!(refused.contains("line 1"), "{refused}");
        }
    }

    #[test]
    fn the_daemon_s_login_must_be_a_plain_login_name() {
        for good in ["root", "linkops-test", "_svc", "ops2"] {
            assert!(is_login_name(good), "{good}");
        }
        for bad in ["", "Root", "../etc", "a b", "2ops", &"a".repeat(33)] {
            assert!(!is_login_name(bad), "{bad}");
        }
    }

    #[test]
    fn an_id_is_made_of_a_host_name_s_first_label_or_an_address() {
        assert_eq!(id_from_host("Web-1.lan").unwrap(), "web-1");
        assert_eq!(id_from_host("10.0.1.5").unwrap(), "10.0.1.5");
        assert!(id_from_host("_bad").is_err());
    }
}
