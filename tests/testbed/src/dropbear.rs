//! A Dropbear host: the SSH server routers run, which takes no certificates —
//! reached with a key alone (`auth: key`). Its own loopback address, mount
//! and PID namespaces, `/etc/linkops`, and the test user's home (holding the
//! fleet's client key in `.ssh/authorized_keys`, as Dropbear reads it).

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command};

use super::host::{
    Server, free_port, known_hosts_line, lease_address, spawn_in_namespace, stop_namespace,
};
use super::{Error, Result, TEST_USER, TestFleet, io_error, read, run, set_mode, write};

const DROPBEAR: &str = "/usr/sbin/dropbear";
const DROPBEARKEY: &str = "/usr/bin/dropbearkey";

pub struct DropbearHost {
    name: String,
    address: Ipv4Addr,
    port: u16,
    uuid: String,
    host_public_key: String,
    /// `None` once stopped.
    server: Option<Child>,
    _address_lease: std::os::unix::net::UnixListener,
}

impl TestFleet {
    /// Starts a Dropbear host, `name`, enrolled (its `client_id` holds
    /// `LINKOPS-<its uuid>`), that lets the test user in with the fleet's
    /// client key.
    pub fn start_dropbear(&self, name: &str) -> Result<DropbearHost> {
        for (program, fix) in [
            (DROPBEAR, "apt-get install -y dropbear-bin"),
            (DROPBEARKEY, "apt-get install -y dropbear-bin"),
        ] {
            if !Path::new(program).exists() {
                return Err(Error::Missing { program, fix });
            }
        }
        let (address, lease) = lease_address()?;
        let port = free_port(address)?;
        let dir = self.dir().join(name);
        let etc_dir = dir.join("etc-linkops");
        fs::create_dir_all(&etc_dir).map_err(|source| io_error(&etc_dir, source))?;
        set_mode(&dir, 0o755)?;
        let uuid = uuid::Uuid::new_v4().to_string();
        let client_id = etc_dir.join("client_id");
        write(&client_id, &format!("LINKOPS-{uuid}\n"))?;
        set_mode(&client_id, 0o644)?;

        let host_key = dir.join("dropbear_ed25519_host_key");
        run(Command::new(DROPBEARKEY)
            .args(["-t", "ed25519", "-f"])
            .arg(&host_key))?;
        let printed = Command::new(DROPBEARKEY)
            .arg("-y")
            .arg("-f")
            .arg(&host_key)
            .output()
            .map_err(|source| io_error(Path::new(DROPBEARKEY), source))?;
        let host_public_key = String::from_utf8_lossy(&printed.stdout)
            .lines()
            .find(|line| line.starts_with("ssh-ed25519 "))
            .map(str::to_owned)
            .ok_or_else(|| Error::Command {
                command: format!("{DROPBEARKEY} -y -f {}", host_key.display()),
                output: String::from_utf8_lossy(&printed.stderr).into_owned(),
            })?;

        // The test user's home as Dropbear checks it: theirs, not writable by others.
        let home = dir.join("home");
        let ssh_dir = home.join(".ssh");
        fs::create_dir_all(&ssh_dir).map_err(|source| io_error(&ssh_dir, source))?;
        let authorized_keys = ssh_dir.join("authorized_keys");
        write(
            &authorized_keys,
            &read(&self.client_key().with_extension("pub"))?,
        )?;
        set_mode(&home, 0o755)?;
        set_mode(&ssh_dir, 0o700)?;
        set_mode(&authorized_keys, 0o600)?;
        run(Command::new("chown").args(["-R", TEST_USER]).arg(&home))?;
        let user_home = home_of(TEST_USER)?;

        let server = Server {
            name,
            mounts: &[(&etc_dir, "/etc/linkops"), (&home, &user_home)],
            // -s: no passwords; -w: no root; -P: no pid file of the machine's own.
            command: format!(
                "{DROPBEAR} -F -E -s -w -r {} -p {address}:{port} -P {}",
                host_key.display(),
                dir.join("dropbear.pid").display()
            ),
            log: &dir.join("dropbear.log"),
            // Logged once its socket listens (a refused one says "Failed listening").
            listening: "Not backgrounding",
        };
        let server = spawn_in_namespace(&server)?;
        Ok(DropbearHost {
            name: name.to_owned(),
            address,
            port,
            uuid,
            host_public_key,
            server: Some(server),
            _address_lease: lease,
        })
    }
}

impl DropbearHost {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its host key, an OpenSSH public key line.
    pub fn host_public_key(&self) -> &str {
        &self.host_public_key
    }

    /// Its `links.yaml` entry: the test user, the fleet's key, tagged `tag`.
    pub fn inventory_entry(&self, tag: &str) -> String {
        format!(
            "  - id: {name}\n    name: Dropbear {name}\n    host: {address}\n    port: {port}\n    user: {TEST_USER}\n    key: fleet_key\n    auth: key\n    uuid: {uuid}\n    tags: [{tag}]\n",
            name = self.name,
            address = self.address,
            port = self.port,
            uuid = self.uuid,
        )
    }

    /// Its known_hosts line.
    pub fn known_hosts_line(&self) -> String {
        known_hosts_line(self.address, self.port, &self.host_public_key)
    }
}

impl Drop for DropbearHost {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            stop_namespace(server);
        }
    }
}

/// A user's home directory, as the system's user database says.
fn home_of(user: &str) -> Result<String> {
    let output = Command::new("getent")
        .args(["passwd", user])
        .output()
        .map_err(|source| io_error(Path::new("getent"), source))?;
    let entry = String::from_utf8_lossy(&output.stdout);
    entry
        .trim()
        .split(':')
        .nth(5)
        .filter(|home| home.starts_with('/'))
        .map(str::to_owned)
        .ok_or_else(|| Error::Command {
            command: format!("getent passwd {user}"),
            output: entry.into_owned(),
        })
}
