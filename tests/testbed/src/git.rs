//! Git repositories driven by the real `git`: a config repository a test
//! edits, commits in and pushes from.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A working Git repository a test edits, commits in and pushes from (panics,
/// naming the command, when `git` fails).
pub struct WorkRepo {
    pub dir: PathBuf,
    ssh_command: Option<String>,
}

impl WorkRepo {
    /// `git init` in `dir`, with the files of `template` (if any) committed.
    pub fn new(dir: &Path, template: Option<&Path>) -> WorkRepo {
        std::fs::create_dir_all(dir).unwrap();
        let repo = WorkRepo {
            dir: dir.to_owned(),
            ssh_command: None,
        };
        repo.git(&["init", "-q", "-b", "main"]);
        if let Some(template) = template {
            copy_tree(template, dir);
            repo.commit("initial configuration");
        }
        repo
    }

    /// Pushes over SSH with this key and known_hosts.
    pub fn with_ssh(mut self, key: &Path, known_hosts: &Path) -> WorkRepo {
        self.ssh_command = Some(format!(
            "ssh -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
            key.display(),
            known_hosts.display()
        ));
        self
    }

    pub fn write(&self, path: &str, content: &str) {
        let path = self.dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    pub fn remove(&self, path: &str) {
        std::fs::remove_file(self.dir.join(path)).unwrap();
    }

    pub fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.dir.join(path)).unwrap()
    }

    /// Commits everything; returns the new revision.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&[
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
            "commit",
            "-q",
            "-m",
            message,
        ]);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// Pushes `main` to `url`, forced (the tests rewrite history on purpose).
    pub fn push(&self, url: &str) {
        self.git(&["push", "-q", "--force", url, "main"]);
    }

    pub fn git(&self, args: &[&str]) -> String {
        let mut command = Command::new("git");
        command.arg("-C").arg(&self.dir).args(args);
        if let Some(ssh) = &self.ssh_command {
            command.env("GIT_SSH_COMMAND", ssh);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
