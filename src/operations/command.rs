//! The remote command line of an operation's script.

use std::collections::BTreeMap;

use linkops_reconcilers::script::Script;

use super::Error;

/// `env 'LINKOPS_PARAM_<NAME>=value' … setsid -w sh -c 'echo $$; exec <interpreter>'`.
///
/// Values are quoted for the remote shell, so no value can become code. The
/// script runs in a session of its own whose id it prints first, so that a
/// stop can signal its whole process group rather than just the channel.
pub fn command_line(script: &Script, params: &BTreeMap<String, String>) -> Result<String, Error> {
    let mut command = String::from("env");
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
    let inner = format!("echo \"$$\"; exec {}", script.interpreter);
    let inner = shlex::try_quote(&inner).map_err(|_| Error::Param {
        name: "interpreter".into(),
        message: "contains a NUL byte".into(),
    })?;
    command.push_str(" setsid -w sh -c ");
    command.push_str(&inner);
    Ok(command)
}

/// The command that signals a script's process group.
pub fn signal_group(pgid: u32, signal: &str) -> String {
    format!("kill -{signal} -- -{pgid} 2>/dev/null; true")
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
            interpreter: interpreter.into(),
            params: vec![],
            timeout: Duration::from_secs(1),
            max_parallel: None,
            targets: Targets::default(),
        }
    }

    #[test]
    fn parameters_are_quoted_not_spliced() {
        let params = BTreeMap::from([
            ("package".to_owned(), "htop; rm -rf /".to_owned()),
            (
                "note".to_owned(),
                "it's $HOME `id` \"q\"\nline two $(touch pwned)".to_owned(),
            ),
        ]);
        // The interpreter prints what the script would see.
        let script = script("printenv LINKOPS_PARAM_NOTE LINKOPS_PARAM_PACKAGE");
        let line = command_line(&script, &params).unwrap();
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
            "it's $HOME `id` \"q\"\nline two $(touch pwned)\nhtop; rm -rf /\n"
        );
    }
}
