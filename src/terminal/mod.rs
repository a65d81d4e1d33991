//! Terminals: interactive shells on fleet machines, arranged in workspaces of
//! panes and carried to the browser over one WebSocket per workspace.
//!
//! This module owns the live side — which pane has which session, which
//! socket is attached — while the store keeps workspaces, session records and
//! recordings. Each pane's session runs in its own task ([`pane`]) on its own
//! SSH connection: russh widens a channel's window as soon as data arrives and
//! blocks the whole connection when one channel's reader stops, so a shared
//! connection would let one slow browser stall health checks and operations.

mod pane;
pub mod protocol;
mod recording;
mod workspaces;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use linkops_reconcilers::certificate::Purpose;
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::enrollment::{self, Enrollment};
use linkops_reconcilers::terminal::{SessionEnd, TerminalSession, Workspace};
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::MachineAccess;
use crate::config::TerminalConfig;
use crate::metrics::{Metrics, Open};
use crate::ssh::{self, Connection};
use crate::store::{Actor, AuditAction, Outcome, Store, now_ms};
use linkops_reconcilers::role::Role;
use pane::{PaneCommand, PaneSession, Sink};
use protocol::{Frame, PaneState, PaneStatus, Refusal, ServerMessage, SocketEnd};
use recording::Recorder;
pub use workspaces::AssignFailed;

/// Frames queued for one socket before the panes wait for it.
const SOCKET_QUEUE: usize = 64;
/// Commands queued for one pane.
const PANE_QUEUE: usize = 256;
/// The size of a terminal whose client did not say.
pub const DEFAULT_SIZE: (u16, u16) = (80, 24);
/// What a client asked of a pane that cannot be done; the socket tells it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("terminal size {cols}x{rows} is empty")]
    EmptySize { cols: u16, rows: u16 },
    /// Named as the console shows it (Pane 1 is index 0).
    #[error("Pane {} (index {pane}) has no open session: the input was not sent", pane + 1)]
    NoSession { pane: usize },
}

/// Who may open terminals and keep their sessions open: below it, a user's
/// sockets close and their sessions end.
pub const ROLE: Role = Role::Operator;

/// The terminal service; cheap to clone.
#[derive(Clone)]
pub struct Terminals {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// This replica's member id, recorded with each session it holds.
    replica: Arc<str>,
    access: MachineAccess,
    desired: watch::Receiver<Option<Arc<DesiredState>>>,
    config: Arc<TerminalConfig>,
    /// A std mutex: held only to find or insert, never across an await.
    workspaces: Mutex<HashMap<String, Arc<LiveWorkspace>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
}

/// The live side of one workspace.
#[derive(Default)]
struct LiveWorkspace {
    state: Mutex<LiveState>,
    /// One attach at a time, so that panes never end up streaming to an older socket.
    attaching: AsyncMutex<()>,
    /// One open per pane at a time.
    opening: [AsyncMutex<()>; 4],
}

#[derive(Default)]
struct LiveState {
    panes: BTreeMap<usize, PaneHandle>,
    socket: Option<Attachment>,
    broadcast: bool,
}

impl LiveState {
    /// Every open pane's command queue.
    fn commands(&self) -> Vec<mpsc::Sender<PaneCommand>> {
        self.panes
            .values()
            .map(|handle| handle.commands.clone())
            .collect()
    }
}

struct Attachment {
    sink: Sink,
    /// Tells the socket why the daemon ends it (another socket took over, …).
    end: oneshot::Sender<SocketEnd>,
}

struct PaneHandle {
    commands: mpsc::Sender<PaneCommand>,
    status: watch::Receiver<PaneStatus>,
}

impl PaneHandle {
    fn is_open(&self) -> bool {
        self.status.borrow().state == PaneState::Connected && !self.commands.is_closed()
    }
}

/// A socket's hold on a workspace: the frames to send, and why the daemon ends
/// the socket, should it (another socket takes over, the workspace is deleted, …).
pub struct Attached {
    pub frames: mpsc::Receiver<Frame>,
    pub sink: mpsc::Sender<Frame>,
    pub ended: oneshot::Receiver<SocketEnd>,
}

impl Terminals {
    pub fn new(
        store: Store,
        replica: &str,
        access: MachineAccess,
        desired: watch::Receiver<Option<Arc<DesiredState>>>,
        config: TerminalConfig,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Terminals {
        Terminals {
            inner: Arc::new(Inner {
                store,
                replica: replica.into(),
                access,
                desired,
                config: Arc::new(config),
                workspaces: Mutex::default(),
                tasks: TaskTracker::new(),
                shutdown,
                metrics,
            }),
        }
    }

    /// Cancelled when the daemon stops: sockets close, sessions end.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Waits, after shutdown, until every session has recorded its end.
    pub async fn wait(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn live(&self, id: &str) -> Arc<LiveWorkspace> {
        self.inner
            .workspaces
            .lock()
            .expect("never poisoned")
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// Each pane's state.
    pub fn statuses(&self, workspace: &Workspace) -> Vec<PaneStatus> {
        let live = self.live(&workspace.id);
        let state = live.state.lock().expect("never poisoned");
        workspace
            .panes
            .iter()
            .enumerate()
            .map(|(index, machine)| match state.panes.get(&index) {
                Some(handle) => handle.status.borrow().clone(),
                None if machine.is_some() => {
                    PaneStatus::new(index, machine.clone(), PaneState::Idle)
                }
                None => PaneStatus::new(index, None, PaneState::Empty),
            })
            .collect()
    }

    pub fn broadcast(&self, workspace_id: &str) -> bool {
        self.live(workspace_id)
            .state
            .lock()
            .expect("never poisoned")
            .broadcast
    }

    /// Opens a session in every assigned pane that has none.
    pub async fn connect_all(
        &self,
        workspace: &Workspace,
        user: &str,
        size: (u16, u16),
    ) -> Vec<PaneStatus> {
        let opens = (0..workspace.panes.len()).map(|pane| self.open(workspace, pane, user, size));
        futures::future::join_all(opens).await
    }

    /// Opens the session of one pane (or answers the open one's state), and
    /// tells the attached socket how it went.
    pub async fn open(
        &self,
        workspace: &Workspace,
        pane: usize,
        user: &str,
        size: (u16, u16),
    ) -> PaneStatus {
        let machine = workspace.panes.get(pane).cloned().flatten();
        let live = self.live(&workspace.id);
        let Some(machine_id) = machine.clone() else {
            let status = if pane < workspace.panes.len() {
                PaneStatus::new(pane, None, PaneState::Empty)
            } else {
                let message = format!("the workspace has no pane {pane}");
                PaneStatus::refused(pane, None, Refusal::NoMachine, message)
            };
            self.notify(&live, status.clone()).await;
            return status;
        };
        let _opening = live.opening[pane].lock().await;
        if let Some(handle) = live.state.lock().expect("never poisoned").panes.get(&pane)
            && handle.is_open()
        {
            return handle.status.borrow().clone();
        }
        self.notify(
            &live,
            PaneStatus::new(pane, machine.clone(), PaneState::Connecting),
        )
        .await;
        match self
            .start(workspace, pane, &machine_id, user, size, &live)
            .await
        {
            Ok(status) => status,
            Err((reason, message)) => {
                tracing::info!(workspace = %workspace.id, pane, machine = %machine_id, ?reason, %message, "terminal refused");
                let (by, refused_on, detail) =
                    (Actor::user(user), machine_id.clone(), message.clone());
                let denied = move |store: &crate::store::Store| {
                    let open = AuditAction::TerminalOpen;
                    store.audit(&by, open, &refused_on, Outcome::Denied, Some(detail))
                };
                self.inner.store.run(denied).await.ok();
                let status = PaneStatus::refused(pane, machine, reason, message);
                self.notify(&live, status.clone()).await;
                status
            }
        }
    }

    /// Connects, checks enrollment, opens the shell, records the session and starts its task.
    async fn start(
        &self,
        workspace: &Workspace,
        pane: usize,
        machine_id: &str,
        user: &str,
        (cols, rows): (u16, u16),
        live: &LiveWorkspace,
    ) -> Result<PaneStatus, (Refusal, String)> {
        let desired = self.inner.desired.borrow().clone();
        let machine = desired
            .and_then(|desired| desired.machine(machine_id).cloned())
            .ok_or_else(|| {
                (
                    Refusal::UnknownMachine,
                    format!("no machine {machine_id:?} in the applied inventory"),
                )
            })?;
        let target = self.inner.access.target(&machine);
        // Its own connection, never pooled: its certificate names the workspace and the user.
        let purpose = Purpose::Terminal {
            workspace: workspace.id.clone(),
            user: user.to_owned(),
        };
        let options = self.inner.access.pool.options();
        let connection = Connection::open_for(&target, options, &purpose)
            .await
            .map_err(refusal)?;
        self.inner
            .access
            .audit_learned_key(&connection, machine_id)
            .await;
        // The id is read on this very connection: the shell is on the machine that proved itself.
        let reading = crate::access::read_client_id(&connection).await;
        match enrollment::assess(&machine.uuid, reading) {
            Enrollment::Enrolled => {}
            other => {
                connection.disconnect().await;
                return Err((Refusal::Unenrolled, unenrolled_message(machine_id, &other)));
            }
        }
        let (output, input) = connection.open_shell(cols, rows).await.map_err(refusal)?;

        let started = now_ms();
        let recorder = Recorder::new(
            cols,
            rows,
            started / 1000,
            &format!("{user}@{machine_id}"),
            self.inner.config.recording_cap,
            self.inner.config.record_input,
        );
        let record = TerminalSession {
            id: 0,
            workspace_id: workspace.id.clone(),
            pane,
            machine_id: machine_id.to_owned(),
            user: user.to_owned(),
            cols,
            rows,
            started_at_ms: started,
            ended_at_ms: None,
            end: None,
            input_recorded: self.inner.config.record_input,
            recorded_bytes: 0,
            truncated: false,
            certificate: connection.certificate().cloned(),
        };
        let mut recorder = recorder;
        let (header, _) = recorder.take();
        let (store, replica) = (self.inner.store.clone(), self.inner.replica.clone());
        let session =
            crate::blocking::run(move || store.create_terminal_session(&record, &replica, &header))
                .await
                .map_err(|e| (Refusal::Error, e.to_string()))?
                .map_err(|e| (Refusal::Error, e.to_string()))?;
        tracing::info!(session = session.id, machine = %machine_id, %user, "terminal session opened");

        let connected = PaneStatus {
            session: Some(session.id),
            ..PaneStatus::new(pane, Some(machine_id.to_owned()), PaneState::Connected)
        };
        let (status, status_rx) = watch::channel(connected.clone());
        let (commands, commands_rx) = mpsc::channel(PANE_QUEUE);
        let mut state = live.state.lock().expect("never poisoned");
        let pane_session = PaneSession {
            index: pane,
            session,
            connection,
            output,
            input,
            recorder,
            store: self.inner.store.clone(),
            config: self.inner.config.clone(),
            sink: state.socket.as_ref().map(|socket| socket.sink.clone()),
            status,
            _open: Open::new(&self.inner.metrics.terminal_sessions),
        };
        self.inner.tasks.spawn(pane::run(
            pane_session,
            commands_rx,
            self.inner.shutdown.clone(),
        ));
        state.panes.insert(
            pane,
            PaneHandle {
                commands,
                status: status_rx,
            },
        );
        Ok(connected)
    }

    /// Tells the attached socket, if any, about a pane.
    async fn notify(&self, live: &LiveWorkspace, status: PaneStatus) {
        let sink = live
            .state
            .lock()
            .expect("never poisoned")
            .socket
            .as_ref()
            .map(|socket| socket.sink.clone());
        if let Some(sink) = sink {
            sink.send(Frame::Message(ServerMessage::Status(status)))
                .await
                .ok();
        }
    }

    /// Closes the sessions of these panes.
    pub async fn close(&self, workspace_id: &str, panes: &[usize]) {
        let live = self.live(workspace_id);
        let handles: Vec<PaneHandle> = {
            let mut state = live.state.lock().expect("never poisoned");
            panes
                .iter()
                .filter_map(|pane| state.panes.remove(pane))
                .collect()
        };
        for handle in handles {
            handle
                .commands
                .send(PaneCommand::Close(SessionEnd::Closed))
                .await
                .ok();
        }
    }

    /// `owner` was deleted or lost the operator role: ends every session and
    /// socket of their workspaces (the workspaces and recordings stay).
    pub async fn revoke(&self, owner: &str) -> Result<(), crate::store::Error> {
        let workspaces = self.inner.store.run(|store| store.workspaces()).await?;
        for workspace in workspaces {
            if workspace.owner == owner {
                self.end_workspace(&workspace.id, SessionEnd::Revoked, SocketEnd::AccessRevoked)
                    .await;
            }
        }
        Ok(())
    }

    /// The owner of these workspaces was deleted: ends their sessions and sockets.
    pub async fn end_workspaces(&self, workspace_ids: &[String]) {
        for id in workspace_ids {
            self.end_workspace(id, SessionEnd::Revoked, SocketEnd::AccessRevoked)
                .await;
        }
    }

    async fn end_workspace(
        &self,
        workspace_id: &str,
        session_end: SessionEnd,
        socket_end: SocketEnd,
    ) {
        let live = self
            .inner
            .workspaces
            .lock()
            .expect("never poisoned")
            .remove(workspace_id);
        let Some(live) = live else { return };
        let (handles, socket) = {
            let mut state = live.state.lock().expect("never poisoned");
            (std::mem::take(&mut state.panes), state.socket.take())
        };
        for handle in handles.into_values() {
            let end = PaneCommand::Close(session_end.clone());
            handle.commands.send(end).await.ok();
        }
        if let Some(socket) = socket {
            socket.end.send(socket_end).ok();
        }
    }

    /// Attaches a socket to a workspace: the socket gets a hello, then each open
    /// pane's scrollback, then live output. A socket attached before is replaced.
    pub async fn attach(&self, workspace: &Workspace) -> Attached {
        let live = self.live(&workspace.id);
        let _attaching = live.attaching.lock().await;
        let (sink, frames) = mpsc::channel(SOCKET_QUEUE);
        let (end, ended) = oneshot::channel();
        let hello = ServerMessage::Hello {
            workspace: workspace.id.clone(),
            layout: workspace.layout,
            broadcast: self.broadcast(&workspace.id),
            panes: self.statuses(workspace),
        };
        sink.send(Frame::Message(hello)).await.ok();
        let handles: Vec<mpsc::Sender<PaneCommand>> = {
            let mut state = live.state.lock().expect("never poisoned");
            if let Some(previous) = state.socket.replace(Attachment {
                sink: sink.clone(),
                end,
            }) {
                previous.end.send(SocketEnd::TakenOver).ok();
            }
            state.commands()
        };
        for commands in handles {
            commands.send(PaneCommand::Attach(sink.clone())).await.ok();
        }
        Attached {
            frames,
            sink,
            ended,
        }
    }

    /// The socket behind `sink` went away; its sessions wait for a reconnect.
    pub async fn detach(&self, workspace_id: &str, sink: &Sink) {
        let live = self.live(workspace_id);
        let handles: Vec<mpsc::Sender<PaneCommand>> = {
            let mut state = live.state.lock().expect("never poisoned");
            if state
                .socket
                .as_ref()
                .is_some_and(|socket| socket.sink.same_channel(sink))
            {
                state.socket = None;
            }
            state.commands()
        };
        for commands in handles {
            commands.send(PaneCommand::Detach(sink.clone())).await.ok();
        }
    }

    /// Sends keystrokes to a pane, or to every open pane in broadcast mode.
    pub async fn input(&self, workspace_id: &str, pane: usize, data: Bytes) -> Result<(), Error> {
        let targets = self.targets(workspace_id, pane)?;
        for commands in targets {
            commands.send(PaneCommand::Input(data.clone())).await.ok();
        }
        Ok(())
    }

    pub async fn resize(
        &self,
        workspace_id: &str,
        pane: usize,
        cols: u16,
        rows: u16,
    ) -> Result<(), Error> {
        if cols == 0 || rows == 0 {
            return Err(Error::EmptySize { cols, rows });
        }
        let live = self.live(workspace_id);
        let handle = live
            .state
            .lock()
            .expect("never poisoned")
            .panes
            .get(&pane)
            .filter(|handle| handle.is_open())
            .map(|handle| handle.commands.clone());
        // No session, nothing to resize: a session opens at the size its
        // open asks for, and the console fits every pane, open or not.
        if let Some(commands) = handle {
            commands.send(PaneCommand::Resize { cols, rows }).await.ok();
        }
        Ok(())
    }

    pub fn set_broadcast(&self, workspace_id: &str, enabled: bool) {
        self.live(workspace_id)
            .state
            .lock()
            .expect("never poisoned")
            .broadcast = enabled;
    }

    /// The command queues input goes to: every open pane when broadcasting, else `pane`'s.
    fn targets(
        &self,
        workspace_id: &str,
        pane: usize,
    ) -> Result<Vec<mpsc::Sender<PaneCommand>>, Error> {
        let live = self.live(workspace_id);
        let state = live.state.lock().expect("never poisoned");
        let open = |handle: &&PaneHandle| handle.is_open();
        if state.broadcast {
            return Ok(state
                .panes
                .values()
                .filter(open)
                .map(|handle| handle.commands.clone())
                .collect());
        }
        state
            .panes
            .get(&pane)
            .filter(open)
            .map(|handle| vec![handle.commands.clone()])
            .ok_or(Error::NoSession { pane })
    }
}

fn refusal(error: ssh::Error) -> (Refusal, String) {
    let reason = match &error {
        error if error.is_host_key_refusal() => Refusal::HostKeyMismatch,
        ssh::Error::AuthRejected { .. } | ssh::Error::Key { .. } => Refusal::AuthenticationFailed,
        ssh::Error::Connect { .. } | ssh::Error::ConnectTimeout { .. } => Refusal::Unreachable,
        _ => Refusal::Error,
    };
    (reason, error.to_string())
}

fn unenrolled_message(machine_id: &str, enrollment: &Enrollment) -> String {
    match enrollment {
        Enrollment::Mismatch { expected, found } => format!(
            "{machine_id} is not enrolled: {} holds {found:?}, the inventory expects {expected:?}",
            enrollment::CLIENT_ID_PATH
        ),
        Enrollment::MissingFile => format!(
            "{machine_id} is not enrolled: {} is missing",
            enrollment::CLIENT_ID_PATH
        ),
        other => format!("{machine_id} is not enrolled: {other:?}"),
    }
}
