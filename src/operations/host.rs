//! One machine's part in an operation: run, stream, stop, time out.

use std::sync::Arc;
use std::time::Duration;

use linkops_reconcilers::certificate::Purpose;
use linkops_reconcilers::machine::Machine;
use linkops_reconcilers::operation::{HostState, Stream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use std::collections::BTreeMap;

use linkops_reconcilers::secret::Secret;
use zeroize::Zeroizing;

use super::command::{secret_input, signal_group};
use super::writer::Update;
use crate::access::MachineAccess;
use crate::sealed::mask::{Mask, Masker};
use crate::sealed::{self, Keyring};
use crate::ssh::{Connection, ExitStatus, OutputEvent};

/// Between SIGTERM and SIGKILL when a script is stopped or times out.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest wait for one signal to be delivered (a channel opened, `kill` run).
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(2);
/// After a timeout or a stop, the host's part ends by this much later, confirmed or not:
/// SIGTERM, the grace, SIGKILL, and its delivery.
pub const GIVE_UP_AFTER: Duration =
    Duration::from_secs(STOP_GRACE.as_secs() + 2 * SIGNAL_TIMEOUT.as_secs() + 1);

pub struct HostRun {
    pub access: MachineAccess,
    pub machine: Machine,
    /// What a new connection's certificate names.
    pub purpose: Purpose,
    pub command: Arc<str>,
    pub body: Arc<str>,
    /// What its `secret` parameters name, opened only once the host runs.
    pub secrets: Secrets,
    pub timeout: Duration,
    /// Output kept per stream.
    pub output_cap: u64,
    pub updates: mpsc::Sender<Update>,
    pub stop: CancellationToken,
}

/// The secrets a script is given, by parameter name, sealed until a host runs.
#[derive(Clone)]
pub struct Secrets {
    pub keyring: Arc<Keyring>,
    pub sealed: Arc<BTreeMap<String, Secret>>,
}

/// Secrets opened for one host: what the shell reads ahead of the script,
/// and the mask of their values. Both wiped when dropped.
struct Opened {
    input: Zeroizing<Vec<u8>>,
    mask: Arc<Mask>,
}

impl Secrets {
    fn open(&self) -> Result<Opened, sealed::Error> {
        let values = (self.sealed.values())
            .map(|secret| self.keyring.open(secret))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Opened {
            input: secret_input(values.iter().map(|value| &value[..])),
            mask: Arc::new(Mask::of(values.iter().map(|value| &value[..]))),
        })
    }
}

/// How the script ended, before it is a [`HostState`].
enum End {
    Exited(ExitStatus),
    /// `unconfirmed`: the machine never confirmed the end; the wait was given up.
    TimedOut {
        unconfirmed: bool,
    },
    Stopped {
        unconfirmed: bool,
    },
}

impl HostRun {
    /// Runs the script; returns the host's final state (also sent to the writer).
    pub async fn run(self) -> HostState {
        self.send_state(HostState::Running).await;
        let opened = match self.secrets.open() {
            Ok(opened) => opened,
            Err(error) => {
                tracing::warn!(machine = %self.machine.id, %error, "the script's secrets cannot be opened");
                let state = HostState::Failed {
                    exit_code: None,
                    signal: None,
                    error: Some(error.to_string()),
                };
                self.send_state(state.clone()).await;
                return state;
            }
        };
        let state = match self.execute(opened).await {
            Ok(End::Exited(ExitStatus::Code(0))) => HostState::Succeeded,
            Ok(End::Exited(ExitStatus::Code(code))) => HostState::Failed {
                exit_code: Some(code),
                signal: None,
                error: None,
            },
            Ok(End::Exited(ExitStatus::Signal { name, .. })) => HostState::Failed {
                exit_code: None,
                signal: Some(name),
                error: None,
            },
            Ok(End::Exited(ExitStatus::Unknown)) => HostState::Failed {
                exit_code: None,
                signal: None,
                error: Some(
                    "the session closed without an exit status (did the machine go down?)".into(),
                ),
            },
            Ok(End::TimedOut { unconfirmed }) => HostState::Timeout { unconfirmed },
            Ok(End::Stopped { unconfirmed }) => HostState::Stopped { unconfirmed },
            Err(error) => {
                self.access
                    .pool
                    .forget(&self.access.target(&self.machine))
                    .await;
                HostState::Failed {
                    exit_code: None,
                    signal: None,
                    error: Some(error.to_string()),
                }
            }
        };
        self.send_state(state.clone()).await;
        state
    }

    async fn send_state(&self, state: HostState) {
        let update = Update::Host {
            machine_id: self.machine.id.clone(),
            state,
        };
        self.updates.send(update).await.ok();
    }

    async fn execute(&self, opened: Opened) -> Result<End, crate::ssh::Error> {
        let connection = self
            .access
            .connect(
                &self.access.target(&self.machine),
                &self.machine.id,
                &self.purpose,
            )
            .await?;
        if let Some(certificate) = connection.certificate() {
            let login = Update::Login {
                machine_id: self.machine.id.clone(),
                certificate: certificate.clone(),
            };
            self.updates.send(login).await.ok();
        }
        // The channel's own deadline is only a backstop: timeouts are handled
        // here, by signalling the script's process group.
        let backstop = self.timeout + STOP_GRACE * 4;
        let Opened { input, mask } = opened;
        // The script alone, unless there are secrets to read ahead of it.
        let with_secrets = (!input.is_empty()).then(|| {
            let mut stdin = input;
            stdin.extend_from_slice(self.body.as_bytes());
            stdin
        });
        let stdin = with_secrets
            .as_deref()
            .map_or(self.body.as_bytes(), Vec::as_slice);
        let mut execution = connection.exec(&self.command, stdin, backstop).await?;
        drop(with_secrets);
        let mut output = Output::new(self.machine.id.clone(), self.output_cap, mask);
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        // Once ending, the host's part is over by this instant whatever the
        // network does: over a silent partition neither the signals nor the
        // channel's close ever arrive.
        let mut given_up_at: Option<tokio::time::Instant> = None;
        // Set once the script is being ended.
        let mut ending: Option<Ending> = None;
        loop {
            let kill_at = ending.as_ref().filter(|e| !e.killed).map(|e| e.kill_at);
            tokio::select! {
                event = execution.next_output() => match event? {
                    Some(event) => {
                        for update in output.accept(event) {
                            // Bounded: a slow store pauses this read, and so the SSH window.
                            self.updates.send(update).await.ok();
                        }
                    }
                    None => break,
                },
                _ = self.stop.cancelled(), if ending.is_none() => {
                    ending = Some(Ending::new(End::Stopped { unconfirmed: false }));
                    given_up_at = Some(tokio::time::Instant::now() + GIVE_UP_AFTER);
                }
                _ = &mut deadline, if ending.is_none() => {
                    ending = Some(Ending::new(End::TimedOut { unconfirmed: false }));
                    given_up_at = Some(tokio::time::Instant::now() + GIVE_UP_AFTER);
                }
                _ = tokio::time::sleep_until(given_up_at.unwrap_or_else(tokio::time::Instant::now)), if given_up_at.is_some() => {
                    tracing::warn!(machine = %self.machine.id, "the script's end was not confirmed within {GIVE_UP_AFTER:?} of asking; the machine may be unreachable");
                    self.access.pool.forget(&self.access.target(&self.machine)).await;
                    if let Some(ending) = ending.as_mut() {
                        ending.unconfirmed();
                    }
                    break;
                }
                _ = tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)), if kill_at.is_some() => {
                    let Some(pgid) = output.pgid else {
                        // It never said its process group: nothing to signal; give up on it.
                        break;
                    };
                    self.signal(&connection, pgid, "KILL").await;
                    if let Some(ending) = ending.as_mut() {
                        ending.killed = true;
                    }
                }
            }
            // Ask nicely first, as soon as the process group is known.
            if let (Some(ending), Some(pgid)) = (ending.as_mut(), output.pgid)
                && !ending.termed
            {
                ending.termed = true;
                self.signal(&connection, pgid, "TERM").await;
            }
        }
        for update in output.finish() {
            self.updates.send(update).await.ok();
        }
        Ok(match ending {
            Some(ending) => ending.end,
            None => End::Exited(execution.exit_status()),
        })
    }

    /// Signals the script's whole process group (it runs under `setsid`);
    /// bounded as a whole (channel open included) by [`SIGNAL_TIMEOUT`].
    async fn signal(&self, connection: &Connection, pgid: u32, signal: &str) {
        let sent = async {
            let execution = connection
                .exec(&signal_group(pgid, signal), b"", SIGNAL_TIMEOUT)
                .await?;
            execution.collect(256).await.map(drop)
        };
        match tokio::time::timeout(SIGNAL_TIMEOUT, sent).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(machine = %self.machine.id, %error, "cannot signal the script")
            }
            Err(_) => {
                tracing::warn!(machine = %self.machine.id, signal, "signalling the script got no answer within {SIGNAL_TIMEOUT:?}")
            }
        }
    }
}

/// A script being ended: why, and when SIGTERM gives way to SIGKILL.
struct Ending {
    end: End,
    kill_at: tokio::time::Instant,
    termed: bool,
    killed: bool,
}

impl Ending {
    /// The machine never confirmed it.
    fn unconfirmed(&mut self) {
        if let End::TimedOut { unconfirmed } | End::Stopped { unconfirmed } = &mut self.end {
            *unconfirmed = true;
        }
    }

    fn new(end: End) -> Ending {
        Ending {
            end,
            kill_at: tokio::time::Instant::now() + STOP_GRACE,
            termed: false,
            killed: false,
        }
    }
}

/// Turns raw channel output into updates: strips the process-group line,
/// masks the secrets' values, keeps chunks on UTF-8 boundaries, and caps
/// what is kept per stream.
struct Output {
    machine_id: String,
    cap: u64,
    /// The first stdout line is the script's process group.
    pgid: Option<u32>,
    header: Vec<u8>,
    /// Each stream's masking of the secrets' values, before anything else
    /// sees it; none for a script given no secret.
    maskers: Option<[Masker; 2]>,
    /// Incomplete UTF-8 sequences held back until the next chunk, per stream.
    carry: [Vec<u8>; 2],
    kept: [u64; 2],
    truncated: [bool; 2],
}

impl Output {
    fn new(machine_id: String, cap: u64, mask: Arc<Mask>) -> Output {
        Output {
            machine_id,
            cap,
            pgid: None,
            header: Vec::new(),
            maskers: (!mask.is_empty()).then(|| [Masker::new(mask.clone()), Masker::new(mask)]),
            carry: [Vec::new(), Vec::new()],
            kept: [0, 0],
            truncated: [false, false],
        }
    }

    fn accept(&mut self, event: OutputEvent) -> Vec<Update> {
        let (stream, mut data) = match event {
            OutputEvent::Stdout(data) => (Stream::Stdout, data),
            OutputEvent::Stderr(data) => (Stream::Stderr, data),
        };
        if stream == Stream::Stdout && self.pgid.is_none() && self.header.len() < 32 {
            self.header.extend_from_slice(&data);
            let Some(newline) = self.header.iter().position(|b| *b == b'\n') else {
                return Vec::new();
            };
            self.pgid = std::str::from_utf8(&self.header[..newline])
                .ok()
                .and_then(|s| s.trim().parse().ok());
            data = self.header.split_off(newline + 1);
        }
        self.chunk(stream, data, false)
    }

    fn finish(&mut self) -> Vec<Update> {
        let mut updates = self.chunk(Stream::Stdout, Vec::new(), true);
        updates.extend(self.chunk(Stream::Stderr, Vec::new(), true));
        updates
    }

    fn chunk(&mut self, stream: Stream, data: Vec<u8>, last: bool) -> Vec<Update> {
        let index = stream as usize;
        let received = data.len() as u64;
        let data = match (&mut self.maskers, last) {
            (None, _) => data,
            (Some(maskers), false) => maskers[index].push(&data),
            (Some(maskers), true) => maskers[index].finish(),
        };
        let mut bytes = std::mem::take(&mut self.carry[index]);
        bytes.extend_from_slice(&data);
        if !last {
            // Hold back an incomplete character at the end (at most 3 bytes).
            if let Err(error) = std::str::from_utf8(&bytes)
                && error.error_len().is_none()
                && bytes.len() - error.valid_up_to() <= 3
            {
                self.carry[index] = bytes.split_off(error.valid_up_to());
            }
        }
        let room = self.cap.saturating_sub(self.kept[index]) as usize;
        let mut updates = Vec::new();
        if bytes.len() > room {
            bytes.truncate(room);
            if !self.truncated[index] {
                self.truncated[index] = true;
                updates.push(Update::Output {
                    machine_id: self.machine_id.clone(),
                    stream,
                    data: format!(
                        "\n[linkops: output beyond {} bytes is not kept; the byte count goes on]\n",
                        self.cap
                    )
                    .into_bytes(),
                    received: 0,
                });
            }
        }
        self.kept[index] += bytes.len() as u64;
        updates.insert(
            0,
            Update::Output {
                machine_id: self.machine_id.clone(),
                stream,
                data: bytes,
                received,
            },
        );
        updates
    }
}
