//! Secrets of the config repository (`secrets/<name>.yaml`): a value sealed
//! with age to the recipients `recipients.yaml` names, and where it may be
//! used — which scripts, on which machines. What may be decided about a secret
//! without its value is decided here; sealing and opening are the daemon's.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::machine::Machine;
use crate::script::{ParamType, ParamValue, Script, Targets};

/// Longest value a secret may have, in bytes: passwords, tokens and keys
/// (an RSA-4096 private key in PEM is about 3.3 KiB) fit many times over. The
/// value travels on the script's stdin, five bytes per byte.
pub const MAX_SECRET_BYTES: usize = 16 << 10;

/// The first line of an ASCII-armored age file: what `value:` must hold.
pub const ARMOR_BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";
pub const ARMOR_END: &str = "-----END AGE ENCRYPTED FILE-----";

/// A secret as the repository declares it: never its value in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Secret {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The file it was read from (`secrets/<name>.yaml`).
    pub file: String,
    /// The scripts that may use it; any script when empty.
    #[serde(default)]
    pub scripts: Vec<String>,
    /// The machines it may reach; any machine when empty.
    #[serde(default)]
    pub targets: Targets,
    /// The value, age-encrypted and ASCII-armored (`age -d` reads it as is),
    /// as the repository holds it.
    pub sealed: String,
}

/// Who can read the secrets (`recipients.yaml`): age recipients (`age1…`)
/// for every secret, and more for the secrets limited to a tag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recipients {
    /// Every secret is sealed to these: the daemon's, and those who edit every secret.
    #[serde(default)]
    pub all: Vec<String>,
    /// A secret limited to machines with one of these tags is also sealed to
    /// the tag's recipients, and only a secret so limited.
    #[serde(default)]
    pub tags: BTreeMap<String, Vec<String>>,
}

impl Recipients {
    /// The recipients `secret` is sealed to, each once, in the file's order.
    pub fn of(&self, secret: &Secret) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        let tagged = (secret.targets.tags.iter())
            .filter_map(|tag| self.tags.get(tag))
            .flatten();
        (self.all.iter().chain(tagged))
            .map(String::as_str)
            .filter(|recipient| seen.insert(*recipient))
            .collect()
    }
}

impl Secret {
    /// Why `script` may not use the secret on `machines`, or `None` when it may:
    /// the first thing refused, naming the limit and where it is written.
    pub fn refusal<'a>(
        &self,
        script: &str,
        machines: impl IntoIterator<Item = &'a Machine>,
    ) -> Option<String> {
        if !self.scripts.is_empty() && !self.scripts.iter().any(|s| s == script) {
            return Some(format!(
                "secret {:?} may be used by script(s) {} only, not by {script:?} ({})",
                self.name,
                self.scripts.join(", "),
                self.file
            ));
        }
        if self.targets.is_empty() {
            return None;
        }
        let outside: Vec<&str> = machines
            .into_iter()
            .filter(|machine| !self.reaches(machine))
            .map(|machine| machine.id.as_str())
            .collect();
        if outside.is_empty() {
            return None;
        }
        Some(format!(
            "secret {:?} may reach {} only; {} {} not among them ({})",
            self.name,
            self.limit(),
            shown(&outside),
            if outside.len() == 1 { "is" } else { "are" },
            self.file
        ))
    }

    /// Whether the secret may reach `machine`.
    pub fn reaches(&self, machine: &Machine) -> bool {
        self.targets.is_empty()
            || self.targets.machines.contains(&machine.id)
            || machine
                .tags
                .iter()
                .any(|tag| self.targets.tags.contains(tag))
    }

    /// Its machine limit in words.
    fn limit(&self) -> String {
        let mut parts = Vec::new();
        if !self.targets.tags.is_empty() {
            parts.push(format!(
                "machines tagged {}",
                self.targets.tags.join(" or ")
            ));
        }
        if !self.targets.machines.is_empty() {
            parts.push(self.targets.machines.join(", "));
        }
        parts.join(" and ")
    }
}

/// The secrets `script`'s `secret` parameters name in `params`, by parameter
/// name (a name without its secret is left out: the ask that named it was refused).
pub fn named(
    script: &Script,
    params: &BTreeMap<String, ParamValue>,
    secrets: &BTreeMap<String, Secret>,
) -> BTreeMap<String, Secret> {
    (script.params.iter())
        .filter(|spec| spec.kind == ParamType::Secret)
        .filter_map(|spec| match params.get(&spec.name) {
            Some(ParamValue::String(name)) => Some((spec.name.clone(), secrets.get(name)?.clone())),
            _ => None,
        })
        .collect()
}

/// A few machine ids, then how many more.
fn shown(ids: &[&str]) -> String {
    const SHOWN: usize = 5;
    match ids.len() {
        n if n <= SHOWN => ids.join(", "),
        n => format!("{} and {} more", ids[..SHOWN].join(", "), n - SHOWN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::machine;

    fn secret(scripts: &[&str], tags: &[&str], machines: &[&str]) -> Secret {
        Secret {
            name: "db-password".into(),
            description: String::new(),
            file: "secrets/db-password.yaml".into(),
            scripts: scripts.iter().map(|s| (*s).into()).collect(),
            targets: Targets {
                machines: machines.iter().map(|s| (*s).into()).collect(),
                tags: tags.iter().map(|s| (*s).into()).collect(),
                where_: Default::default(),
            },
            sealed: String::new(),
        }
    }

    #[test]
    fn a_secret_is_refused_to_scripts_and_machines_outside_its_limits() {
        let (db1, web1, web2) = (
            machine("db1", &["db"]),
            machine("web1", &["web"]),
            machine("web2", &["web"]),
        );
        let table: [(Secret, &str, Vec<&Machine>, Option<&str>); 6] = [
            (secret(&[], &[], &[]), "any", vec![&db1, &web1], None),
            (
                secret(&["backup"], &["db"], &[]),
                "backup",
                vec![&db1],
                None,
            ),
            (
                secret(&["backup"], &[], &[]),
                "restore",
                vec![&db1],
                Some(
                    "secret \"db-password\" may be used by script(s) backup only, not by \"restore\" (secrets/db-password.yaml)",
                ),
            ),
            (
                secret(&[], &["db"], &[]),
                "backup",
                vec![&db1, &web1, &web2],
                Some(
                    "secret \"db-password\" may reach machines tagged db only; web1, web2 are not among them (secrets/db-password.yaml)",
                ),
            ),
            // Named machines reach too.
            (
                secret(&[], &["db"], &["web1"]),
                "backup",
                vec![&db1, &web1],
                None,
            ),
            (
                secret(&[], &[], &["web1"]),
                "backup",
                vec![&web2],
                Some(
                    "secret \"db-password\" may reach web1 only; web2 is not among them (secrets/db-password.yaml)",
                ),
            ),
        ];
        for (secret, script, machines, expected) in table {
            assert_eq!(
                secret.refusal(script, machines).as_deref(),
                expected,
                "{secret:?} for {script}"
            );
        }
    }

    #[test]
    fn a_secret_is_sealed_to_everyone_s_recipients_and_its_tags_only() {
        let recipients = Recipients {
            all: vec!["age1daemon".into(), "age1alice".into()],
            tags: BTreeMap::from([
                ("db".into(), vec!["age1bob".into(), "age1alice".into()]),
                ("web".into(), vec!["age1carol".into()]),
            ]),
        };
        assert_eq!(
            recipients.of(&secret(&[], &["db"], &[])),
            ["age1daemon", "age1alice", "age1bob"]
        );
        // Not limited to a tag: no tag's recipient reads it.
        assert_eq!(
            recipients.of(&secret(&[], &[], &["web1"])),
            ["age1daemon", "age1alice"]
        );
    }
}
