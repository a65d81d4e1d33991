//! The Debian package: built with cargo-deb, then, on this machine, installed,
//! started as its unit starts it, upgraded with an operator's edit kept, and
//! purged without a trace.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::privilege::Root;
use crate::{output, output_and_errors, run, which};

/// The cargo-deb this project's packaging is written for.
const CARGO_DEB: &str = "3.8.0";
/// The unit's TimeoutStartSec: READY=1 must come within it.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const PACKAGE: &str = "linkops";

/// Builds `target/debian/linkops_<version>-<revision>_<arch>.deb` (revision 1
/// unless given): the release binary, its man page and completions, the unit,
/// the config, the maintainer scripts.
pub fn build(root_dir: &Path, revision: Option<&str>) -> Result<PathBuf, String> {
    let cargo = || {
        let mut command = Command::new(env!("CARGO"));
        command.current_dir(root_dir);
        command
    };
    if which("cargo-deb").is_none() {
        eprintln!("xtask: installing cargo-deb {CARGO_DEB}");
        run(cargo().args(["install", "--locked", "cargo-deb", "--version", CARGO_DEB]))?;
    }
    run(cargo().args(["build", "--release", "--locked", "--bin", "linkops"]))?;
    let binary = root_dir.join("target/release/linkops");
    let assets = root_dir.join("target/assets");
    std::fs::create_dir_all(&assets).map_err(|e| format!("{}: {e}", assets.display()))?;
    let generated = [
        (vec!["man"], "linkops.1"),
        (vec!["completions", "bash"], "linkops.bash"),
        (vec!["completions", "zsh"], "_linkops"),
        (vec!["completions", "fish"], "linkops.fish"),
    ];
    for (args, name) in generated {
        let text = output(Command::new(&binary).args(&args))?;
        let path = assets.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    // Debian's man pages are gzipped; -n keeps the package reproducible.
    run(Command::new("gzip")
        .args(["-9", "-n", "-f"])
        .arg(assets.join("linkops.1")))?;
    let mut deb = cargo();
    deb.args(["deb", "--no-build", "--package", PACKAGE]);
    if let Some(revision) = revision {
        deb.args(["--deb-revision", revision]);
    }
    let said = output(&mut deb)?;
    let path = said
        .lines()
        .rev()
        .find(|line| line.ends_with(".deb"))
        .ok_or_else(|| format!("cargo deb named no package: {said}"))?;
    Ok(PathBuf::from(path.trim()))
}

/// Install, start, upgrade, start again, purge — each step checked.
pub fn lifecycle(root_dir: &Path, root: &Root) -> Result<(), String> {
    if which("dpkg").is_none() {
        eprintln!("xtask: no dpkg here (not Debian); the package is not built or tested");
        return Ok(());
    }
    if installed_version().is_some() {
        eprintln!(
            "xtask: {PACKAGE} is installed on this machine; the package test installs and purges it, so it did not run"
        );
        return Ok(());
    }
    // Each kept aside at once: a cargo-deb run removes the packages it made before.
    let dir = std::env::temp_dir().join(format!("linkops-packages-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let aside = |built: PathBuf| -> Result<PathBuf, String> {
        let kept = dir.join(built.file_name().unwrap_or_default());
        std::fs::copy(&built, &kept).map_err(|e| format!("{}: {e}", built.display()))?;
        Ok(kept)
    };
    let tested = (|| {
        let second = aside(build(root_dir, Some("2"))?)?;
        // The first last, so that target/debian/ holds the package as `cargo xtask deb` makes it.
        let first = aside(build(root_dir, None)?)?;
        install_upgrade(root, &first, &second)
    })();
    // Also when a build failed: nothing is left in the temp dir.
    std::fs::remove_dir_all(&dir).ok();
    // Whatever happened, the machine is left as it was.
    let purged = purge(root);
    tested?;
    purged?;
    eprintln!("xtask: package install, start, upgrade, start, purge: ok");
    Ok(())
}

fn install_upgrade(root: &Root, first: &Path, second: &Path) -> Result<(), String> {
    let field = |deb: &Path| {
        output(
            Command::new("dpkg-deb")
                .arg("--field")
                .arg(deb)
                .arg("Version"),
        )
        .map(|v| v.trim().to_owned())
    };
    let (version, upgrade) = (field(first)?, field(second)?);
    install(root, first, &version)?;
    // The binary says the version the package has, without its Debian revision.
    let upstream = version
        .rsplit_once('-')
        .map_or(version.as_str(), |(v, _)| v);
    let said = output(Command::new("/usr/bin/linkops").arg("--version"))?;
    expect(
        "linkops --version",
        said.trim(),
        &format!("linkops {upstream}"),
    )?;
    check_installed(root)?;
    let started = start(root)?;
    expect_contains("the first start's stderr", &started, "LINKOPS FIRST START")?;

    // The operator edits the config; an upgrade keeps the edit and the data.
    let edit = "# edited by the operator: kept across upgrades";
    run(root
        .command("sh")
        .arg("-c")
        .arg(format!("echo '{edit}' >> /etc/linkops/config.toml")))?;
    install(root, second, &upgrade)?;
    let config = output(root.command("cat").arg("/etc/linkops/config.toml"))?;
    expect_contains("/etc/linkops/config.toml after the upgrade", &config, edit)?;
    check_installed(root)?;
    let restarted = start(root)?;
    // The store, and the admin made on the first start, survived.
    if restarted.contains("LINKOPS FIRST START") {
        return Err(format!(
            "the upgraded daemon made a new admin: the data dir did not survive\n{restarted}"
        ));
    }
    Ok(())
}

/// The user, the modes, the files, the unit.
fn check_installed(root: &Root) -> Result<(), String> {
    let account = output(Command::new("getent").args(["passwd", "linkops"]))?;
    let fields: Vec<&str> = account.trim().split(':').collect();
    expect(
        "the linkops user's home and shell",
        &fields[5..].join(":"),
        "/var/lib/linkops:/usr/sbin/nologin",
    )?;
    let uid: u32 = fields[2]
        .parse()
        .map_err(|_| format!("getent: {account}"))?;
    if uid >= 1000 {
        return Err(format!("linkops is not a system user (uid {uid})"));
    }
    for (path, expected) in [
        ("/etc/linkops", "root:linkops 750"),
        ("/etc/linkops/config.toml", "root:linkops 640"),
        ("/var/lib/linkops", "linkops:linkops 700"),
        ("/var/lib/linkops/keys", "linkops:linkops 700"),
        ("/var/lib/linkops/ssh", "linkops:linkops 700"),
    ] {
        let mode = output(root.command("stat").args(["-c", "%U:%G %a", path]))?;
        expect(path, mode.trim(), expected)?;
    }
    let files = output(Command::new("dpkg").args(["-L", PACKAGE]))?;
    for file in [
        "/usr/bin/linkops",
        "/usr/share/man/man1/linkops.1.gz",
        "/usr/share/bash-completion/completions/linkops",
        "/usr/share/zsh/vendor-completions/_linkops",
        "/usr/share/fish/vendor_completions.d/linkops.fish",
        "/usr/share/doc/linkops/README.md",
    ] {
        if !files.lines().any(|line| line == file) {
            return Err(format!("the package has no {file}:\n{files}"));
        }
    }
    let unit = unit_path(&files)?;
    if which("systemd-analyze").is_some() {
        let said = output_and_errors(Command::new("systemd-analyze").arg("verify").arg(&unit))?;
        if !said.trim().is_empty() {
            return Err(format!("systemd-analyze verify {unit}:\n{said}"));
        }
    }
    Ok(())
}

fn unit_path(files: &str) -> Result<String, String> {
    files
        .lines()
        .find(|line| line.ends_with("/systemd/system/linkopsd.service"))
        .map(str::to_owned)
        .ok_or_else(|| format!("the package has no linkopsd.service:\n{files}"))
}

/// Starts the daemon as the installed unit says (its ExecStart, User, Group
/// and Environment; systemd itself is not running here), waits for its
/// READY=1 through NOTIFY_SOCKET, reads /health, stops it with SIGTERM and
/// checks it exits 0. Returns what it wrote on stderr.
fn start(root: &Root) -> Result<String, String> {
    let files = output(Command::new("dpkg").args(["-L", PACKAGE]))?;
    let unit = std::fs::read_to_string(unit_path(&files)?).map_err(|e| e.to_string())?;
    let setting = |key: &'static str| {
        unit.lines()
            .filter_map(move |line| line.strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
    };
    let exec: Vec<&str> = setting("ExecStart")
        .next()
        .ok_or("the unit has no ExecStart")?
        .split_whitespace()
        .collect();
    let user = setting("User").next().ok_or("the unit has no User")?;
    let group = setting("Group").next().ok_or("the unit has no Group")?;

    let dir = std::env::temp_dir().join(format!("linkops-deb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = (|| {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let socket_path = dir.join("notify");
        let notify = UnixDatagram::bind(&socket_path).map_err(|e| e.to_string())?;
        // The daemon runs as its own user and must be able to write to it.
        std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| e.to_string())?;
        notify
            .set_read_timeout(Some(START_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let stderr_path = dir.join("stderr");
        let stderr = std::fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
        let mut command = root.command("setpriv");
        command
            .args([
                &format!("--reuid={user}"),
                &format!("--regid={group}"),
                "--init-groups",
                "--",
            ])
            .args(&exec)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("LINKOPS_LISTEN", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for assignment in setting("Environment") {
            if let Some((name, value)) = assignment.split_once('=') {
                command.env(name, value);
            }
        }
        let mut daemon = command.spawn().map_err(|e| format!("{command:?}: {e}"))?;
        let ready = wait_ready(&notify).and_then(|()| health(port));
        let stopped = stop(root, &mut daemon);
        let said = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        ready.map_err(|e| format!("{e}\nthe daemon said:\n{said}"))?;
        stopped.map_err(|e| format!("{e}\nthe daemon said:\n{said}"))?;
        Ok(said)
    })();
    std::fs::remove_dir_all(&dir).ok();
    result
}

fn wait_ready(notify: &UnixDatagram) -> Result<(), String> {
    let mut buffer = [0u8; 4096];
    loop {
        let read = notify
            .recv(&mut buffer)
            .map_err(|e| format!("no READY=1 from the daemon within {START_TIMEOUT:?}: {e}"))?;
        let message = String::from_utf8_lossy(&buffer[..read]);
        if message.lines().any(|line| line == "READY=1") {
            return Ok(());
        }
    }
}

/// GET /health must answer 200.
fn health(port: u16) -> Result<(), String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("connecting to the daemon: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("reading /health: {e}"))?;
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(format!("/health answered:\n{answer}"));
    }
    eprintln!(
        "xtask: the installed daemon answers /health: {}",
        answer.lines().last().unwrap_or_default()
    );
    Ok(())
}

/// SIGTERM (sudo, when it runs the daemon, relays it), then a clean exit
/// within the unit's stop timeout (systemd's default, 90 s), else SIGKILL.
fn stop(root: &Root, daemon: &mut Child) -> Result<(), String> {
    const STOP_TIMEOUT: Duration = Duration::from_secs(90);
    let pid = daemon.id().to_string();
    run(root.command("kill").args(["-TERM", &pid]))?;
    let deadline = std::time::Instant::now() + STOP_TIMEOUT;
    // std has no wait with a timeout: look every 100 ms.
    let status = loop {
        if let Some(status) = daemon.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            run(root.command("kill").args(["-KILL", &pid])).ok();
            daemon.wait().ok();
            return Err(format!(
                "the daemon did not exit within {STOP_TIMEOUT:?} of SIGTERM"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        return Err(format!(
            "the daemon did not exit cleanly on SIGTERM: {status}"
        ));
    }
    Ok(())
}

/// Purges the package, then checks nothing of it is left.
fn purge(root: &Root) -> Result<(), String> {
    if installed_version().is_some() {
        run(root
            .command("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["purge", "-y", "-qq", "-o", "Dpkg::Use-Pty=0", PACKAGE]))?;
    }
    for path in [
        "/usr/bin/linkops",
        "/etc/linkops",
        "/var/lib/linkops",
        "/etc/systemd/system/multi-user.target.wants/linkopsd.service",
    ] {
        if Path::new(path).exists() {
            return Err(format!("{path} is still there after the purge"));
        }
    }
    for database in ["passwd", "group"] {
        let left = Command::new("getent")
            .args([database, "linkops"])
            .output()
            .is_ok_and(|o| o.status.success());
        if left {
            return Err(format!("the purge left linkops in {database}"));
        }
    }
    Ok(())
}

/// Installs (or upgrades to) the package file, non-interactively; then
/// `version` must be the one installed.
fn install(root: &Root, package: &Path, version: &str) -> Result<(), String> {
    run(root
        .command("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "-o", "Dpkg::Use-Pty=0"])
        .arg(package))?;
    expect(
        "the installed version",
        installed_version().as_deref().unwrap_or("none"),
        version,
    )
}

/// The installed package's version, if it is installed.
fn installed_version() -> Option<String> {
    let said = output(Command::new("dpkg-query").args([
        "--show",
        "--showformat=${db:Status-Status} ${Version}",
        PACKAGE,
    ]))
    .ok()?;
    said.strip_prefix("installed ").map(str::to_owned)
}

fn expect(what: &str, actual: &str, expected: &str) -> Result<(), String> {
    if actual == expected {
        return Ok(());
    }
    Err(format!("{what}: expected {expected:?}, found {actual:?}"))
}

fn expect_contains(what: &str, text: &str, needle: &str) -> Result<(), String> {
    if text.contains(needle) {
        return Ok(());
    }
    Err(format!("{what} does not contain {needle:?}:\n{text}"))
}
