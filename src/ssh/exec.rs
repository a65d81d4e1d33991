//! Running one command on a channel of a [`Connection`], streaming its output.

use std::time::Duration;

use russh::ChannelMsg;
use russh::client::Msg;
use tokio::time::Instant;

use super::{Connection, Error, Result};

/// A piece of output, as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    Code(u32),
    Signal {
        name: String,
        core_dumped: bool,
    },
    /// The channel closed without reporting a status.
    Unknown,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }
}

/// A command running on its own channel.
pub struct Execution {
    channel: russh::Channel<Msg>,
    target: String,
    command: String,
    timeout: Duration,
    deadline: Instant,
    status: Option<ExitStatus>,
}

impl Connection {
    /// Starts `command` (run by the login shell), writes `stdin` to it and closes its input.
    ///
    /// The command is killed when it runs longer than `timeout`.
    pub async fn exec(&self, command: &str, stdin: &[u8], timeout: Duration) -> Result<Execution> {
        let protocol = |source| Error::Protocol {
            target: self.target.clone(),
            source,
        };
        let channel = self.handle.channel_open_session().await.map_err(protocol)?;
        channel.exec(true, command).await.map_err(protocol)?;
        if !stdin.is_empty() {
            channel.data(stdin).await.map_err(protocol)?;
        }
        channel.eof().await.map_err(protocol)?;
        Ok(Execution {
            channel,
            target: self.target.clone(),
            command: command.to_owned(),
            timeout,
            deadline: Instant::now() + timeout,
            status: None,
        })
    }
}

impl Execution {
    /// The next chunk of output, or `None` once the command has ended and its
    /// channel closed; then [`Execution::exit_status`] tells how it ended.
    pub async fn next_output(&mut self) -> Result<Option<OutputEvent>> {
        loop {
            let message = match tokio::time::timeout_at(self.deadline, self.channel.wait()).await {
                Ok(message) => message,
                Err(_) => {
                    // Best effort: the channel may already be gone.
                    self.channel.signal(russh::Sig::KILL).await.ok();
                    return Err(Error::CommandTimeout {
                        target: self.target.clone(),
                        command: self.command.clone(),
                        after: self.timeout,
                    });
                }
            };
            match message {
                // Output may still arrive after the exit status: read until the channel closes.
                None => return Ok(None),
                Some(ChannelMsg::Data { data }) => {
                    return Ok(Some(OutputEvent::Stdout(data.to_vec())));
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    return Ok(Some(OutputEvent::Stderr(data.to_vec())));
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    self.status = Some(ExitStatus::Code(exit_status));
                }
                Some(ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    ..
                }) => {
                    self.status = Some(ExitStatus::Signal {
                        name: format!("{signal_name:?}"),
                        core_dumped,
                    });
                }
                Some(_) => {}
            }
        }
    }

    /// How the command ended; [`ExitStatus::Unknown`] until its channel has closed.
    pub fn exit_status(&self) -> ExitStatus {
        self.status.clone().unwrap_or(ExitStatus::Unknown)
    }

    /// Runs to the end, keeping at most `limit` bytes of each stream (for
    /// short commands whose output is small, like reading a file).
    pub async fn collect(mut self, limit: usize) -> Result<Output> {
        let mut output = Output::default();
        while let Some(event) = self.next_output().await? {
            let (buffer, data) = match event {
                OutputEvent::Stdout(data) => (&mut output.stdout, data),
                OutputEvent::Stderr(data) => (&mut output.stderr, data),
            };
            let room = limit.saturating_sub(buffer.len());
            output.truncated |= data.len() > room;
            buffer.extend_from_slice(&data[..data.len().min(room)]);
        }
        output.status = self.exit_status();
        Ok(output)
    }
}

/// The collected result of a short command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
    /// Some output was dropped because it exceeded the limit.
    pub truncated: bool,
}

impl Default for Output {
    fn default() -> Self {
        Output {
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: ExitStatus::Unknown,
            truncated: false,
        }
    }
}
