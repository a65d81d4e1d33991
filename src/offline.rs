//! Operator commands that run without the daemon: repository validation,
//! the repository's secrets, schema generation, user management and moving
//! the store between engines.
//!
//! The user commands open the store themselves, so they need the daemon
//! stopped (redb allows one process at a time); the error says so when it is
//! running.

use std::io::BufRead;
use std::path::Path;

use linkops_reconcilers::desired;

use crate::auth::password;
use crate::config::Config;
use crate::sealed::Keyring;
use crate::sealed::files::{self, Checkout, Limits};
use crate::store::{Actor, Store};
use linkops_reconcilers::role::AccountRole;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error(transparent)]
    Secret(#[from] crate::secrets::Error),
    #[error("no store at {path}: is --from the daemon's data dir?")]
    NoStore { path: std::path::PathBuf },
    #[error(transparent)]
    Auth(#[from] crate::auth::Error),
    #[error("reading the password from stdin: {0}")]
    Stdin(std::io::Error),
    #[error("the password read from stdin is empty")]
    EmptyPassword,
    #[error(transparent)]
    Files(#[from] crate::git::FilesError),
    #[error(transparent)]
    Secrets(#[from] crate::sealed::files::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("invalid user name {0:?}: use letters, digits, '.', '_' or '-' (1-64 characters)")]
    InvalidName(String),
    #[error(
        "the store {path} is in use: the daemon is running. While it runs, manage users in the console's Users page or through /api/users (admin); or stop it first (systemctl stop linkopsd)"
    )]
    DaemonRunning { path: std::path::PathBuf },
    #[error(
        "the store {path} is in use: the daemon is running. Compaction rewrites the file: stop it first (systemctl stop linkopsd), compact, then start it again"
    )]
    CompactWhileRunning { path: std::path::PathBuf },
    #[error(
        "the store is in PostgreSQL ({database}): `linkops store compact` rewrites a redb file. PostgreSQL reuses what retention deletes after its (auto)vacuum; `VACUUM FULL` returns the space to the filesystem"
    )]
    CompactPostgres { database: String },
}

/// `linkops validate DIR`: prints every problem as `file:line:col: message`;
/// with a `keyring`, every secret must open with it too (no value is read).
/// Returns whether the repository is valid.
pub fn validate(dir: &Path, keyring: Option<&Keyring>) -> Result<bool, Error> {
    let files = crate::git::read_dir(dir)?;
    // The Proxmox source's rules: read by `linkops inventory sync`, not the daemon.
    let rules = linkops_reconcilers::inventory::PROXMOX_RULES_FILE;
    if let Some(text) = files.get(rules) {
        let text = String::from_utf8_lossy(text);
        if let Err(problem) = linkops_reconcilers::inventory::ProxmoxRules::read(&text) {
            println!("{problem}");
            eprintln!("{}: 1 problem(s)", dir.display());
            return Ok(false);
        }
    }
    let loaded = match keyring {
        Some(keyring) => crate::sealed::load("(working tree)", &files, keyring),
        None => desired::load("(working tree)", &files).and_then(|state| {
            match crate::schedules::unknown_zones(&state) {
                problems if problems.is_empty() => Ok(state),
                problems => Err(problems),
            }
        }),
    };
    match loaded {
        Ok(state) => {
            println!(
                "{}: ok ({} machines, {} scripts, {} run-requests, {} states, {} schedules, {} triggers, {} grants, {} secrets{})",
                dir.display(),
                state.machines.len(),
                state.scripts.len(),
                state.runs.len(),
                state.states.len(),
                state.schedules.len(),
                state.triggers.len(),
                state.grants.len(),
                state.secrets.len(),
                match keyring {
                    Some(_) => ", each opens with the identity given",
                    None => "",
                }
            );
            Ok(true)
        }
        Err(problems) => {
            for problem in &problems {
                println!("{problem}");
            }
            eprintln!("{}: {} problem(s)", dir.display(), problems.len());
            Ok(false)
        }
    }
}

/// `linkops secret set NAME`: the value from stdin or a prompt, sealed and written.
pub fn secret_set(checkout: &Path, name: &str, limits: Limits) -> Result<(), Error> {
    let value = files::read_value()?;
    let (path, recipients) = Checkout::new(checkout).set(name, &value, limits)?;
    println!(
        "wrote {} (sealed to {recipients} recipient(s)); commit and push it",
        path.display()
    );
    Ok(())
}

/// `linkops secret edit NAME`: opened with `keyring`, changed in the editor, sealed again.
pub fn secret_edit(checkout: &Path, name: &str, keyring: &Keyring) -> Result<(), Error> {
    match Checkout::new(checkout).edit(name, keyring, files::in_editor)? {
        true => println!("secret {name} sealed again with its new value; commit and push it"),
        false => println!("secret {name} unchanged"),
    }
    Ok(())
}

/// `linkops secret rotate [NAME…]`: sealed again to recipients.yaml as it is now.
pub fn secret_rotate(checkout: &Path, names: &[String], keyring: &Keyring) -> Result<(), Error> {
    let rotated = Checkout::new(checkout).rotate(names, keyring)?;
    for (name, recipients) in &rotated {
        println!("{name}: sealed to {recipients} recipient(s)");
    }
    println!("{} secret(s) rotated; commit and push them", rotated.len());
    Ok(())
}

/// `linkops schema --out DIR`: writes the JSON Schemas of the repository
/// files and the API's OpenAPI description (`openapi.json`).
pub fn write_schemas(out: &Path) -> Result<(), Error> {
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Write { path, source }
    };
    std::fs::create_dir_all(out).map_err(write_err(out))?;
    let mut api = crate::api::description()
        .to_pretty_json()
        .expect("the description serialises");
    api.push('\n');
    let files = desired::schemas()
        .into_iter()
        .chain([("openapi.json", api)]);
    for (name, text) in files {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(write_err(&path))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Where a new password comes from.
pub enum PasswordSource {
    /// Generate one and print it once.
    Generate,
    /// The first line of standard input (for scripts and password managers).
    Stdin,
}

/// `linkops user add NAME --role ROLE`
pub fn add_user(
    config: &Config,
    name: &str,
    role: AccountRole,
    source: PasswordSource,
) -> Result<(), Error> {
    validate_name(name)?;
    let store = open_store(config)?;
    let (password, generated) = obtain_password(source)?;
    store.create_user(name, role.0, &password::hash(&password)?, &Actor::Cli)?;
    report(name, &password, generated, "created");
    Ok(())
}

/// `linkops user passwd NAME`
pub fn set_password(config: &Config, name: &str, source: PasswordSource) -> Result<(), Error> {
    let store = open_store(config)?;
    let (password, generated) = obtain_password(source)?;
    store.set_password(name, &password::hash(&password)?, &Actor::Cli)?;
    report(name, &password, generated, "updated");
    Ok(())
}

/// `linkops user role NAME ROLE`
pub fn change_role(config: &Config, name: &str, role: AccountRole) -> Result<(), Error> {
    let store = open_store(config)?;
    let user = crate::auth::change_role(&store, &Actor::Cli, name, role.0)?;
    println!("user {} is now {}", user.name, AccountRole(user.role));
    Ok(())
}

/// `linkops user remove NAME`
pub fn remove_user(config: &Config, name: &str) -> Result<(), Error> {
    let store = open_store(config)?;
    let deleted = crate::auth::delete_user(&store, &Actor::Cli, name)?;
    println!(
        "user {} ({}) removed; the name stays retired",
        deleted.user.name,
        AccountRole(deleted.user.role)
    );
    Ok(())
}

/// Copies the redb store of `data_dir` into the PostgreSQL database at `url`, verified.
pub fn migrate_store(
    data_dir: &Path,
    url: &str,
    password_file: Option<&Path>,
) -> Result<(), Error> {
    let password = password_file
        .map(crate::secrets::read_private)
        .transpose()?
        .map(secrecy::SecretString::from);
    let options = crate::store::engine::postgres::Options {
        url: url.to_owned(),
        password,
        pool_size: 4,
    };
    let path = data_dir.join("linkops.redb");
    if !path.exists() {
        return Err(Error::NoStore { path });
    }
    let source = Store::open(&path).map_err(|error| match error {
        crate::store::Error::InUse { path } => Error::DaemonRunning { path },
        error => error.into(),
    })?;
    let target = Store::connect(&options)?;
    eprintln!("copying {} into {} …", path.display(), options.shown());
    let digests = source.copy_into(&target)?;
    println!("{:<22} {:>10}  sha256", "table", "entries");
    for digest in &digests {
        println!(
            "{:<22} {:>10}  {}",
            digest.table, digest.entries, digest.sha256
        );
    }
    println!(
        "verified: every table is the same on both sides. Now set [store] backend = \"postgres\" and url = {url:?}, and start the daemon."
    );
    Ok(())
}

/// `linkops store compact`: rewrites the redb store of `config` without the
/// space retention freed inside it, and says what it returned.
pub fn compact_store(config: &Config) -> Result<(), Error> {
    let path = match crate::store::Location::of(config)? {
        crate::store::Location::Redb(path) => path,
        crate::store::Location::Postgres(options) => {
            return Err(Error::CompactPostgres {
                database: options.shown(),
            });
        }
    };
    if !path.exists() {
        return Err(Error::NoStore { path });
    }
    eprintln!("compacting {} …", path.display());
    let (before, after) = Store::compact(&path).map_err(|error| match error {
        crate::store::Error::InUse { path } => Error::CompactWhileRunning { path },
        error => error.into(),
    })?;
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    println!(
        "{}: {:.1} MiB → {:.1} MiB ({:.1} MiB returned)",
        path.display(),
        mib(before),
        mib(after),
        mib(before.saturating_sub(after))
    );
    Ok(())
}

/// The store, for the user commands; a running daemon holds it, and the error says what to do instead.
fn open_store(config: &Config) -> Result<Store, Error> {
    Store::open_at(&crate::store::Location::of(config)?).map_err(|error| match error {
        crate::store::Error::InUse { path } => Error::DaemonRunning { path },
        error => error.into(),
    })
}

fn validate_name(name: &str) -> Result<(), Error> {
    if crate::auth::valid_user_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_owned()))
    }
}

fn obtain_password(source: PasswordSource) -> Result<(String, bool), Error> {
    match source {
        PasswordSource::Generate => Ok((password::generate(), true)),
        PasswordSource::Stdin => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(Error::Stdin)?;
            let password = line.trim_end_matches(['\r', '\n']).to_owned();
            if password.is_empty() {
                return Err(Error::EmptyPassword);
            }
            Ok((password, false))
        }
    }
}

fn report(name: &str, password: &str, generated: bool, verb: &str) {
    if generated {
        println!("user {name} {verb}; generated password (shown only now):\n\n    {password}\n");
    } else {
        println!("user {name} {verb}");
    }
}
