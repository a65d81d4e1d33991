//! Interactive shells: a PTY on its own channel, with output and input as separate halves.

use std::sync::Arc;

use bytes::Bytes;
use russh::client::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};

use super::{Connection, Error, ExitStatus, Result};

/// What terminal the remote programs are told they draw on.
const TERM: &str = "xterm-256color";

/// The output side of a shell: what the remote terminal shows.
pub struct ShellOutput {
    channel: ChannelReadHalf,
    status: Option<ExitStatus>,
}

/// The input side of a shell; cheap to clone, usable while output is read.
#[derive(Clone)]
pub struct ShellInput {
    channel: Arc<ChannelWriteHalf<Msg>>,
    target: String,
}

impl Connection {
    /// Opens a login shell on a `cols` × `rows` pseudo-terminal.
    pub async fn open_shell(&self, cols: u16, rows: u16) -> Result<(ShellOutput, ShellInput)> {
        let protocol = |source| Error::Protocol {
            target: self.target.clone(),
            source,
        };
        let channel = self.handle.channel_open_session().await.map_err(protocol)?;
        channel
            .request_pty(true, TERM, cols.into(), rows.into(), 0, 0, &[])
            .await
            .map_err(protocol)?;
        channel.request_shell(true).await.map_err(protocol)?;
        let (read, write) = channel.split();
        Ok((
            ShellOutput {
                channel: read,
                status: None,
            },
            ShellInput {
                channel: Arc::new(write),
                target: self.target.clone(),
            },
        ))
    }

    /// Ends the session, and with it every channel on it (the remote shell gets SIGHUP).
    pub async fn disconnect(&self) {
        self.handle
            .disconnect(russh::Disconnect::ByApplication, "", "")
            .await
            .ok();
    }
}

impl ShellOutput {
    /// The next piece of terminal output, or `None` once the shell has ended
    /// and its channel closed; then [`ShellOutput::exit_status`] tells how.
    pub async fn next(&mut self) -> Option<Bytes> {
        loop {
            match self.channel.wait().await? {
                // A PTY merges stderr into the terminal; a server may still send it apart.
                ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => {
                    return Some(data);
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    self.status = Some(ExitStatus::Code(exit_status));
                }
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    ..
                } => {
                    self.status = Some(ExitStatus::Signal {
                        name: format!("{signal_name:?}"),
                        core_dumped,
                    });
                }
                _ => {}
            }
        }
    }

    pub fn exit_status(&self) -> ExitStatus {
        self.status.clone().unwrap_or(ExitStatus::Unknown)
    }
}

impl ShellInput {
    /// Sends keystrokes (or pasted text) to the shell.
    pub async fn write(&self, data: Bytes) -> Result<()> {
        self.channel
            .data_bytes(data)
            .await
            .map_err(|source| Error::Protocol {
                target: self.target.clone(),
                source,
            })
    }

    /// Tells the remote terminal its new size (SIGWINCH for the foreground program).
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        self.channel
            .window_change(cols.into(), rows.into(), 0, 0)
            .await
            .map_err(|source| Error::Protocol {
                target: self.target.clone(),
                source,
            })
    }
}
