//! The `linkops` binary: parses the command line and hands over to the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use linkops::client::{self, Client};
use linkops::config::Config;
use linkops::offline::{self, PasswordSource};
use linkops::sealed::Keyring;
use linkops_reconcilers::operation::OperationState;
use linkops_reconcilers::role::AccountRole;

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

    /// The daemon the client commands talk to. Default: the logged-in session's,
    /// else http://127.0.0.1:8000. Automation: set LINKOPS_TOKEN to an API token
    /// (`POST /api/tokens`) and the client commands send it instead of a session.
    #[arg(long, global = true, env = "LINKOPS_SERVER", value_name = "URL")]
    server: Option<String>,

    /// Client commands print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    json: bool,

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
        /// Also check that every secret opens with this age identity (the
        /// daemon's, on its host: /var/lib/linkops/keys/age-identity.txt), as
        /// the daemon checks on every sync. No value is printed.
        #[arg(long, value_name = "IDENTITY_FILE")]
        identity: Option<PathBuf>,
    },
    /// Secrets in the config repository (`secrets/<name>.yaml`), sealed with
    /// age to the recipients `recipients.yaml` names. These work on a
    /// checkout; commit and push what they write.
    Secret {
        #[command(subcommand)]
        action: SecretCommand,
    },
    /// Inventory sources: machines declared elsewhere (Proxmox VE), proposed
    /// as a commit on a branch of the config repository for a person to merge.
    Inventory {
        #[command(subcommand)]
        action: InventoryCommand,
    },
    /// Write the JSON Schemas of links.yaml, scripts.yaml and run-requests,
    /// and the HTTP API's OpenAPI description (openapi.json).
    Schema {
        #[arg(long, default_value = "schemas", value_name = "DIR")]
        out: PathBuf,
    },
    /// Print shell completions: `linkops completions bash > /etc/bash_completion.d/linkops`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `linkops man | man -l -`.
    Man,
    /// Manage user accounts (stop the daemon first: the store admits one process).
    #[command(subcommand)]
    User(UserCommand),
    /// Move the store between engines, or compact it (stop the daemon first).
    #[command(subcommand)]
    Store(StoreCommand),
    #[cfg(feature = "demo")]
    /// Show the whole product on this machine: demo machines, a config repository, the daemon.
    ///
    /// Starts 5 real sshd hosts on loopback addresses (one deliberately not
    /// enrolled), writes a small config repository as a Git repository, runs
    /// the daemon on it and prints the address and the admin password.
    /// Ctrl-C stops everything it started (a second Ctrl-C without waiting
    /// for in-flight work). Needs root; on Debian it installs
    /// openssh-server itself when missing.
    Demo {
        /// Where the daemon listens.
        #[arg(long, default_value = "127.0.0.1:8000", value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// Ask for a second factor before terminals and admin actions, as a
        /// daemon does by default (the demo otherwise does not).
        #[arg(long)]
        step_up: bool,
    },
    /// Log in to a daemon; the token is kept in ~/.config/linkops/session.json (mode 0600).
    Login {
        /// User name.
        #[arg(long, short, default_value = "admin")]
        user: String,
        /// Read the password from the first line of stdin instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        /// Sign in through the browser at the daemon's identity provider (name
        /// it when there are several): the CLI waits on a loopback port for the
        /// browser to come back with the session.
        #[arg(long, value_name = "PROVIDER", num_args = 0..=1, default_missing_value = "", conflicts_with_all = ["user", "password_stdin"])]
        sso: Option<String>,
        /// With --sso: print the link instead of opening a browser.
        #[arg(long, requires = "sso")]
        no_browser: bool,
    },
    /// List the machines: health, enrollment, readiness.
    Machines {
        /// Only machines with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only machines whose facts are these: `--where os=debian-12`
        /// (repeatable: all of them; `linkops facts` shows them).
        #[arg(long = "where", value_name = "FACT=VALUE")]
        facts: Vec<String>,
    },
    /// What machines are: OS, kernel, CPUs, memory, disk, pending and
    /// security updates, whether a reboot is required — gathered from each
    /// enrolled machine hourly (`[facts] interval`) and at enrollment.
    ///
    /// With an id: every fact of that machine and what changed lately.
    Facts {
        id: Option<String>,
        /// Only machines with this tag (without an id).
        #[arg(long, conflicts_with = "id")]
        tag: Option<String>,
    },
    /// Run a catalog script on machines and follow its output live.
    ///
    /// Exits 0 when every machine succeeded, 1 when any failed (or was
    /// skipped or stopped), 2 when the run could not start, 3 when it waits
    /// for approvers (`access.yaml`'s approvals; `linkops approvals` lists them).
    Run {
        /// The script's id in scripts.yaml.
        script: String,
        /// A machine to run on (repeatable); with no --target and no --tag, the script's default targets.
        #[arg(long = "target", short = 't', value_name = "MACHINE")]
        targets: Vec<String>,
        /// Every machine with this tag (repeatable).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// A parameter as name=value (repeatable).
        #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Only machines with this fact (repeatable: all of them), e.g.
        /// `--where reboot_required=true` (`linkops facts` shows them); decided
        /// when the run starts.
        #[arg(long = "where", value_name = "FACT=VALUE")]
        facts: Vec<String>,
        /// At most this many machines at once.
        #[arg(long)]
        concurrency: Option<usize>,
        /// Roll out in batches of this many machines (after the canaries); with
        /// any of --batch, --canary, --max-failures the run is a rollout
        /// (defaults: batch 5, no canary, halt at the first failure), and
        /// machines it never reaches are left `held`.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        batch: Option<u32>,
        /// Run on this many machines first, alone; any failure among them halts the rest.
        #[arg(long)]
        canary: Option<u32>,
        /// Halt the rollout after this many failed machines.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        max_failures: Option<u32>,
    },
    /// Run an operation's script again, with the same parameters, on its
    /// machines that failed, timed out or were interrupted (operator); follows
    /// it like `run`.
    Retry { id: u64 },
    /// Declared states: each with its machines by standing; `states ID` shows
    /// where one stands on each machine (drift, the last check's output,
    /// applies, why a machine is held).
    States { id: Option<String> },
    /// Schedules (`schedules/*.yaml`): each one's cron expression and zone,
    /// its next fire as its zone reads it and as yours does, and its latest
    /// fire. With a name: its fires, newest first.
    Schedules { name: Option<String> },
    /// Runs waiting for approvers (`access.yaml`'s approvals), newest first;
    /// with an id, one request and its votes.
    Approvals { id: Option<u64> },
    /// Approve a run waiting for approvers (someone other than who asked,
    /// holding the rule's role over its machines); the last approval needed
    /// starts it.
    Approve {
        id: u64,
        /// Kept with the vote.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Reject a run waiting for approvers: it never runs.
    Reject {
        id: u64,
        /// Why (kept with the vote).
        #[arg(long)]
        comment: String,
    },
    /// Operation history, newest first; `ops logs ID [-f]` shows one's output.
    Ops {
        #[command(subcommand)]
        logs: Option<OpsCommand>,
        #[arg(long)]
        script: Option<String>,
        #[arg(long)]
        machine: Option<String>,
        #[arg(long, value_parser = operation_state)]
        state: Option<OperationState>,
        #[arg(long, default_value = "20")]
        limit: usize,
    },
    /// Stop an operation: unstarted machines never start, running scripts get SIGTERM then SIGKILL.
    Stop { id: u64 },
    /// Sync the config repository now (admin). Exits 1 when the revision was refused.
    Sync,
    /// The daemon, its Git source and the fleet at a glance.
    Status,
    /// Bring a machine into the fleet (admin): over your own SSH access, once,
    /// it installs the trust in the daemon's certificates (user CA,
    /// principals, revocation list, an sshd drop-in checked with `sshd -t`),
    /// a host certificate the daemon signs, and the enrollment id; reloads
    /// sshd (putting everything back if it then fails); and proposes the
    /// machine's entry for links.yaml. Enrolling an enrolled machine changes
    /// nothing.
    ///
    /// `--from FILE` enrolls many: a line per machine, `HOST[:PORT] [ID] [SHA256:…]`
    /// (`#` comments), `--concurrency` at once, a line as each ends and a
    /// summary, their entries proposed together; exit code 1 if any failed.
    Enroll {
        /// The machine's host name or address, as the daemon will reach it.
        #[arg(required_unless_present = "from", conflicts_with = "from")]
        host: Option<String>,
        /// Enroll the machines this file lists instead.
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
        /// With --from: machines enrolled at once.
        #[arg(long, default_value = "4", requires = "from")]
        concurrency: usize,
        #[arg(long, default_value = "22")]
        port: u16,
        /// Its id in links.yaml. Default: the host name's first label.
        #[arg(long, conflicts_with = "from")]
        id: Option<String>,
        /// A tag for its entry (repeatable).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// The login the daemon will use on it.
        #[arg(long, default_value = "root")]
        user: String,
        /// Your own login on it, which enrolls (it writes /etc/ssh: root).
        #[arg(long, default_value = "root")]
        login: String,
        /// Your private key file. Default: the keys of your ssh-agent (SSH_AUTH_SOCK).
        #[arg(long, value_name = "KEY_FILE", conflicts_with_all = ["password", "password_stdin"])]
        identity: Option<PathBuf>,
        /// Log in with your password instead of a key: asked once (for every
        /// machine of --from), never stored.
        #[arg(long, conflicts_with = "password_stdin")]
        password: bool,
        /// The password from the first line of stdin (for scripts).
        #[arg(long)]
        password_stdin: bool,
        /// The host key's fingerprint (`SHA256:…`), checked beforehand; without
        /// it, a key not in your known_hosts is shown for you to confirm.
        #[arg(long, value_name = "SHA256", conflicts_with = "from")]
        host_key_fingerprint: Option<String>,
        /// Commit the entry on a branch `enroll/<id>` of this config-repository
        /// checkout (default: print it).
        #[arg(long, value_name = "CHECKOUT", conflicts_with = "print")]
        repo: Option<PathBuf>,
        /// Print the entry for links.yaml (the default without --repo).
        #[arg(long)]
        print: bool,
        /// With --repo: push the branch to origin.
        #[arg(long, requires = "repo")]
        push: bool,
    },
    /// The SSH certificate authority: its keys' fingerprints, the user CA's
    /// age, the rotation under way and the machines it waits for, the
    /// certificates revoked.
    Ca {
        #[command(subcommand)]
        action: Option<CaCommand>,
    },
    /// What a checkout (e.g. a branch before merging) would change against the
    /// daemon's applied revision, like `flux diff`.
    ///
    /// Exits 0 with no change, 1 with changes, 2 on errors (including an invalid checkout).
    Plan {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Rotate the user CA with an overlap (admin; audited). Without
    /// --finish: the next CA is made and trusted beside the current one,
    /// which still signs; every machine's trust state rolls it out. With
    /// --finish: once every machine logged in to with certificates trusts it
    /// (`linkops ca` names those it waits for), the next CA signs, the old
    /// key is gone, and the trust state stops trusting it.
    Rotate {
        #[arg(long)]
        finish: bool,
        /// Finish although machines are waited for: they refuse the daemon's
        /// logins until they trust the new CA.
        #[arg(long, requires = "finish")]
        force: bool,
    },
    /// Revoke a certificate by its serial (as sshd logs it and operations
    /// record it), or every host certificate of a machine (admin; audited).
    Revoke {
        #[arg(long, required_unless_present = "machine", conflicts_with = "machine")]
        serial: Option<String>,
        #[arg(long)]
        machine: Option<String>,
        /// Why (kept and audited).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum InventoryCommand {
    /// Read Proxmox VE's guests as the checkout's inventory/proxmox.yaml
    /// says (which guests, which tags, which user and address) and commit
    /// the machines they make on its branch (inventory/proxmox unless it
    /// names another), made again from the checkout's head: the entries
    /// between the source's two marker lines in links.yaml are replaced;
    /// entries written by hand are never touched. Push the branch, and the
    /// daemon's plan on it shows what merging would change.
    Sync {
        /// The config repository's checkout.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// The API token's secret, alone in a file of mode 0600
        /// [default: ~/.config/linkops/proxmox-token].
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// The cluster's CA certificate (/etc/pve/pve-root-ca.pem on a
        /// node), when its API's certificate is not one the system trusts.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// Push the branch to origin, replacing an earlier proposal there.
        #[arg(long)]
        push: bool,
    },
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Seal a value as secret NAME and write secrets/NAME.yaml: the value is
    /// read from stdin (one trailing newline dropped) or typed twice at a
    /// prompt, and sealed to recipients.yaml's `all` and, when it is limited
    /// to tags, those tags' recipients. An existing secret keeps the limits
    /// not given.
    Set {
        name: String,
        /// The checkout of the config repository.
        #[arg(long, default_value = ".", value_name = "CHECKOUT")]
        repo: PathBuf,
        #[arg(long)]
        description: Option<String>,
        /// Only this script may use it (repeatable; default: any script).
        #[arg(long = "script", value_name = "SCRIPT")]
        scripts: Vec<String>,
        /// Only machines with this tag (repeatable); also seals it to the tag's recipients.
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Only this machine (repeatable).
        #[arg(long = "machine", value_name = "ID")]
        machines: Vec<String>,
    },
    /// Change secret NAME's value in $VISUAL or $EDITOR (a file only you can
    /// read, in memory where /dev/shm is, wiped after), sealed again.
    Edit {
        name: String,
        #[arg(long, default_value = ".", value_name = "CHECKOUT")]
        repo: PathBuf,
        /// Your age identity, which must open the secret.
        #[arg(long, value_name = "IDENTITY_FILE", default_value_os_t = default_identity())]
        identity: PathBuf,
    },
    /// Seal secrets again (all, or those named) to the recipients
    /// recipients.yaml gives them now: after adding or removing a recipient,
    /// e.g. a new daemon key, or a person who left.
    Rotate {
        names: Vec<String>,
        #[arg(long, default_value = ".", value_name = "CHECKOUT")]
        repo: PathBuf,
        /// Your age identity, which must open every secret rotated.
        #[arg(long, value_name = "IDENTITY_FILE", default_value_os_t = default_identity())]
        identity: PathBuf,
    },
    /// Print the age recipient (`age1…`) of an identity, for recipients.yaml:
    /// the daemon's (from its configuration) unless --identity names another.
    Recipient {
        #[arg(long, value_name = "IDENTITY_FILE")]
        identity: Option<PathBuf>,
    },
}

/// The operator's own age identity: `~/.config/linkops/age-identity.txt`.
fn default_identity() -> PathBuf {
    operator_file("age-identity.txt")
}

/// A file of the operator's LinkOps configuration: `~/.config/linkops/NAME`.
fn operator_file(name: &str) -> PathBuf {
    let config = (std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    config.join("linkops").join(name)
}

#[derive(Subcommand)]
enum OpsCommand {
    /// An operation's output, each line prefixed with its machine.
    Logs {
        id: u64,
        /// Follow a running operation live until it ends.
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy a redb store into an empty PostgreSQL database, in one
    /// transaction, then verify every table (entries and SHA-256) on both
    /// sides. Then set `[store] backend = "postgres"` and `url`.
    Migrate {
        /// The data dir that holds linkops.redb (the daemon stopped).
        #[arg(long, value_name = "DATA_DIR")]
        from: std::path::PathBuf,
        /// postgres://USER@HOST:PORT/DATABASE (no password in it).
        #[arg(long, value_name = "URL")]
        to: String,
        /// A 0600 file holding the database user's password.
        #[arg(long, value_name = "FILE")]
        password_file: Option<std::path::PathBuf>,
    },
    /// Give the filesystem back the space `[retention]` freed inside the
    /// redb store (redb reuses freed pages but never shrinks its file).
    /// The daemon stopped; PostgreSQL stores have VACUUM FULL instead.
    Compact,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user. Prints a generated password unless --password-stdin is given.
    Add {
        name: String,
        /// Over the whole fleet: viewer (read), operator (+ run, stop, terminals,
        /// verify) or admin (+ users, sync); or none: only what access.yaml gives.
        #[arg(long, default_value = "viewer")]
        role: AccountRole,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Set a user's password; older tokens stop working and a lockout is lifted.
    Passwd {
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Change a user's role (the last admin cannot be demoted).
    Role {
        name: String,
        /// none, viewer, operator or admin.
        role: AccountRole,
    },
    /// Delete a user; their tokens stop working. Their records and recordings stay.
    #[command(alias = "rm")]
    Remove { name: String },
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

/// Errors are the operator's to read: the message and its causes, never a
/// backtrace (anyhow would print one whenever RUST_BACKTRACE is set).
/// Writes `bytes` to standard output; a reader that stopped early
/// (`linkops man | head`) is no error.
/// `linkops secret …`: on a checkout, or (`recipient`) the daemon's identity.
fn inventory(action: &InventoryCommand) -> anyhow::Result<()> {
    let InventoryCommand::Sync {
        repo,
        token_file,
        ca_file,
        push,
    } = action;
    let token_file = (token_file.clone()).unwrap_or_else(|| operator_file("proxmox-token"));
    let args = linkops::inventory::SyncArgs {
        repo,
        token_file: &token_file,
        ca_file: ca_file.as_deref(),
        push: *push,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let synced = runtime.block_on(linkops::inventory::sync(&args))?;
    for skipped in &synced.skipped {
        println!("skipped {}: {}", skipped.guest, skipped.why);
    }
    for (sign, ids) in [
        ("+", &synced.added),
        ("-", &synced.removed),
        ("~", &synced.changed),
    ] {
        for id in ids {
            println!("{sign} machine {id}");
        }
    }
    match (synced.committed, *push) {
        (false, _) => println!("links.yaml already holds what Proxmox VE has: nothing to propose"),
        (true, false) => println!(
            "committed on branch {} of {}: push it (`git push --force -u origin {}`) and merge it once its plan looks right",
            synced.branch,
            repo.display(),
            synced.branch
        ),
        (true, true) => println!(
            "committed on branch {} and pushed to origin: merge it once its plan looks right",
            synced.branch
        ),
    }
    Ok(())
}

fn secret(
    action: &SecretCommand,
    config: impl Fn() -> anyhow::Result<Config>,
) -> anyhow::Result<()> {
    match action {
        SecretCommand::Set {
            name,
            repo,
            description,
            scripts,
            tags,
            machines,
        } => {
            let given = |list: &Vec<String>| (!list.is_empty()).then(|| list.clone());
            let targets = (!tags.is_empty() || !machines.is_empty()).then(|| {
                linkops_reconcilers::script::Targets {
                    machines: machines.clone(),
                    tags: tags.clone(),
                    where_: Default::default(),
                }
            });
            let limits = linkops::sealed::files::Limits {
                description: description.clone(),
                scripts: given(scripts),
                targets,
            };
            Ok(offline::secret_set(repo, name, limits)?)
        }
        SecretCommand::Edit {
            name,
            repo,
            identity,
        } => Ok(offline::secret_edit(repo, name, &Keyring::load(identity)?)?),
        SecretCommand::Rotate {
            names,
            repo,
            identity,
        } => Ok(offline::secret_rotate(
            repo,
            names,
            &Keyring::load(identity)?,
        )?),
        SecretCommand::Recipient { identity } => {
            let keyring = match identity {
                Some(path) => Keyring::load(path)?,
                None => Keyring::of_config(&config()?, false)?,
            };
            for recipient in keyring.recipients() {
                println!("{recipient}");
            }
            Ok(())
        }
    }
}

fn print_all(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written,
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // Each cause once: most messages already quote their source.
            let mut message = error.to_string();
            for cause in error.chain().skip(1) {
                let cause = cause.to_string();
                if !message.contains(&cause) {
                    message = format!("{message}: {cause}");
                }
            }
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
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
            linkops::telemetry::init(config.log.format, "info");
            serve(config)
        }
        Command::Validate { dir, identity } => {
            let keyring = identity.as_deref().map(Keyring::load).transpose()?;
            if !offline::validate(dir, keyring.as_ref())? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Secret { action } => secret(action, config),
        Command::Inventory { action } => inventory(action),
        Command::Schema { out } => Ok(offline::write_schemas(out)?),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "linkops", &mut script);
            print_all(&script).context("writing the completions")
        }
        Command::Man => {
            use clap::CommandFactory;
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .context("rendering the man page")?;
            print_all(&page).context("writing the man page")
        }
        #[cfg(feature = "demo")]
        Command::Demo { listen, step_up } => {
            // Runs on here only as root, or when sudo cannot be had (the demo then says what it needs).
            linkops::demo::elevate();
            // Quiet by default: the banner is the point; LINKOPS_LOG=info shows the daemon at work.
            linkops::telemetry::init(linkops::config::LogFormat::Text, "warn");
            demo(*listen, *step_up)
        }
        command @ (Command::Login { .. }
        | Command::Machines { .. }
        | Command::Facts { .. }
        | Command::Run { .. }
        | Command::Retry { .. }
        | Command::States { .. }
        | Command::Schedules { .. }
        | Command::Approvals { .. }
        | Command::Approve { .. }
        | Command::Reject { .. }
        | Command::Ops { .. }
        | Command::Stop { .. }
        | Command::Sync
        | Command::Status
        | Command::Enroll { .. }
        | Command::Ca { .. }
        | Command::Plan { .. }) => {
            let code = match remote(command, cli.server.as_deref(), cli.json) {
                Ok(code) => code,
                Err(error) => {
                    eprintln!("error: {error}");
                    2
                }
            };
            std::process::exit(code)
        }
        Command::User(UserCommand::Add {
            name,
            role,
            password,
        }) => Ok(offline::add_user(
            &config()?,
            name,
            *role,
            password.source(),
        )?),
        Command::User(UserCommand::Passwd { name, password }) => {
            Ok(offline::set_password(&config()?, name, password.source())?)
        }
        Command::User(UserCommand::Role { name, role }) => {
            Ok(offline::change_role(&config()?, name, *role)?)
        }
        Command::User(UserCommand::Remove { name }) => Ok(offline::remove_user(&config()?, name)?),
        Command::Store(StoreCommand::Migrate {
            from,
            to,
            password_file,
        }) => Ok(offline::migrate_store(from, to, password_file.as_deref())?),
        Command::Store(StoreCommand::Compact) => Ok(offline::compact_store(&config()?)?),
    }
}

#[cfg(feature = "demo")]
#[tokio::main]
async fn demo(listen: std::net::SocketAddr, step_up: bool) -> anyhow::Result<()> {
    // A second Ctrl-C cuts the daemon's stop short, but the demo still removes its machines.
    let (abort, aborted) = tokio::sync::oneshot::channel();
    let stop = shutdown_signal(move || {
        abort.send(()).ok();
    })?;
    linkops::demo::run(listen, step_up, stop, aborted).await?;
    Ok(())
}

/// Runs a client command against the daemon; returns the exit code.
#[tokio::main]
async fn remote(command: &Command, server: Option<&str>, json: bool) -> client::Result<i32> {
    if let Command::Login {
        user,
        password_stdin,
        sso,
        no_browser,
    } = command
    {
        let server = server.unwrap_or(client::DEFAULT_SERVER);
        match sso {
            Some(provider) => {
                let provider = Some(provider.as_str()).filter(|p| !p.is_empty());
                client::sso::login(server, provider, !no_browser).await?;
            }
            None => client::login(server, user, *password_stdin).await?,
        }
        return Ok(0);
    }
    // The daemon's health needs no session: `status` tells it without one.
    // An API token from the environment (never an argument: those are visible to every local user).
    let token = std::env::var("LINKOPS_TOKEN")
        .ok()
        .filter(|token| !token.is_empty());
    let client = match command {
        Command::Status if token.is_none() => Client::from_session_if_any(server)?,
        _ => Client::from_session(server, token)?,
    };
    match command {
        Command::Machines { tag, facts } => client::machines(&client, tag.as_deref(), facts, json)
            .await
            .map(|()| 0),
        Command::Facts { id, tag } => client::facts(&client, id.as_deref(), tag.as_deref(), json)
            .await
            .map(|()| 0),
        Command::Run {
            script,
            targets,
            tags,
            params,
            facts,
            concurrency,
            batch,
            canary,
            max_failures,
        } => {
            let rollout =
                (batch.is_some() || canary.is_some() || max_failures.is_some()).then(|| {
                    linkops_reconcilers::rollout::Rollout {
                        batch: batch.unwrap_or(5),
                        canary: canary.unwrap_or(0),
                        max_failures: max_failures.unwrap_or(1),
                    }
                });
            let args = client::RunArgs {
                script,
                machines: targets,
                tags,
                params,
                facts,
                concurrency: *concurrency,
                rollout,
            };
            client::run(&client, args, json).await
        }
        Command::Retry { id } => client::retry(&client, *id, json).await,
        Command::States { id: None } => client::states(&client, json).await.map(|()| 0),
        Command::States { id: Some(id) } => client::state(&client, id, json).await.map(|()| 0),
        Command::Schedules { name } => client::schedules(&client, name.as_deref(), json)
            .await
            .map(|()| 0),
        Command::Approvals { id } => client::approvals(&client, *id, json).await.map(|()| 0),
        Command::Approve { id, comment } => (client::vote(&client, *id, true, comment, json))
            .await
            .map(|()| 0),
        Command::Reject { id, comment } => (client::vote(&client, *id, false, comment, json))
            .await
            .map(|()| 0),
        Command::Ops {
            logs: Some(OpsCommand::Logs { id, follow }),
            ..
        } => client::logs(&client, *id, *follow, json).await,
        Command::Ops {
            logs: None,
            script,
            machine,
            state,
            limit,
        } => {
            let query = linkops::contract::HistoryQuery {
                script: script.clone(),
                machine: machine.clone(),
                state: *state,
                since: None,
                limit: Some(*limit),
            };
            client::ops(&client, &query, json).await.map(|()| 0)
        }
        Command::Stop { id } => client::stop(&client, *id, json).await.map(|()| 0),
        Command::Sync => client::sync(&client, json).await,
        Command::Status => client::status(&client, json).await.map(|()| 0),
        Command::Plan { dir } => client::plan(&client, dir).await,
        Command::Ca { action: None } => client::ca::show(&client, json).await.map(|()| 0),
        Command::Ca {
            action: Some(CaCommand::Rotate { finish, force }),
        } => {
            let request = linkops::contract::RotateRequest {
                finish: *finish,
                force: *force,
            };
            client::ca::rotate(&client, request, json).await.map(|()| 0)
        }
        Command::Ca {
            action:
                Some(CaCommand::Revoke {
                    serial,
                    machine,
                    reason,
                }),
        } => client::ca::revoke(&client, serial.as_deref(), machine.as_deref(), reason, json)
            .await
            .map(|()| 0),
        Command::Enroll {
            host,
            from,
            concurrency,
            port,
            id,
            tags,
            user,
            login,
            identity,
            password,
            password_stdin,
            host_key_fingerprint,
            repo,
            push,
            print: _,
        } => {
            let password = match (password, password_stdin) {
                (false, false) => None,
                (_, stdin) => {
                    let host = host.as_deref().unwrap_or("each machine");
                    let prompt = format!("{login}@{host}'s password (never stored): ");
                    Some(client::read_password(&prompt, *stdin)?)
                }
            };
            let proposal = match repo {
                Some(repo) => client::enroll::Proposal::Branch {
                    repo: repo.clone(),
                    push: *push,
                },
                None => client::enroll::Proposal::Print,
            };
            let args = client::enroll::EnrollArgs {
                host: host.clone().unwrap_or_default(),
                port: *port,
                id: id.clone(),
                tags: tags.clone(),
                user: user.clone(),
                login: login.clone(),
                identity: identity.clone(),
                password,
                host_key_fingerprint: host_key_fingerprint.clone(),
                ask: !password_stdin,
                proposal,
            };
            match from {
                None => Ok(client::enroll::enroll(&client, &args).await?),
                Some(list) => {
                    let text = std::fs::read_to_string(list).map_err(|error| {
                        client::Error::Usage(format!("{}: {error}", list.display()))
                    })?;
                    let listed = client::enroll::parse_list(&text)?;
                    let code = client::enroll::enroll_many(&client, &listed, &args, *concurrency);
                    Ok(code.await?)
                }
            }
        }
        _ => unreachable!("only client commands come here"),
    }
}

/// How long the daemon's exit waits for store calls still running on the
/// blocking pool (one cut off from its database waits out its timeouts):
/// what they would write is fenced or already committed.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let served = runtime.block_on(serve_on(config));
    runtime.shutdown_timeout(EXIT_WAIT);
    served
}

async fn serve_on(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another daemon there? choose another address with --listen or LINKOPS_LISTEN)",
                config.listen
            )
        })?;
    let stop = shutdown_signal(|| {
        tracing::warn!("second signal: aborting");
        std::process::exit(130);
    })?;
    linkops::server::run(config, listener, stop).await?;
    Ok(())
}

/// Completes on the first SIGINT or SIGTERM; a second one exits at once.
///
/// The handlers are installed before this returns, so a signal that arrives
/// while the daemon starts is not lost.
fn shutdown_signal(
    on_second: impl FnOnce() + Send + 'static,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("shutting down: finishing in-flight work (signal again to abort)");
        tokio::spawn(async move {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            on_second();
        });
    })
}

/// `--state NAME`: one of the states the API names.
fn operation_state(name: &str) -> Result<OperationState, String> {
    OperationState::ALL
        .into_iter()
        .find(|state| state.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = OperationState::ALL.iter().map(|s| s.name()).collect();
            format!("no operation state {name:?}; one of {}", names.join(", "))
        })
}
