//! The `linkops` binary: parses the command line and hands over to the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use linkops::cli::{self, PasswordSource};
use linkops::config::Config;
use linkops::store::Role;

/// LinkOps keeps a fleet of Linux machines in the state a Git repository describes.
///
/// `linkops serve` is the daemon (installed as linkopsd.service); the other
/// commands are the operator's tools.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Configuration file (TOML). Default: /etc/linkops/config.toml when it exists.
    /// Every key can also be set as LINKOPS_<SECTION>_<KEY>, e.g. LINKOPS_SSH_CONNECT_TIMEOUT=5s.
    #[arg(long, global = true, env = "LINKOPS_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,

    /// Data directory (store, keys, known_hosts, Git checkout). Overrides `data_dir`.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: reconcile the fleet and serve the HTTP API.
    ///
    /// On the first start with no users it creates `admin` with a generated
    /// password, printed once on stderr.
    Serve {
        /// Listen address, e.g. 127.0.0.1:8000. Overrides `listen`.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Check a config repository: YAML, schema and cross-references.
    ///
    /// Prints every problem as `file:line:col: message` and exits 1 if there is
    /// any. The daemon runs the same checks on every sync.
    Validate {
        /// The repository's root directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Write the JSON Schemas of links.yaml, scripts.yaml and run-requests.
    Schema {
        #[arg(long, default_value = "schemas", value_name = "DIR")]
        out: PathBuf,
    },
    /// Manage user accounts (stop the daemon first: the store admits one process).
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user. Prints a generated password unless --password-stdin is given.
    Add {
        name: String,
        /// viewer (read), operator (+ run, stop, terminals, verify) or admin (+ users, sync).
        #[arg(long, default_value = "viewer")]
        role: Role,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Set a user's password; older tokens stop working and a lockout is lifted.
    Passwd {
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
}

#[derive(Args)]
struct PasswordArgs {
    /// Read the password from the first line of stdin instead of generating one.
    #[arg(long)]
    password_stdin: bool,
}

impl PasswordArgs {
    fn source(&self) -> PasswordSource {
        if self.password_stdin {
            PasswordSource::Stdin
        } else {
            PasswordSource::Generate
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Only the commands that touch the data dir read the daemon's configuration.
    let config = || -> anyhow::Result<Config> {
        let mut config = Config::load(cli.config.as_deref())?;
        if let Some(dir) = &cli.data_dir {
            config.data_dir = dir.clone();
        }
        Ok(config)
    };
    match &cli.command {
        Command::Serve { listen } => {
            let mut config = config()?;
            if let Some(listen) = listen {
                config.listen = *listen;
            }
            linkops::telemetry::init(config.log.format);
            serve(config)
        }
        Command::Validate { dir } => {
            if !cli::validate(dir)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Schema { out } => Ok(cli::write_schemas(out)?),
        Command::User(UserCommand::Add {
            name,
            role,
            password,
        }) => Ok(cli::add_user(&config()?, name, *role, password.source())?),
        Command::User(UserCommand::Passwd { name, password }) => {
            Ok(cli::set_password(&config()?, name, password.source())?)
        }
    }
}

#[tokio::main]
async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    linkops::server::run(config, listener, shutdown_signal()?).await?;
    Ok(())
}

/// Completes on the first SIGINT or SIGTERM; a second one exits at once.
///
/// The handlers are installed before this returns, so a signal that arrives
/// while the daemon starts is not lost.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("shutting down: finishing in-flight work (signal again to abort)");
        tokio::spawn(async move {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            tracing::warn!("second signal: aborting");
            std::process::exit(130);
        });
    })
}
