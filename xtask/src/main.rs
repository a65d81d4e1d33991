//! `cargo xtask test`: every check and test LinkOps has, in CI's order, after
//! installing the Debian packages they need when missing. `.ci/run` calls it.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// What the tests need: a command that must exist, and the Debian package that brings it.
const NEEDS: &[(&str, &str)] = &[
    ("/usr/sbin/sshd", "openssh-server"),
    ("ssh-keygen", "openssh-client"),
    ("git", "git"),
    ("unshare", "util-linux"),
    // The partition tests drop a test host's traffic.
    ("nft", "nftables"),
    // The console's build and its browser tests.
    ("npm", "npm"),
    ("/usr/bin/chromium", "chromium"),
];

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    let result = match task.as_deref() {
        Some("test") => test(),
        _ => {
            eprintln!(
                "usage: cargo xtask test   (every check and test; as root: the tests start sshd hosts in namespaces)"
            );
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

fn test() -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned();
    if !is_root() {
        return Err("the tests start real sshd hosts in their own mount namespaces and need root: run it as root (e.g. `sudo -E env PATH=\"$PATH\" cargo xtask test`)".into());
    }
    install_missing()?;
    let web = root.join("src/web");
    let npm = |args: &[&str]| run(Command::new("npm").arg("--prefix").arg(&web).args(args));
    npm(&["ci", "--no-audit", "--no-fund"])?;
    npm(&["run", "build"])?;
    // The console is committed and compiled in: rebuilding it must change nothing.
    let changed = output(Command::new("git").current_dir(&root).args([
        "status",
        "--porcelain",
        "--",
        "src/web/dist",
    ]))?;
    if !changed.trim().is_empty() {
        return Err(format!(
            "src/web/dist is not what src/web builds; commit the rebuilt bundle:\n{changed}"
        ));
    }
    let cargo = |args: &[&str]| run(Command::new(env!("CARGO")).current_dir(&root).args(args));
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--locked",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--locked", "--workspace"])?;
    // A longer run of every fuzz target than the suite's (README has the long campaign).
    run(Command::new(env!("CARGO"))
        .current_dir(&root)
        .env(
            "FUZZ_CASES",
            std::env::var("FUZZ_CASES").unwrap_or_else(|_| "20000".into()),
        )
        .args(["test", "--locked", "--test", "integration", "fuzz::"]))?;
    npm(&["test"])?;
    verify_unit(&root)
}

/// `systemd-analyze verify` of the unit, ExecStart pointed at the binary just
/// built; any output fails (verify exits 0 on unknown keys).
fn verify_unit(root: &Path) -> Result<(), String> {
    if which("systemd-analyze").is_none() {
        eprintln!("xtask: no systemd-analyze here; the unit is not verified");
        return Ok(());
    }
    let unit = std::fs::read_to_string(root.join("deploy/linkopsd.service"))
        .map_err(|e| format!("deploy/linkopsd.service: {e}"))?
        .replace(
            "/usr/local/bin/linkops",
            &root.join("target/debug/linkops").display().to_string(),
        );
    let dir = std::env::temp_dir().join(format!("linkops-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("linkopsd.service"), unit).map_err(|e| e.to_string())?;
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("linkopsd.service"))
        .output()
        .map_err(|e| format!("systemd-analyze: {e}"))?;
    std::fs::remove_dir_all(&dir).ok();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    if !said.trim().is_empty() {
        return Err(format!(
            "systemd-analyze verify deploy/linkopsd.service:\n{said}"
        ));
    }
    eprintln!("systemd-analyze verify deploy/linkopsd.service: ok");
    Ok(())
}

/// Installs the packages of [`NEEDS`] whose command is missing (Debian's apt).
fn install_missing() -> Result<(), String> {
    let missing: Vec<&str> = NEEDS
        .iter()
        .filter(|(command, _)| which(command).is_none())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    // policy-rc.d 101: do not start the system's own sshd; the tests start theirs.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    std::fs::write(policy, "#!/bin/sh\nexit 101\n")
        .map_err(|e| format!("{}: {e}", policy.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", policy.display()))?;
    let installed = run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq"])
        .args(&missing));
    std::fs::remove_file(policy).ok();
    installed
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
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

fn output(command: &mut Command) -> Result<String, String> {
    let shown = format!("{command:?}");
    let output = command.output().map_err(|e| format!("{shown}: {e}"))?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
