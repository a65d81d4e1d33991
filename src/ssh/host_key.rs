//! Host-key trust: a key pinned in the inventory wins, otherwise the daemon's
//! known_hosts decides; an unknown key is refused unless trust-on-first-use is on.

use russh::keys::{HashAlg, PublicKey};

/// What LinkOps knows about the key a machine should present.
#[derive(Debug, Clone, Default)]
pub struct ExpectedKeys {
    /// From `host_key` in the inventory.
    pub pinned: Option<PublicKey>,
    /// known_hosts entries for this host and port, with their line numbers.
    pub known: Vec<(usize, PublicKey)>,
}

/// The judgement on a presented host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Trusted,
    /// Nothing is recorded for the host.
    Unknown,
    /// Something is recorded and the presented key is not it.
    Changed {
        recorded: String,
    },
}

impl ExpectedKeys {
    /// Judges `presented`. Deliberately strict: when known_hosts holds any key
    /// for the host, a key of another algorithm counts as changed rather than
    /// unknown, so that trust-on-first-use cannot be used to swap keys.
    pub fn judge(&self, presented: &PublicKey) -> Verdict {
        if let Some(pinned) = &self.pinned {
            return if same_key(pinned, presented) {
                Verdict::Trusted
            } else {
                Verdict::Changed {
                    recorded: format!("pinned host_key {}", fingerprint(pinned)),
                }
            };
        }
        if self
            .known
            .iter()
            .any(|(_, known)| same_key(known, presented))
        {
            return Verdict::Trusted;
        }
        match self.known.first() {
            None => Verdict::Unknown,
            Some((line, known)) => Verdict::Changed {
                recorded: format!("known_hosts line {line}: {}", fingerprint(known)),
            },
        }
    }
}

fn same_key(a: &PublicKey, b: &PublicKey) -> bool {
    // Comments differ between known_hosts and the wire; compare key material.
    a.key_data() == b.key_data()
}

/// The SHA256 fingerprint OpenSSH shows (`SHA256:…`).
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two distinct ed25519 keys, OpenSSH format.
    const ED_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJLRD9goelOI6ECRycLZktBm08vwIzJJXhSmuzIPFjHi a";
    const ED_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBL2+7ZUt/pXFbF4mqp0FcwlMtwUcIZ/v3vCXdoBOHFc b";

    fn key(line: &str) -> PublicKey {
        PublicKey::from_openssh(line).unwrap()
    }

    #[test]
    fn nothing_recorded_is_unknown() {
        assert_eq!(ExpectedKeys::default().judge(&key(ED_A)), Verdict::Unknown);
    }

    #[test]
    fn known_key_is_trusted_whatever_its_comment() {
        let expected = ExpectedKeys {
            pinned: None,
            known: vec![(3, key(&ED_A.replace(" a", " other")))],
        };
        assert_eq!(expected.judge(&key(ED_A)), Verdict::Trusted);
    }

    #[test]
    fn other_key_for_a_known_host_is_changed_and_names_the_line() {
        let expected = ExpectedKeys {
            pinned: None,
            known: vec![(7, key(ED_A))],
        };
        match expected.judge(&key(ED_B)) {
            Verdict::Changed { recorded } => assert!(recorded.contains("line 7"), "{recorded}"),
            other => panic!("expected Changed, got {other:?}"),
        }
    }

    #[test]
    fn pinned_key_wins_over_known_hosts() {
        let expected = ExpectedKeys {
            pinned: Some(key(ED_B)),
            known: vec![(1, key(ED_A))],
        };
        assert!(matches!(
            expected.judge(&key(ED_A)),
            Verdict::Changed { .. }
        ));
        assert_eq!(expected.judge(&key(ED_B)), Verdict::Trusted);
    }
}
