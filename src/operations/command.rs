//! The remote command line of an operation's script.

use std::collections::BTreeMap;

use linkops_reconcilers::script::{ParamValue, Script};

use super::Error;

/// What every script is told of the trust machines hold in the daemon (a
/// declared state keeps it on them: `examples/config-repo/states/linkops-trust.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustFacts {
    /// `LINKOPS_CA_USER_KEYS`: the user CAs machines trust, an OpenSSH line each.
    pub user_cas: String,
    /// `LINKOPS_CA_REVOKED_SERIALS`: user-certificate serials revoked and not
    /// yet expired, space-separated, ascending.
    pub revoked_serials: String,
}

impl TrustFacts {
    /// The facts as one text, for a declared state's digest.
    pub fn as_text(&self) -> String {
        format!("{}\n{}", self.user_cas, self.revoked_serials)
    }
}

/// `echo $$; exec env 'LINKOPS_CA_…=…' 'LINKOPS_PARAM_<NAME>=value' … <interpreter>`.
///
/// Values are quoted for the remote shell, so no value can become code.
/// sshd starts every session's command in a new session (`setsid`), so the
/// shell's pid, printed first, is the process group of everything the script
/// starts: a stop signals that group, not just the channel. `exec` keeps the
/// pid and lets the interpreter's own exit status or signal through.
pub fn command_line(
    script: &Script,
    params: &BTreeMap<String, ParamValue>,
    trust: &TrustFacts,
) -> Result<String, Error> {
    let mut command = String::from("echo \"$$\"; exec env");
    for (name, value) in [
        ("LINKOPS_CA_USER_KEYS", &trust.user_cas),
        ("LINKOPS_CA_REVOKED_SERIALS", &trust.revoked_serials),
    ] {
        let assignment = format!("{name}={value}");
        // Keys and decimal serials: nothing to refuse.
        let quoted = shlex::try_quote(&assignment).unwrap_or_default();
        command.push(' ');
        command.push_str(&quoted);
    }
    for (name, value) in params {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::ParamName(name.clone()));
        }
        let assignment = format!("LINKOPS_PARAM_{}={value}", name.to_ascii_uppercase());
        let quoted = shlex::try_quote(&assignment).map_err(|_| Error::Param {
            name: name.clone(),
            message: "contains a NUL byte".into(),
        })?;
        command.push(' ');
        command.push_str(&quoted);
    }
    command.push(' ');
    command.push_str(&script.interpreter);
    Ok(command)
}

/// The command that signals a script's process group. (No `--`: dash's
/// `kill` refuses it, and a signal given first makes `-pgid` unambiguous.)
pub fn signal_group(pgid: u32, signal: &str) -> String {
    format!("kill -{signal} -{pgid} 2>/dev/null; true")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use linkops_reconcilers::script::Targets;

    use super::*;

    fn script(interpreter: &str) -> Script {
        Script {
            id: "s".into(),
            name: "s".into(),
            description: String::new(),
            body: String::new(),
            check: None,
            interpreter: interpreter.into(),
            params: vec![],
            timeout: Duration::from_secs(1),
            max_parallel: None,
            targets: Targets::default(),
        }
    }

    #[test]
    fn signalling_the_group_ends_every_process_in_it() {
        use std::io::BufRead;
        // A group like a script's: a shell and a child of its own; it says when it is ready.
        let mut group = std::process::Command::new("setsid")
            .args(["sh", "-c", "sleep 30 & echo ready; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        std::io::BufReader::new(group.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        // `setsid` execs (it is not a group leader when spawned here), so its pid is the group id.
        let pgid = group.id();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(signal_group(pgid, "TERM"))
            .status()
            .unwrap();
        assert!(status.success());
        assert!(!group.wait().unwrap().success());
        // Dead processes may linger as zombies until reaped; none may still run.
        let ps = std::process::Command::new("ps")
            .args(["-o", "stat=", "-g", &pgid.to_string()])
            .output()
            .unwrap();
        let running: Vec<String> = String::from_utf8_lossy(&ps.stdout)
            .lines()
            .filter(|stat| !stat.trim_start().starts_with('Z'))
            .map(str::to_owned)
            .collect();
        assert!(
            running.is_empty(),
            "still running in the group: {running:?}"
        );
    }

    #[test]
    fn parameters_are_quoted_not_spliced() {
        let params = BTreeMap::from([
            (
                "package".to_owned(),
                ParamValue::String("htop; rm -rf /".into()),
            ),
            (
                "note".to_owned(),
                ParamValue::String("it's $HOME `id` \"q\"\nline two $(touch pwned)".into()),
            ),
        ]);
        // The interpreter prints what the script would see.
        let script = script(
            "printenv LINKOPS_PARAM_NOTE LINKOPS_PARAM_PACKAGE LINKOPS_CA_USER_KEYS LINKOPS_CA_REVOKED_SERIALS",
        );
        let trust = TrustFacts {
            user_cas: "ssh-ed25519 AAAA first\nssh-ed25519 BBBB second\n".into(),
            revoked_serials: "3 18446744073709551615".into(),
        };
        let line = command_line(&script, &params, &trust).unwrap();
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(&line)
            .output()
            .unwrap();
        assert!(output.status.success(), "{line}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let (pgid, rest) = stdout.split_once('\n').unwrap();
        assert!(pgid.parse::<u32>().is_ok(), "{stdout}");
        assert_eq!(
            rest,
            "it's $HOME `id` \"q\"\nline two $(touch pwned)\nhtop; rm -rf /\nssh-ed25519 AAAA first\nssh-ed25519 BBBB second\n\n3 18446744073709551615\n"
        );
    }
}
