//! The remote command line of an operation's script.

use std::collections::BTreeMap;

use linkops_reconcilers::script::{ParamValue, Script};
use zeroize::Zeroizing;

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

/// `echo $$; export 'LINKOPS_CA_…=…' 'LINKOPS_PARAM_<NAME>=value' …; exec <interpreter>`.
///
/// Values are quoted for the remote shell, so no value can become code.
/// Parameters named in `secret` are not on the line (which `ps` shows to
/// every user of the machine): the shell reads each from its stdin, ahead
/// of the script ([`secret_input`]), with builtins only (`read`, `printf`),
/// and exports it to the interpreter.
/// sshd starts every session's command in a new session (`setsid`), so the
/// shell's pid, printed first, is the process group of everything the script
/// starts: a stop signals that group, not just the channel. `exec` keeps the
/// pid and lets the interpreter's own exit status or signal through. The
/// login shell must be a POSIX one (sh, dash, bash, ash, zsh), as `$$`,
/// `export` and `read` are.
pub fn command_line(
    script: &Script,
    params: &BTreeMap<String, ParamValue>,
    secret: impl Fn(&str) -> bool,
    trust: &TrustFacts,
) -> Result<String, Error> {
    let mut command = String::from("echo \"$$\";");
    for name in params.keys().filter(|name| secret(name)) {
        let variable = variable(name)?;
        // `%b` turns the `\0ooo` escapes back into bytes; the `x` keeps
        // trailing newlines from `$(…)`, which strips them.
        command.push_str(&format!(
            " IFS= read -r {variable} && {variable}=$(printf '%bx' \"${variable}\") && export {variable}=\"${{{variable}%x}}\" || {{ echo 'linkops: the secret of {variable} did not arrive on stdin' >&2; exit 125; }};"
        ));
    }
    // `export`, not `exec env …`: a builtin, where env is one more program
    // started on the machine for every script (a fifth of a warm fan-out's time).
    command.push_str(" export");
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
    for (name, value) in params.iter().filter(|(name, _)| !secret(name)) {
        let assignment = format!("{}={value}", variable(name)?);
        let quoted = shlex::try_quote(&assignment).map_err(|_| Error::Param {
            name: name.clone(),
            message: "contains a NUL byte".into(),
        })?;
        command.push(' ');
        command.push_str(&quoted);
    }
    command.push_str("; exec ");
    command.push_str(&script.interpreter);
    Ok(command)
}

/// `LINKOPS_PARAM_<NAME>`, for a name that can be one.
fn variable(name: &str) -> Result<String, Error> {
    match name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        true => Ok(format!("LINKOPS_PARAM_{}", name.to_ascii_uppercase())),
        false => Err(Error::ParamName(name.to_owned())),
    }
}

/// What the shell reads ahead of the script for [`command_line`]'s secret
/// parameters, in their order: each value a line of `\0ooo` escapes (so any
/// byte but NUL passes `read` unchanged). Wiped when dropped.
pub fn secret_input<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Zeroizing<Vec<u8>> {
    let values: Vec<&[u8]> = values.into_iter().collect();
    let length = values.iter().map(|value| 5 * value.len() + 1).sum();
    let mut input = Zeroizing::new(Vec::with_capacity(length));
    for value in values {
        for byte in value {
            input.extend_from_slice(&[
                b'\\',
                b'0',
                b'0' + (byte >> 6),
                b'0' + ((byte >> 3) & 7),
                b'0' + (byte & 7),
            ]);
        }
        input.push(b'\n');
    }
    input
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
        let line = command_line(&script, &params, |_| false, &trust).unwrap();
        // Login shells as machines have them: dash (Debian's sh) and bash.
        for shell in ["sh", "bash"] {
            let output = std::process::Command::new(shell)
                .arg("-c")
                .arg(&line)
                .output()
                .unwrap();
            assert!(output.status.success(), "{shell}: {line}");
            let stdout = String::from_utf8(output.stdout).unwrap();
            let (pgid, rest) = stdout.split_once('\n').unwrap();
            assert!(pgid.parse::<u32>().is_ok(), "{stdout}");
            assert_eq!(
                rest,
                "it's $HOME `id` \"q\"\nline two $(touch pwned)\nhtop; rm -rf /\nssh-ed25519 AAAA first\nssh-ed25519 BBBB second\n\n3 18446744073709551615\n",
                "{shell}"
            );
        }
    }

    #[test]
    fn secrets_arrive_on_stdin_whole_and_never_on_the_command_line() {
        use std::io::Write;
        // Every byte but NUL, trailing newlines, quotes and an `x` at the end.
        let awkward: Vec<u8> = (1..=255u8).chain(*b"'\"$(id)\\c\n\nx").collect();
        let params = BTreeMap::from([
            (
                "token".to_owned(),
                ParamValue::String("registry-token".into()),
            ),
            ("db".to_owned(), ParamValue::String("db-password".into())),
            ("plain".to_owned(), ParamValue::String("visible".into())),
        ]);
        // The script (on stdin after the secrets) writes what it sees, raw.
        let script = script("sh");
        let line = command_line(
            &script,
            &params,
            |name| name != "plain",
            &TrustFacts::default(),
        )
        .unwrap();
        assert!(
            !line.contains("db-password") && !line.contains("registry-token"),
            "{line}"
        );
        assert!(line.contains("LINKOPS_PARAM_PLAIN=visible"), "{line}");
        let values: [&[u8]; 2] = [&awkward, b"t0ken"];
        let mut input = secret_input(values).to_vec();
        input.extend_from_slice(b"printf '%s|%s|%s' \"$LINKOPS_PARAM_DB\" \"$LINKOPS_PARAM_TOKEN\" \"$LINKOPS_PARAM_PLAIN\"\n");
        for shell in ["sh", "bash"] {
            let mut child = std::process::Command::new(shell)
                .arg("-c")
                .arg(&line)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&input).unwrap();
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success(), "{shell}: {line}");
            let stdout = output.stdout;
            let after_pid = stdout.iter().position(|b| *b == b'\n').unwrap() + 1;
            let mut expected = awkward.clone();
            expected.extend_from_slice(b"|t0ken|visible");
            assert_eq!(stdout[after_pid..], expected[..], "{shell}");
        }
    }
}
