//! Root for what needs it, and nothing else: as root, commands run as they
//! are; as a user, through sudo (which may ask for the password once).

use std::path::Path;
use std::process::Command;

use crate::{output, run, which};

pub struct Root {
    sudo: bool,
}

impl Root {
    pub fn find() -> Result<Root, String> {
        let uid = output(Command::new("id").arg("-u"))?;
        if uid.trim() == "0" {
            return Ok(Root { sudo: false });
        }
        if which("sudo").is_none() {
            return Err("the tests start real sshd hosts in their own mount namespaces and the package test installs a package: run it as root, or as a user with sudo".into());
        }
        eprintln!("xtask: running apt, the tests and the package's install through sudo");
        Ok(Root { sudo: true })
    }

    /// `program` as root, with this environment and PATH.
    pub fn command(&self, program: &str) -> Command {
        if !self.sudo {
            return Command::new(program);
        }
        let mut command = Command::new("sudo");
        // sudo resets PATH to its secure_path; npm and node may live elsewhere.
        command.arg("--preserve-env").arg("env");
        if let Some(path) = std::env::var_os("PATH") {
            let mut assignment = std::ffi::OsString::from("PATH=");
            assignment.push(path);
            command.arg(assignment);
        }
        command.arg(program);
        command
    }

    /// Cargo's runner setting for this host's target, so that `cargo test`
    /// builds as the user and runs the test binaries as root: (variable,
    /// value). None as root: cargo runs them itself.
    pub fn cargo_runner(&self) -> Result<Option<(String, String)>, String> {
        if !self.sudo {
            return Ok(None);
        }
        let version = output(Command::new("rustc").arg("-vV"))?;
        let host = version
            .lines()
            .find_map(|line| line.strip_prefix("host: "))
            .ok_or("rustc -vV names no host")?;
        let variable = format!(
            "CARGO_TARGET_{}_RUNNER",
            host.to_uppercase().replace(['-', '.'], "_")
        );
        Ok(Some((variable, "sudo --preserve-env".to_owned())))
    }

    /// Installs Debian packages, starting no service they bring.
    pub fn apt_install(&self, packages: &[&str]) -> Result<(), String> {
        run(self.command("apt-get").args(["update", "-qq"]))?;
        // policy-rc.d 101: do not start the system's own sshd; the tests start theirs.
        run(self.command("sh").args([
            "-c",
            "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d",
        ]))?;
        let installed = run(self
            .command("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq"])
            .args(packages));
        run(self.command("rm").args(["-f", "/usr/sbin/policy-rc.d"])).ok();
        installed
    }

    /// Hands files made as root back to the user.
    pub fn give_back(&self, path: &Path) {
        if !self.sudo || !path.exists() {
            return;
        }
        let Ok(owner) = output(Command::new("id").arg("-u")).and_then(|uid| {
            output(Command::new("id").arg("-g")).map(|gid| format!("{}:{}", uid.trim(), gid.trim()))
        }) else {
            return;
        };
        run(self.command("chown").arg("-R").arg(owner).arg(path)).ok();
    }
}
