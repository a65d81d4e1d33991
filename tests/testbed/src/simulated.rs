//! A simulated fleet, for benchmarks at a scale real `sshd` hosts do not fit
//! on one machine: SSH servers on russh's server side, one per loopback
//! address (127.100.0.1 onwards), each with its own host key and
//! `/etc/linkops/client_id` answer, real key exchange and public-key
//! authentication. Because they are real SSH servers, `parallel-ssh` and
//! Ansible run against the same fleet as the daemon.
//!
//! A benchmark tool, not a test double: the product's tests run against real
//! OpenSSH (`TestFleet`). Hosts are split over worker processes (a host holds
//! a listener and a connection, and a process may open 20,000 files here);
//! a worker is the benchmark's own executable, started with
//! [`WORKER_VARIABLE`] set, which calls [`run_worker_if_asked`] first thing.
//!
//! What a host answers, by the command it is asked to run:
//! - anything containing `cat /etc/linkops/client_id`: its client id;
//! - a script the daemon runs (`echo "$$"; export …; exec sh`, the body on
//!   stdin), line by line: `cat /etc/linkops/client_id`, `echo TEXT`,
//!   `date +%s%N` (the time it ran, in nanoseconds since the epoch),
//!   `yes x | head -c N` (N bytes of "x\n"), `sleep SECONDS`, `exit CODE`,
//!   `touch PATH` and `test -f PATH` (the host remembers the paths touched,
//!   for as long as it runs: a declared state's apply and check); the
//!   script's exit code is its last line's;
//! - `kill …`: nothing, exit 0; anything else: exit 127.
//!
//! Every host answers after its latency; every `slow_every`-th host after
//! ten times that, every `down_every`-th does not listen, and every
//! `rekeyed_every`-th serves another host key than its known_hosts line.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Handle, Msg, Session};
use russh::{Channel, ChannelId};
use sha2::{Digest, Sha256};

/// Set on a worker process: the [`Spec`] of its hosts, as [`Spec::to_env`] writes it.
pub const WORKER_VARIABLE: &str = "LINKOPS_SIMULATED_HOSTS";
/// The client's public key (an OpenSSH line) the hosts accept.
const AUTHORIZED_VARIABLE: &str = "LINKOPS_SIMULATED_AUTHORIZED";
/// The port every simulated host listens on.
pub const PORT: u16 = 2222;
/// What a worker prints once every listener is bound.
const READY: &str = "simulated hosts ready";

/// Hosts `first..first + count` of a simulated fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub first: usize,
    pub count: usize,
    /// Host keys and client ids derive from it and the host's index.
    pub seed: u64,
    pub latency: Duration,
    /// 0: none.
    pub down_every: usize,
    pub slow_every: usize,
    pub rekeyed_every: usize,
}

impl Spec {
    fn to_env(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}:{}:{}",
            self.first,
            self.count,
            self.seed,
            self.latency.as_millis(),
            self.down_every,
            self.slow_every,
            self.rekeyed_every
        )
    }

    fn from_env(text: &str) -> Option<Spec> {
        let fields: Vec<u64> = text
            .split(':')
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let [first, count, seed, latency, down, slow, rekeyed] = fields[..] else {
            return None;
        };
        Some(Spec {
            first: first as usize,
            count: count as usize,
            seed,
            latency: Duration::from_millis(latency),
            down_every: down as usize,
            slow_every: slow as usize,
            rekeyed_every: rekeyed as usize,
        })
    }

    fn every(every: usize, index: usize) -> bool {
        every > 0 && index % every == every - 1
    }

    pub fn is_down(&self, index: usize) -> bool {
        Spec::every(self.down_every, index)
    }

    pub fn is_rekeyed(&self, index: usize) -> bool {
        Spec::every(self.rekeyed_every, index)
    }

    pub fn is_slow(&self, index: usize) -> bool {
        Spec::every(self.slow_every, index)
    }

    fn latency_of(&self, index: usize) -> Duration {
        match self.is_slow(index) {
            true => self.latency * 10,
            false => self.latency,
        }
    }
}

/// The loopback address of host `index`: 127.100.0.1, …, 127.100.0.254, 127.100.1.1, …
pub fn address(index: usize) -> Ipv4Addr {
    let (block, host) = (index / 254, index % 254);
    Ipv4Addr::new(
        127,
        100 + (block / 256) as u8,
        (block % 256) as u8,
        host as u8 + 1,
    )
}

fn derived(seed: u64, index: usize, what: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(seed.to_le_bytes());
    hash.update((index as u64).to_le_bytes());
    hash.update(what.as_bytes());
    hash.finalize().into()
}

/// Host `index`'s own host key.
pub fn host_key(seed: u64, index: usize) -> PrivateKey {
    let pair =
        russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&derived(seed, index, "host key"));
    PrivateKey::from(pair)
}

/// Host `index`'s line in a known_hosts file.
pub fn known_hosts_line(seed: u64, index: usize) -> String {
    let key = host_key(seed, index)
        .public_key()
        .to_openssh()
        .unwrap_or_default();
    format!("[{}]:{PORT} {key}", address(index))
}

/// Host `index`'s enrollment id, as its `/etc/linkops/client_id` would hold it.
pub fn uuid(seed: u64, index: usize) -> uuid::Uuid {
    let bytes = derived(seed, index, "client id");
    uuid::Builder::from_random_bytes(bytes[..16].try_into().expect("16 bytes")).into_uuid()
}

/// Runs this process as a worker and exits, when it was started as one.
pub fn run_worker_if_asked() {
    let Some(spec) = std::env::var(WORKER_VARIABLE)
        .ok()
        .and_then(|v| Spec::from_env(&v))
    else {
        return;
    };
    let authorized = std::env::var(AUTHORIZED_VARIABLE)
        .ok()
        .and_then(|line| PublicKey::from_openssh(&line).ok())
        .expect("a simulated fleet worker needs the client's public key");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let result = runtime.block_on(serve(spec, authorized));
    if let Err(error) = result {
        eprintln!("simulated hosts: {error}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

/// Binds every listening host of `spec`, says so, and serves until killed.
async fn serve(spec: Spec, authorized: PublicKey) -> std::io::Result<()> {
    let authorized = Arc::new(authorized);
    let mut listeners = Vec::new();
    for index in spec.first..spec.first + spec.count {
        if spec.is_down(index) {
            continue;
        }
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind((address(index), PORT).into())?;
        listeners.push((index, socket.listen(64)?));
    }
    println!("{READY}");
    let mut tasks = tokio::task::JoinSet::new();
    for (index, listener) in listeners {
        let key_index = match spec.is_rekeyed(index) {
            true => index + 1_000_000,
            false => index,
        };
        let config = Arc::new(russh::server::Config {
            keys: vec![host_key(spec.seed, key_index)],
            auth_rejection_time: Duration::from_millis(10),
            auth_rejection_time_initial: Some(Duration::ZERO),
            nodelay: true,
            ..Default::default()
        });
        let host = Host {
            client_id: Arc::from(format!("LINKOPS-{}\n", uuid(spec.seed, index))),
            authorized: authorized.clone(),
            latency: spec.latency_of(index),
            channels: HashMap::new(),
            files: Arc::default(),
        };
        tasks.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of files, say: wait rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                stream.set_nodelay(true).ok();
                let (config, host) = (config.clone(), host.clone());
                tokio::spawn(async move {
                    if let Ok(session) = russh::server::run_stream(config, stream, host).await {
                        session.await.ok();
                    }
                });
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// One host's side of a connection.
#[derive(Clone)]
struct Host {
    client_id: Arc<str>,
    authorized: Arc<PublicKey>,
    latency: Duration,
    /// Scripts being received on stdin, by channel: the command, then the body.
    channels: HashMap<ChannelId, Vec<u8>>,
    /// The paths its scripts touched, shared by its connections.
    files: Arc<Mutex<HashSet<String>>>,
}

impl russh::server::Handler for Host {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(
            match key.public_key.key_data() == self.authorized.key_data() {
                true => Auth::Accept,
                false => Auth::reject(),
            },
        )
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let command = String::from_utf8_lossy(data).into_owned();
        if command.starts_with("echo \"$$\"") {
            // A script: its body comes on stdin, and it runs at the EOF.
            self.channels.insert(channel, Vec::new());
            return Ok(());
        }
        let (client_id, latency, handle) = (self.client_id.clone(), self.latency, session.handle());
        tokio::spawn(async move {
            tokio::time::sleep(latency).await;
            let code = if command.contains("cat /etc/linkops/client_id") {
                handle
                    .data(channel, client_id.as_bytes().to_vec())
                    .await
                    .ok();
                0
            } else if command.starts_with("kill ") {
                0
            } else {
                127
            };
            end(&handle, channel, code).await;
        });
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(body) = self.channels.get_mut(&channel) {
            body.extend_from_slice(data);
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(body) = self.channels.remove(&channel) else {
            return Ok(());
        };
        let (client_id, latency, handle) = (self.client_id.clone(), self.latency, session.handle());
        let files = self.files.clone();
        tokio::spawn(async move {
            tokio::time::sleep(latency).await;
            handle.data(channel, b"4242\n".to_vec()).await.ok();
            let script = Script {
                client_id: &client_id,
                files: &files,
                handle: &handle,
                channel,
            };
            let code = script.run(&String::from_utf8_lossy(&body)).await;
            end(&handle, channel, code).await;
        });
        Ok(())
    }
}

/// A script a host runs: what it answers with, and where.
struct Script<'h> {
    client_id: &'h str,
    files: &'h Mutex<HashSet<String>>,
    handle: &'h Handle,
    channel: ChannelId,
}

impl Script<'_> {
    /// Runs `body`'s lines as the module doc says; its exit code (its last line's).
    async fn run(&self, body: &str) -> u32 {
        let mut status = 0;
        for line in body
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            status = 0;
            if line == "cat /etc/linkops/client_id" {
                self.say(self.client_id.as_bytes().to_vec()).await;
            } else if line == "date +%s%N" {
                // The host's clock is this machine's: benchmarks time the exec with it.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                self.say(format!("{}\n", now.as_nanos()).into_bytes()).await;
            } else if let Some(text) = line.strip_prefix("echo ") {
                self.say(format!("{text}\n").into_bytes()).await;
            } else if let Some(count) = line.strip_prefix("yes x | head -c ") {
                let mut left: usize = count.parse().unwrap_or(0);
                while left > 0 {
                    let chunk = left.min(32 << 10);
                    let bytes: Vec<u8> = b"x\n".iter().copied().cycle().take(chunk).collect();
                    if self.handle.data(self.channel, bytes).await.is_err() {
                        return 141;
                    }
                    left -= chunk;
                }
            } else if let Some(seconds) = line.strip_prefix("sleep ") {
                let seconds: f64 = seconds.parse().unwrap_or(0.0);
                tokio::time::sleep(Duration::from_secs_f64(seconds.max(0.0))).await;
            } else if let Some(code) = line.strip_prefix("exit ") {
                return code.parse().unwrap_or(1);
            } else if let Some(path) = line.strip_prefix("touch ") {
                self.files().insert(path.to_owned());
            } else if let Some(path) = line.strip_prefix("test -f ") {
                status = u32::from(!self.files().contains(path));
            } else {
                let said = format!("simulated host: not simulated: {line}\n");
                (self.handle)
                    .extended_data(self.channel, 1, said.into_bytes())
                    .await
                    .ok();
                return 127;
            }
        }
        status
    }

    async fn say(&self, bytes: Vec<u8>) {
        self.handle.data(self.channel, bytes).await.ok();
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn end(handle: &Handle, channel: ChannelId, code: u32) {
    handle.exit_status_request(channel, code).await.ok();
    handle.eof(channel).await.ok();
    handle.close(channel).await.ok();
}

/// Running worker processes serving a simulated fleet; killed on drop.
pub struct SimulatedFleet {
    workers: Vec<Child>,
    pub spec: Spec,
}

impl SimulatedFleet {
    /// Starts `spec.count` hosts from `spec.first`, `per_worker` to a process
    /// of `executable` (the benchmark itself), accepting the public key in
    /// `authorized` (an OpenSSH `.pub` file); returns once every host listens.
    pub fn start(
        executable: &std::path::Path,
        spec: Spec,
        per_worker: usize,
        authorized: &std::path::Path,
    ) -> Result<SimulatedFleet, String> {
        let line = std::fs::read_to_string(authorized)
            .map_err(|e| format!("{}: {e}", authorized.display()))?;
        let line = line.trim();
        PublicKey::from_openssh(line).map_err(|e| format!("{}: {e}", authorized.display()))?;
        let mut fleet = SimulatedFleet {
            workers: Vec::new(),
            spec: spec.clone(),
        };
        let mut first = spec.first;
        while first < spec.first + spec.count {
            let count = per_worker.min(spec.first + spec.count - first);
            let part = Spec {
                first,
                count,
                ..spec.clone()
            };
            let mut child = Command::new(executable)
                .env(WORKER_VARIABLE, part.to_env())
                .env(AUTHORIZED_VARIABLE, line)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("a simulated fleet worker did not start: {e}"))?;
            let stdout = child.stdout.take().expect("piped");
            fleet.workers.push(child);
            let mut said = String::new();
            BufReader::new(stdout)
                .read_line(&mut said)
                .map_err(|e| e.to_string())?;
            if said.trim() != READY {
                return Err(format!(
                    "simulated hosts {first}..{}: {said:?}",
                    first + count
                ));
            }
            first += count;
        }
        Ok(fleet)
    }

    /// The workers' process ids (to measure them apart from the daemon).
    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(Child::id).collect()
    }
}

impl Drop for SimulatedFleet {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            worker.kill().ok();
            worker.wait().ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_have_their_own_address_key_and_id_and_a_spec_survives_the_environment() {
        assert_eq!(address(0), Ipv4Addr::new(127, 100, 0, 1));
        assert_eq!(address(253), Ipv4Addr::new(127, 100, 0, 254));
        assert_eq!(address(254), Ipv4Addr::new(127, 100, 1, 1));
        assert_eq!(address(254 * 256), Ipv4Addr::new(127, 101, 0, 1));
        let addresses: std::collections::HashSet<_> = (0..20_000).map(address).collect();
        assert_eq!(addresses.len(), 20_000);
        assert_ne!(known_hosts_line(1, 0), known_hosts_line(1, 1));
        assert_eq!(uuid(1, 5), uuid(1, 5));
        assert_ne!(uuid(1, 5), uuid(2, 5));
        let spec = Spec {
            first: 10,
            count: 20,
            seed: 7,
            latency: Duration::from_millis(3),
            down_every: 100,
            slow_every: 0,
            rekeyed_every: 50,
        };
        assert_eq!(Spec::from_env(&spec.to_env()), Some(spec.clone()));
        assert!(spec.is_down(99) && !spec.is_down(98));
        assert!(!Spec::every(0, 0));
    }
}
