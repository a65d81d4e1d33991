//! A real PostgreSQL server for tests and benchmarks: Debian's `postgresql`
//! binaries, a cluster made with `initdb` in a temporary directory, listening
//! on a loopback port only, with password (SCRAM) authentication.
//!
//! As root the server runs as `nobody` (PostgreSQL refuses root). It is
//! started under a small `sh` guard that reads its standard input: when the
//! test process ends — even killed — the pipe closes and the guard stops
//! the server at once, so no server outlives its tests. A second guard, as
//! the test's own user, then removes the cluster's directory: servers kept
//! in a `static` are never dropped, and nothing may stay in the temp dir.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The superuser the tests connect as.
pub const USER: &str = "linkops";
/// Where Debian installs the server binaries, by version.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// `nobody`: the server's account when the tests run as root.
const NOBODY: u32 = 65534;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no PostgreSQL server binaries under {DEBIAN_ROOT}/*/bin (install Debian's `postgresql` package; `cargo xtask test` does)"
    )]
    NoServer,
    #[error("test PostgreSQL: {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("test PostgreSQL: {what} failed: {output}")]
    Failed { what: String, output: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A database of the server, and how to reach it.
#[derive(Debug, Clone)]
pub struct Database {
    /// `postgres://linkops@127.0.0.1:PORT/NAME`, without the password.
    pub url: String,
    /// The password of [`USER`] (a test secret).
    pub password: String,
}

/// A running server; stopped on drop (or when this process ends), its
/// directory removed then.
pub struct TestPostgres {
    dir: PathBuf,
    /// The cleaner's standard input: closed, it removes `dir` once the server stopped.
    _cleaner: ChildStdin,
    bin: PathBuf,
    port: u16,
    password: String,
    guard: Option<(Child, ChildStdin)>,
    databases: AtomicU32,
    /// Databases [`TestPostgres::database_named`] made.
    named: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl TestPostgres {
    /// Makes a cluster and starts its server.
    pub fn start() -> Result<TestPostgres, Error> {
        let bin = server_binaries()?;
        let dir = tempfile::Builder::new()
            .prefix("linkops-postgres-")
            .tempdir()
            .map_err(io("temporary directory"))?
            .keep();
        let cleaner = cleaner(&dir)?;
        let password = uuid::Uuid::new_v4().simple().to_string();
        let data = dir.join("data");
        std::fs::create_dir(&data).map_err(io("data directory"))?;
        let password_file = dir.join("password");
        std::fs::write(&password_file, &password).map_err(io("password file"))?;
        if as_root() {
            use std::os::unix::fs::PermissionsExt;
            // `nobody` must reach its directories: the temporary one opened, the rest its own.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                .map_err(io("temporary directory"))?;
            for path in [&data, &password_file] {
                std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY))
                    .map_err(io("chown to nobody"))?;
            }
        }
        let mut initdb = server_command(&bin.join("initdb"));
        initdb
            .arg("--pgdata")
            .arg(&data)
            .args([
                "--username",
                USER,
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
            ])
            .arg("--no-sync")
            .arg(format!("--pwfile={}", password_file.display()));
        run(&mut initdb, "initdb")?;
        let port = free_port()?;
        let mut server = TestPostgres {
            dir,
            _cleaner: cleaner,
            bin,
            port,
            password,
            guard: None,
            databases: AtomicU32::new(0),
            named: Default::default(),
        };
        server.resume()?;
        Ok(server)
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new, empty database, and how to reach it.
    pub fn database(&self) -> Result<Database, Error> {
        let number = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("linkops_{number}");
        self.create(&name)?;
        Ok(self.reach(&name))
    }

    /// The database named `name`, created when it does not exist yet.
    pub fn database_named(&self, name: &str) -> Result<Database, Error> {
        let mut named = self.named.lock().expect("never poisoned");
        if !named.contains(name) {
            self.create(name)?;
            named.insert(name.to_owned());
        }
        Ok(self.reach(name))
    }

    fn create(&self, name: &str) -> Result<(), Error> {
        let mut createdb = Command::new(self.bin.join("createdb"));
        createdb
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--username", USER, name])
            .env("PGPASSWORD", &self.password);
        run(&mut createdb, "createdb")
    }

    /// The password of [`USER`] (a test secret).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// How to reach database `name`.
    fn reach(&self, name: &str) -> Database {
        Database {
            url: format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port),
            password: self.password.clone(),
        }
    }

    /// Stops the server at once, as a crash would (`immediate`: no checkpoint).
    pub fn stop(&mut self) -> Result<(), Error> {
        if let Some((mut child, stdin)) = self.guard.take() {
            drop(stdin);
            child.wait().map_err(io("wait for the server to stop"))?;
        }
        Ok(())
    }

    /// Starts the stopped server again, on the same port and data.
    pub fn resume(&mut self) -> Result<(), Error> {
        if self.guard.is_some() {
            return Ok(());
        }
        let data = self.dir.join("data");
        let postgres = self.bin.join("postgres");
        // The guard stops the server as soon as its standard input closes.
        let script = r#"postgres="$1"; shift
"$postgres" "$@" </dev/null &
server=$!
read -r _ignored
kill -QUIT "$server" 2>/dev/null
wait "$server"
"#;
        let mut guard = server_command(Path::new("/bin/sh"));
        guard
            .args(["-c", script, "linkops-test-postgres"])
            .arg(&postgres)
            .arg("-D")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", &format!("port={}", self.port)])
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=300"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        let mut child = guard.spawn().map_err(io("start postgres"))?;
        let stdin = child.stdin.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        // Ready when the server says so; its log goes on to our stderr.
        let mut lines = BufReader::new(stderr).lines();
        let mut log = Vec::new();
        let ready = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    let ready = line.contains("ready to accept connections");
                    log.push(line);
                    if ready {
                        break true;
                    }
                }
                _ => break false,
            }
        };
        if !ready {
            let _ = child.wait();
            return Err(Error::Failed {
                what: "start postgres".into(),
                output: log.join("\n"),
            });
        }
        std::thread::spawn(move || {
            // Clients hear their own errors; the test log gets the server's
            // failures only (a dropped connection is no news in these tests).
            let mut out = std::io::stderr();
            for line in lines.map_while(Result::ok) {
                if line.contains("FATAL:") || line.contains("PANIC:") {
                    let _ = writeln!(out, "postgres: {line}");
                }
            }
        });
        self.guard = Some((child, stdin));
        Ok(())
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Removes `dir` once its standard input closes (this process ended, or the
/// server was dropped) and the server has stopped: PostgreSQL removes
/// `postmaster.pid` as it exits (waited for at most 10 s).
fn cleaner(dir: &Path) -> Result<ChildStdin, Error> {
    let script = r#"read -r _ignored
tries=0
while [ -e "$1/data/postmaster.pid" ] && [ "$tries" -lt 100 ]; do sleep 0.1; tries=$((tries+1)); done
rm -rf "$1"
"#;
    let mut child = Command::new("/bin/sh")
        .args(["-c", script, "linkops-test-postgres-cleaner"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(io("start the directory's cleaner"))?;
    // It is never waited for: it outlives this process by design.
    Ok(child.stdin.take().expect("piped"))
}

fn as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A command that runs as the server's account.
fn server_command(program: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(program);
    if as_root() {
        command.uid(NOBODY).gid(NOBODY);
    }
    command
}

/// The newest installed server's `bin` directory.
fn server_binaries() -> Result<PathBuf, Error> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_ROOT)
        .map_err(|_| Error::NoServer)?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or(Error::NoServer)
}

fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("pick a port"))?;
    Ok(listener.local_addr().map_err(io("pick a port"))?.port())
}

fn run(command: &mut Command, what: &str) -> Result<(), Error> {
    let output = command.output().map_err(io(what))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Failed {
        what: what.into(),
        output: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
