//! One pane's terminal session: a task that owns the SSH connection and shell,
//! feeds the output to the attached socket, the scrollback and the recording,
//! and closes the session when told to, when idle, or when abandoned.
//!
//! Output is read from SSH only when the attached socket has room for it, so a
//! slow client stalls this session's SSH connection (TCP flow control reaches
//! the remote PTY) instead of growing the daemon's memory.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use linkops_reconcilers::terminal::{SessionEnd, TerminalSession};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::protocol::{Frame, PaneState, PaneStatus, ServerMessage};
use super::recording::{Recorder, Scrollback};
use crate::config::TerminalConfig;
use crate::ssh::{Connection, ExitStatus, ShellInput, ShellOutput};
use crate::store::Store;

/// Frames for one socket; bounded, so a slow client pushes back.
pub type Sink = mpsc::Sender<Frame>;

/// How often buffered recording is written to the store.
const RECORDING_FLUSH: Duration = Duration::from_millis(250);
/// Recording buffered beyond this is written at once.
const RECORDING_BATCH: usize = 64 << 10;
/// Keystrokes and resizes queued for the SSH channel.
const INPUT_QUEUE: usize = 1024;

pub enum PaneCommand {
    Input(Bytes),
    Resize {
        cols: u16,
        rows: u16,
    },
    /// A socket attached: replay the scrollback to it, then stream to it.
    Attach(Sink),
    /// That socket went away (ignored if another has attached since).
    Detach(Sink),
    /// End the session, recorded with this end.
    Close(SessionEnd),
}

/// Everything a pane task needs; built once the shell is open.
pub struct PaneSession {
    pub index: usize,
    pub session: TerminalSession,
    pub connection: Connection,
    pub output: ShellOutput,
    pub input: ShellInput,
    pub recorder: Recorder,
    pub store: Store,
    pub config: Arc<TerminalConfig>,
    pub sink: Option<Sink>,
    pub status: watch::Sender<PaneStatus>,
    /// Counts the session as open while its task runs.
    pub _open: crate::metrics::Open,
}

/// Input for the SSH channel, written by its own task so that a stalled
/// channel never blocks the pane's loop.
enum ShellWrite {
    Data(Bytes),
    Resize { cols: u16, rows: u16 },
}

struct Running {
    pane: PaneSession,
    scrollback: Scrollback,
    started: Instant,
    last_activity: Instant,
    detached_at: Option<Instant>,
    /// Output read from SSH, waiting for room on the socket.
    pending: Option<Bytes>,
    writes: mpsc::Sender<ShellWrite>,
}

/// Runs the session until it ends, then records how.
pub async fn run(
    pane: PaneSession,
    mut commands: mpsc::Receiver<PaneCommand>,
    shutdown: CancellationToken,
) {
    let (writes, write_queue) = mpsc::channel(INPUT_QUEUE);
    tokio::spawn(write_input(pane.input.clone(), write_queue));
    let now = Instant::now();
    let mut running = Running {
        scrollback: Scrollback::new(pane.config.scrollback),
        detached_at: pane.sink.is_none().then_some(now),
        pane,
        started: now,
        last_activity: now,
        pending: None,
        writes,
    };
    let connected = running.pane.status.borrow().clone();
    running.announce(connected).await;
    let end = running.serve(&mut commands, &shutdown).await;
    running.finish(end).await;
}

async fn write_input(input: ShellInput, mut queue: mpsc::Receiver<ShellWrite>) {
    while let Some(write) = queue.recv().await {
        let written = match write {
            ShellWrite::Data(data) => input.write(data).await,
            ShellWrite::Resize { cols, rows } => input.resize(cols, rows).await,
        };
        if written.is_err() {
            // The session is ending; the pane's loop sees it on the output side.
            return;
        }
    }
}

impl Running {
    async fn serve(
        &mut self,
        commands: &mut mpsc::Receiver<PaneCommand>,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let mut flush = tokio::time::interval(RECORDING_FLUSH);
        loop {
            let (deadline, abandoned) = self.deadline();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return SessionEnd::Interrupted,
                command = commands.recv() => match command {
                    None => return SessionEnd::Closed,
                    Some(PaneCommand::Close(end)) => return end,
                    Some(command) => self.command(command).await,
                },
                delivered = deliver(self.pane.sink.as_ref(), &mut self.pending, self.pane.index), if self.pending.is_some() => {
                    if !delivered {
                        self.detach();
                    }
                }
                data = self.pane.output.next(), if self.pending.is_none() => match data {
                    Some(data) => self.output(data).await,
                    None => return exited(self.pane.output.exit_status()),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return if abandoned { SessionEnd::Abandoned } else { SessionEnd::Idle };
                }
                _ = flush.tick() => self.flush(None).await,
            }
        }
    }

    /// When the session ends by itself, and whether that is for being abandoned.
    fn deadline(&self) -> (Instant, bool) {
        let idle = self.last_activity + self.pane.config.idle_timeout;
        match self.detached_at {
            Some(at) if at + self.pane.config.grace < idle => (at + self.pane.config.grace, true),
            _ => (idle, false),
        }
    }

    async fn command(&mut self, command: PaneCommand) {
        match command {
            PaneCommand::Input(data) => {
                self.last_activity = Instant::now();
                self.pane.recorder.input(self.started.elapsed(), &data);
                self.write(ShellWrite::Data(data));
            }
            PaneCommand::Resize { cols, rows } => {
                self.pane
                    .recorder
                    .resize(self.started.elapsed(), cols, rows);
                self.write(ShellWrite::Resize { cols, rows });
            }
            PaneCommand::Attach(sink) => self.attach(sink).await,
            PaneCommand::Detach(sink) => {
                if self
                    .pane
                    .sink
                    .as_ref()
                    .is_some_and(|s| s.same_channel(&sink))
                {
                    self.detach();
                }
            }
            PaneCommand::Close(_) => unreachable!("handled by the loop"),
        }
    }

    fn write(&mut self, write: ShellWrite) {
        if self.writes.try_send(write).is_err() {
            tracing::warn!(
                session = self.pane.session.id,
                "the shell is not taking input; keystrokes dropped"
            );
        }
    }

    async fn output(&mut self, data: Bytes) {
        self.last_activity = Instant::now();
        self.scrollback.push(&data);
        self.pane.recorder.output(self.started.elapsed(), &data);
        if self.pane.recorder.pending_len() >= RECORDING_BATCH {
            self.flush(None).await;
        }
        if self.pane.sink.is_some() {
            self.pending = Some(data);
        }
    }

    async fn attach(&mut self, sink: Sink) {
        // Whatever waited for the old socket is in the scrollback, replayed now.
        self.pending = None;
        let replay = self.scrollback.replay();
        let index = self.pane.index;
        let mut frames = vec![Frame::Message(ServerMessage::Replay {
            pane: index,
            bytes: replay.len(),
        })];
        frames.extend(replay.chunks(16 << 10).map(|chunk| Frame::Output {
            pane: index as u8,
            data: Bytes::copy_from_slice(chunk),
        }));
        for frame in frames {
            if sink.send(frame).await.is_err() {
                return;
            }
        }
        self.pane.sink = Some(sink);
        self.detached_at = None;
    }

    fn detach(&mut self) {
        self.pane.sink = None;
        self.pending = None;
        self.detached_at = Some(Instant::now());
    }

    async fn announce(&mut self, status: PaneStatus) {
        if let Some(sink) = &self.pane.sink {
            sink.send(Frame::Message(ServerMessage::Status(status)))
                .await
                .ok();
        }
    }

    /// Stores the buffered recording; with `end`, closes the session record.
    async fn flush(&mut self, end: Option<SessionEnd>) {
        let (chunk, truncated) = self.pane.recorder.take();
        if chunk.is_empty() && end.is_none() {
            return;
        }
        let (store, id) = (self.pane.store.clone(), self.pane.session.id);
        let stored =
            crate::blocking::run(move || store.record_terminal(id, &chunk, truncated, end)).await;
        match stored {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::error!(session = id, %error, "cannot store the terminal recording")
            }
            Err(error) => {
                tracing::error!(session = id, %error, "storing the terminal recording panicked")
            }
        }
    }

    async fn finish(mut self, end: SessionEnd) {
        // The server ends the shell and its channel with the connection.
        tokio::time::timeout(Duration::from_secs(2), self.pane.connection.disconnect())
            .await
            .ok();
        self.flush(Some(end.clone())).await;
        let session = &self.pane.session;
        tracing::info!(session = session.id, machine = %session.machine_id, user = %session.user, ?end, "terminal session ended");
        let status = PaneStatus {
            session: Some(session.id),
            end: Some(end),
            ..PaneStatus::new(
                self.pane.index,
                Some(session.machine_id.clone()),
                PaneState::Closed,
            )
        };
        self.pane.status.send_replace(status.clone());
        self.announce(status).await;
    }
}

/// Sends the pending output once the socket has room; `false` if the socket is gone.
async fn deliver(sink: Option<&Sink>, pending: &mut Option<Bytes>, pane: usize) -> bool {
    let Some(Ok(permit)) = (match sink {
        Some(sink) => Some(sink.reserve().await),
        None => None,
    }) else {
        return false;
    };
    if let Some(data) = pending.take() {
        permit.send(Frame::Output {
            pane: pane as u8,
            data,
        });
    }
    true
}

fn exited(status: ExitStatus) -> SessionEnd {
    match status {
        ExitStatus::Code(code) => SessionEnd::Exited {
            exit_code: Some(code),
            signal: None,
        },
        ExitStatus::Signal { name, .. } => SessionEnd::Exited {
            exit_code: None,
            signal: Some(name),
        },
        ExitStatus::Unknown => SessionEnd::Lost {
            error: "the channel closed without an exit status".into(),
        },
    }
}
