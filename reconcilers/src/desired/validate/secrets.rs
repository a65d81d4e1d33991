//! Secrets (`secrets/*.yaml`) and who can read them (`recipients.yaml`):
//! names, limits and the sealed value's shape. Whether the daemon can open a
//! value is not decided here (it needs the daemon's key): `linkops validate
//! --identity` and the sync check it beside `load`.

use super::*;
use crate::secret::{ARMOR_BEGIN, ARMOR_END, MAX_SECRET_BYTES, Recipients, Secret};

/// Most bytes a sealed value may take: the largest secret, armored, with
/// room for a few dozen recipients' stanzas.
pub const MAX_SEALED_BYTES: usize = 4 * MAX_SECRET_BYTES;

/// An age X25519 recipient: `age1` and 58 bech32 characters.
static RECIPIENT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("^age1[02-9ac-hj-np-z]{58}$").expect("a valid pattern"));

pub(super) fn check_recipients(
    file: RecipientsFile,
    known: &Known,
    report: &mut Report,
) -> Recipients {
    let listed = |recipients: Vec<Spanned<String>>, report: &mut Report| -> Vec<String> {
        let mut kept = Vec::new();
        for recipient in recipients {
            if !RECIPIENT.is_match(&recipient.value) {
                report.at(
                    &recipient,
                    format!(
                        "{:?} is not an age recipient: it is `age1` and 58 more characters, as `age-keygen -y` or `linkops secret recipient` prints it",
                        recipient.value
                    ),
                );
            } else if !kept.contains(&recipient.value) {
                kept.push(recipient.value);
            }
        }
        kept
    };
    let all = listed(file.all, report);
    let mut tags = BTreeMap::new();
    for (tag, recipients) in file.tags {
        if known.inventory_read && !known.tags.contains(tag.as_str()) {
            let message = format!("tag {tag:?} matches no machine in links.yaml");
            match recipients.first() {
                Some(first) => report.at(first, message),
                None => report.at_start(message),
            }
        }
        tags.insert(tag, listed(recipients, report));
    }
    Recipients { all, tags }
}

/// A secret's file, read: the secret, and the scripts its limit names (checked
/// against the catalog once that is read, by [`check_secret_scripts`]).
pub(super) struct SecretRead {
    pub secret: Secret,
    pub scripts: Vec<Spanned<String>>,
}

pub(super) fn check_secret(
    file: SecretFile,
    path: &str,
    known: &Known,
    report: &mut Report,
) -> SecretRead {
    let SecretFile {
        name,
        description,
        scripts,
        targets,
        value,
    } = file;
    let expected = format!("{}/{}.yaml", super::super::SECRETS_DIR, name.value);
    if path != expected {
        report.at(
            &name,
            format!(
                "secret {:?} must be in {expected}, where `linkops secret` looks for it",
                name.value
            ),
        );
    }
    let targets = targets.map_or_else(Targets::default, |targets| {
        known.no_facts(&targets, "a secret's limit", report);
        known.check_targets(&targets, report)
    });
    let sealed = value.value.trim();
    if value.value.len() > MAX_SEALED_BYTES {
        report.at(
            &value,
            format!(
                "the sealed value is {} bytes; at most {MAX_SEALED_BYTES} (a secret may have at most {MAX_SECRET_BYTES} bytes)",
                value.value.len()
            ),
        );
    } else if !(sealed.starts_with(ARMOR_BEGIN) && sealed.ends_with(ARMOR_END)) {
        report.at(
            &value,
            format!(
                "the value of secret {:?} is not sealed: it must be an ASCII-armored age file ({ARMOR_BEGIN} …), as `linkops secret set` or `age -e -a` writes it — never a value in clear",
                name.value
            ),
        );
    }
    // Kept even when broken (the revision is refused anyway), so that what
    // names it is checked against it rather than called missing.
    SecretRead {
        secret: Secret {
            name: name.value,
            description,
            file: path.to_owned(),
            scripts: scripts.iter().map(|s| s.value.clone()).collect(),
            targets,
            sealed: format!("{sealed}\n"),
        },
        scripts,
    }
}

/// Reports the scripts a secret's limit names that the catalog has not.
pub(super) fn check_secret_scripts(
    read: &BTreeMap<String, SecretRead>,
    scripts: &BTreeMap<String, Script>,
    problems: &mut Vec<Problem>,
) {
    for secret in read.values() {
        let mut report = Report {
            file: &secret.secret.file,
            problems,
        };
        in_catalog(&secret.scripts, scripts, &mut report);
    }
}
