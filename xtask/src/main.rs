//! LinkOps' development tasks, in the rust-analyzer `xtask` convention:
//!
//! - `cargo xtask test`: every check and test, in CI's order, after installing
//!   the Debian packages they need when missing; then the Debian package's
//!   install, start, upgrade and purge. `.ci/run` calls it.
//! - `cargo xtask deb`: the Debian package, `target/debian/linkops_*.deb`;
//!   `cargo xtask deb-test` only its install-to-purge test.
//!
//! Run as root or as a user with sudo: only apt, the tests (real sshd hosts in
//! their own namespaces) and the package's install are run through sudo.

mod deb;
mod privilege;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use privilege::Root;

/// What the tests need: a command that must exist, and the Debian package that brings it.
const NEEDS: &[(&str, &str)] = &[
    ("/usr/sbin/sshd", "openssh-server"),
    ("ssh-keygen", "openssh-client"),
    ("git", "git"),
    ("unshare", "util-linux"),
    // A router's SSH server: machines reached with a key alone.
    ("/usr/sbin/dropbear", "dropbear-bin"),
    // The partition tests drop a test host's traffic.
    ("/usr/sbin/nft", "nftables"),
    // The console's build and its browser tests.
    ("npm", "npm"),
    ("/usr/bin/chromium", "chromium"),
    // The store's tests and the suite's second pass start their own server.
    ("/usr/lib/postgresql/15/bin/postgres", "postgresql"),
    // The replicas' mutual TLS: a test certificate authority.
    ("/usr/bin/openssl", "openssl"),
    // Secrets sealed by the real age CLI, and ours opened by it.
    ("/usr/bin/age", "age"),
    // Schedules' time zones: the core's tests read the real tz database at build time.
    ("/usr/share/zoneinfo/Europe/Berlin", "tzdata"),
];

const USAGE: &str = "usage: cargo xtask test       every check and test, then the package's install, upgrade and purge
       cargo xtask deb        the Debian package, in target/debian/
       cargo xtask deb-test   only the package's install, start, upgrade, start and purge
As root or as a user with sudo (the tests start sshd hosts in namespaces).";

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    let result = match task.as_deref() {
        Some("test") => test(),
        Some("deb") => {
            deb::build(&workspace(), None).map(|package| println!("{}", package.display()))
        }
        Some("deb-test") => Root::find().and_then(|root| deb::lifecycle(&workspace(), &root)),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn test() -> Result<(), String> {
    let root_dir = workspace();
    let root = Root::find()?;
    install_missing(&root)?;
    let web = root_dir.join("src/web");
    let npm = |args: &[&str]| run(Command::new("npm").arg("--prefix").arg(&web).args(args));
    npm(&["ci", "--no-audit", "--no-fund"])?;
    npm(&["run", "build"])?;
    // The single sign-on tests' OpenID provider (npm's oidc-provider).
    let provider = root_dir.join("tests/oidc-provider");
    run(Command::new("npm").arg("--prefix").arg(&provider).args([
        "ci",
        "--no-audit",
        "--no-fund",
    ]))?;
    // The console is committed and compiled in, and its API types are generated
    // from schemas/openapi.json: rebuilding it must change nothing.
    let changed = output(Command::new("git").current_dir(&root_dir).args([
        "status",
        "--porcelain",
        "--",
        "src/web/dist",
        "src/web/src/contract.ts",
    ]))?;
    if !changed.trim().is_empty() {
        return Err(format!(
            "src/web/dist or src/web/src/contract.ts is not what src/web builds from schemas/openapi.json; commit the rebuilt console:\n{changed}"
        ));
    }
    let runner = root.cargo_runner()?;
    let cargo = || {
        let mut command = Command::new(env!("CARGO"));
        command.current_dir(&root_dir);
        command
    };
    // Built as the user; the test binaries run as root. Here every store
    // test runs on PostgreSQL too: a missing server fails them, not skips.
    let cargo_test = || {
        let mut command = cargo();
        if let Some((variable, value)) = &runner {
            command.env(variable, value);
        }
        // Not LINKOPS_*: those are the daemon's config overrides, refused when unknown.
        command.env("TEST_POSTGRES", "required");
        command
    };
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--locked",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo_test().args(["test", "--locked", "--workspace"]))?;
    // The integration suite again, every daemon's store in PostgreSQL.
    run(cargo_test().env("TEST_STORE_ENGINE", "postgres").args([
        "test",
        "--locked",
        "--test",
        "integration",
    ]))?;
    // A longer run of every fuzz target than the suite's (README has the long campaign).
    run(cargo_test()
        .env(
            "FUZZ_CASES",
            std::env::var("FUZZ_CASES").unwrap_or_else(|_| "20000".into()),
        )
        .args(["test", "--locked", "--test", "integration", "fuzz::"]))?;
    // The browser tests start `linkops demo`, which needs root.
    let browser = run(root.command("npm").arg("--prefix").arg(&web).arg("test"));
    root.give_back(&web.join("test-results"));
    browser?;
    verify_unit(&root_dir, &root_dir.join("target/debug/linkops"))?;
    deb::lifecycle(&root_dir, &root)
}

/// `systemd-analyze verify` of the unit, ExecStart pointed at `binary`; any
/// output fails (verify exits 0 on unknown keys).
fn verify_unit(root_dir: &Path, binary: &Path) -> Result<(), String> {
    if which("systemd-analyze").is_none() {
        eprintln!("xtask: no systemd-analyze here; the unit is not verified");
        return Ok(());
    }
    let unit = std::fs::read_to_string(root_dir.join("deploy/linkopsd.service"))
        .map_err(|e| format!("deploy/linkopsd.service: {e}"))?
        .replace("/usr/bin/linkops", &binary.display().to_string());
    let dir = std::env::temp_dir().join(format!("linkops-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("linkopsd.service"), unit).map_err(|e| e.to_string())?;
    let said = output_and_errors(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(dir.join("linkopsd.service")),
    );
    std::fs::remove_dir_all(&dir).ok();
    let said = said?;
    if !said.trim().is_empty() {
        return Err(format!(
            "systemd-analyze verify deploy/linkopsd.service:\n{said}"
        ));
    }
    eprintln!("systemd-analyze verify deploy/linkopsd.service: ok");
    Ok(())
}

/// Installs the packages of [`NEEDS`] whose command is missing (Debian's apt).
fn install_missing(root: &Root) -> Result<(), String> {
    let missing: Vec<&str> = NEEDS
        .iter()
        .filter(|(command, _)| which(command).is_none())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    root.apt_install(&missing)
}

/// A command's path: as given when absolute, else found on PATH.
fn which(command: &str) -> Option<PathBuf> {
    if command.starts_with('/') {
        return Path::new(command).exists().then(|| command.into());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(command))
        .find(|path| path.exists())
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let status = command.status().map_err(|e| format!("{shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({status})"))
    }
}

/// What a command printed on stdout; it must succeed.
fn output(command: &mut Command) -> Result<String, String> {
    let shown = format!("{command:?}");
    let output = command.output().map_err(|e| format!("{shown}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Everything a command printed, whatever its exit status.
fn output_and_errors(command: &mut Command) -> Result<String, String> {
    let shown = format!("{command:?}");
    let output = command.output().map_err(|e| format!("{shown}: {e}"))?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}
