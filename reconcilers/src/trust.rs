//! What a machine holds to trust the daemon, and what enrolling it changes.
//!
//! A machine trusts the daemon's user CA for the logins it names (sshd's
//! `TrustedUserCAKeys` and `AuthorizedPrincipalsFile`), reads the revocation
//! list (`RevokedKeys`), presents a host certificate of the daemon's host CA
//! (`HostCertificate`) — all through one drop-in in `sshd_config.d` — and
//! holds its enrollment id. `linkops enroll` reads what is there, asks
//! [`plan`] what to write, and writes only that: enrolling an enrolled
//! machine changes nothing. It proposes the machine's inventory entry
//! ([`inventory_entry`]) for review in Git.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::enrollment::{CLIENT_ID_PATH, expected_client_id};
use crate::machine::{Auth, Machine};
use crate::state::{DeclaredState, Standing, Target};

/// Where the files the trust state keeps current live: a directory of the
/// daemon's login's own, so the trust state replaces each file whole (a
/// rename) — sshd reads them at every login and never sees one half-written.
pub const KEPT_DIR: &str = "/etc/ssh/linkops/kept";
/// The user CA(s) the machine trusts, one OpenSSH line each.
pub const USER_CA_PATH: &str = "/etc/ssh/linkops/kept/user_ca.pub";
/// One file per login the daemon may use, naming the principal it accepts.
pub const PRINCIPALS_DIR: &str = "/etc/ssh/linkops/principals";
/// The key revocation list sshd reads; created empty, kept current by LinkOps.
pub const REVOKED_KEYS_PATH: &str = "/etc/ssh/linkops/kept/revoked_keys";
/// The serials the revocation list was made of, as the daemon told them
/// (what the trust state compares; the list itself is binary).
pub const REVOKED_SERIALS_PATH: &str = "/etc/ssh/linkops/kept/revoked_serials";
/// The tag enrolling gives a machine: the trust state
/// (`examples/config-repo/states/linkops-trust.yaml`) keeps the machines so tagged.
pub const TRUST_TAG: &str = "linkops-trust";
/// The sshd drop-in naming the files above (read through the stock
/// `Include /etc/ssh/sshd_config.d/*.conf`; the first value sshd reads wins).
pub const SSHD_DROP_IN_PATH: &str = "/etc/ssh/sshd_config.d/linkops.conf";
/// A host certificate with less left than this is renewed by enrolling again.
pub const HOST_CERTIFICATE_RENEWAL: Duration = Duration::from_secs(30 * 24 * 3600);

/// What a machine is to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    /// The user CAs it trusts (two while one is being rotated out).
    pub user_cas: Vec<String>,
    /// The login the daemon uses on it.
    pub login: String,
    /// Its enrollment id.
    pub uuid: String,
    /// Where its host certificate is (`<host key>-cert.pub`).
    pub host_certificate_path: String,
}

/// A file enrolling writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedFile {
    pub path: String,
    pub content: String,
    /// Written only when absent (the revocation list: LinkOps keeps it
    /// current, enrolling again must not empty it).
    pub only_if_absent: bool,
    /// Owned by the daemon's login, which keeps it current through the trust
    /// state (the CAs and the revocation list; the login is in the
    /// principals file alone, so no other account opens by them).
    pub owned_by_login: bool,
}

impl ManagedFile {
    fn kept(path: &str, content: String) -> ManagedFile {
        ManagedFile {
            path: path.to_owned(),
            content,
            only_if_absent: false,
            owned_by_login: false,
        }
    }

    fn kept_current_by_the_daemon(
        path: &str,
        content: String,
        only_if_absent: bool,
    ) -> ManagedFile {
        ManagedFile {
            path: path.to_owned(),
            content,
            only_if_absent,
            owned_by_login: true,
        }
    }
}

/// The files `trust` consists of (the host certificate aside: it is signed
/// only when [`host_certificate_current`] says so).
pub fn files(trust: &Trust) -> Vec<ManagedFile> {
    let user_cas: String = trust
        .user_cas
        .iter()
        .map(|line| format!("{}\n", line.trim()))
        .collect();
    let drop_in = format!(
        "# Written by `linkops enroll`: sshd accepts the LinkOps daemon's certificates\n\
         # for the logins named in {PRINCIPALS_DIR} and presents its own host certificate.\n\
         TrustedUserCAKeys {USER_CA_PATH}\n\
         AuthorizedPrincipalsFile {PRINCIPALS_DIR}/%u\n\
         RevokedKeys {REVOKED_KEYS_PATH}\n\
         HostCertificate {}\n",
        trust.host_certificate_path
    );
    vec![
        ManagedFile::kept(
            CLIENT_ID_PATH,
            format!("{}\n", expected_client_id(&trust.uuid)),
        ),
        ManagedFile::kept_current_by_the_daemon(USER_CA_PATH, user_cas, false),
        ManagedFile::kept(
            &format!("{PRINCIPALS_DIR}/{}", trust.login),
            format!("{}\n", trust.login),
        ),
        ManagedFile::kept_current_by_the_daemon(REVOKED_KEYS_PATH, String::new(), true),
        ManagedFile::kept_current_by_the_daemon(REVOKED_SERIALS_PATH, String::new(), true),
        ManagedFile::kept(SSHD_DROP_IN_PATH, drop_in),
    ]
}

/// What enrolling writes, and whether sshd must reload to read it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub writes: Vec<ManagedFile>,
    pub reload_sshd: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// The files of `wanted` whose content on the machine (`observed`: path to
/// content, absent files missing) differs; sshd reloads when any but the
/// enrollment id changes.
pub fn plan(wanted: Vec<ManagedFile>, observed: &BTreeMap<String, String>) -> Plan {
    let writes: Vec<ManagedFile> = wanted
        .into_iter()
        .filter(|file| match observed.get(&file.path) {
            Some(_) if file.only_if_absent => false,
            Some(content) => *content != file.content,
            None => true,
        })
        .collect();
    let reload_sshd = writes.iter().any(|file| file.path != CLIENT_ID_PATH);
    Plan {
        writes,
        reload_sshd,
    }
}

/// The uuid a machine keeps: the one its client id already names, else `new`.
pub fn enrollment_uuid(client_id: Option<&str>, new: &str) -> String {
    client_id
        .and_then(|content| content.trim().strip_prefix("LINKOPS-"))
        .filter(|uuid| uuid::Uuid::try_parse(uuid).is_ok())
        .map_or_else(|| new.to_owned(), str::to_owned)
}

/// A host certificate found on a machine, as the daemon's host CA judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundCertificate {
    /// Signed by the daemon's host CA, for the key sshd presents.
    pub ours: bool,
    pub principals: Vec<String>,
    /// Unix seconds.
    pub valid_before: u64,
}

/// Whether the machine's host certificate still serves: ours, naming every
/// one of `names`, and not within [`HOST_CERTIFICATE_RENEWAL`] of its end.
pub fn host_certificate_current(
    found: Option<&FoundCertificate>,
    names: &[String],
    now: u64,
) -> bool {
    found.is_some_and(|found| {
        found.ours
            && names.iter().all(|name| found.principals.contains(name))
            && found.valid_before > now.saturating_add(HOST_CERTIFICATE_RENEWAL.as_secs())
    })
}

/// A machine's inventory entry, as enrolling proposes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMachine {
    pub id: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub uuid: String,
    pub tags: Vec<String>,
}

/// The machine's entry in `links.yaml`'s list (indented by `indent`), logging
/// in with certificates.
pub fn inventory_entry(machine: &NewMachine, indent: &str) -> String {
    let mut entry = format!(
        "{indent}- id: {}\n{indent}  name: {}\n{indent}  host: {}\n",
        scalar(&machine.id),
        scalar(&machine.id),
        scalar(&machine.host)
    );
    if machine.port != 22 {
        entry.push_str(&format!("{indent}  port: {}\n", machine.port));
    }
    entry.push_str(&format!(
        "{indent}  user: {}\n{indent}  uuid: {}\n{indent}  auth: certificate\n",
        scalar(&machine.user),
        machine.uuid
    ));
    if !machine.tags.is_empty() {
        let tags: Vec<String> = machine.tags.iter().map(|tag| scalar(tag)).collect();
        entry.push_str(&format!("{indent}  tags: [{}]\n", tags.join(", ")));
    }
    entry
}

/// `links.yaml` with `machine` added at the end of its `machines:` list, in
/// the list's own indentation (the text is kept: comments stay). `None` when
/// the file's last top-level key is not `machines:` (the entry is then printed
/// for the operator to place).
pub fn append_entry(links_yaml: &str, machine: &NewMachine) -> Option<String> {
    let (mut text, indent) = open_machines_list(links_yaml)?;
    if !text.ends_with("\n\n") && !text.trim_end().ends_with("machines:") {
        text.push('\n');
    }
    text.push_str(&inventory_entry(machine, &indent));
    Some(text)
}

/// `links.yaml` ready for entries appended at the end of its `machines:`
/// list (`machines: []` opened, a final newline), and the list's indentation.
/// `None` when the file's last top-level key is not `machines:`.
pub(crate) fn open_machines_list(links_yaml: &str) -> Option<(String, String)> {
    let last_key = links_yaml
        .lines()
        .rfind(|line| !line.starts_with([' ', '\t', '#', '-']) && !line.trim().is_empty())?;
    if last_key.trim_end() != "machines:" && last_key.trim_end() != "machines: []" {
        return None;
    }
    let indent = links_yaml
        .lines()
        .find_map(|line| {
            let trimmed = line.trim_start();
            trimmed
                .starts_with("- ")
                .then(|| &line[..line.len() - trimmed.len()])
        })
        .unwrap_or("  ");
    let mut text = links_yaml.replace("machines: []", "machines:");
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Some((text, indent.to_owned()))
}

/// A YAML scalar: plain when it is safe so, else double-quoted (JSON's
/// escapes are YAML's).
pub(crate) fn scalar(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'))
        && !value.starts_with(['-', ':'])
        && !matches!(
            value,
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~"
        );
    match plain && value.parse::<f64>().is_err() {
        true => value.to_owned(),
        false => serde_json::Value::String(value.to_owned()).to_string(),
    }
}

/// A declared state that keeps machines' trust (its script reads what the
/// daemon tells of it), with its content's digest now and its records by machine.
pub struct TrustKeeper<'a> {
    pub state: &'a DeclaredState,
    pub digest: &'a str,
    pub targets: &'a BTreeMap<String, Target>,
}

/// A machine a rotation of the user CA still waits for, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RotationWait {
    pub machine: String,
    pub reason: String,
}

/// The machines logged in to with certificates that may not yet trust the
/// next user CA: finishing the rotation then would lock the daemon out of
/// them. A machine is ready when a state keeping its trust holds on it
/// with today's content (what the daemon tells now: both CAs). None: the
/// rotation may finish. In inventory order.
pub fn rotation_waits(machines: &[Machine], keepers: &[TrustKeeper]) -> Vec<RotationWait> {
    let selected: Vec<Vec<String>> = keepers
        .iter()
        .map(|keeper| keeper.state.targets.select(machines))
        .collect();
    machines
        .iter()
        .filter(|machine| machine.auth == Auth::Certificate)
        .filter_map(|machine| {
            let mut keeping = keepers
                .iter()
                .zip(&selected)
                .filter(|(_, ids)| ids.contains(&machine.id))
                .map(|(keeper, _)| keeper)
                .peekable();
            let Some(first) = keeping.peek().map(|keeper| keeper.state.id.clone()) else {
                return Some(RotationWait {
                    machine: machine.id.clone(),
                    reason: format!(
                        "no declared state keeps its trust: tag it {TRUST_TAG} for states/linkops-trust.yaml"
                    ),
                });
            };
            let mut standing = "not checked yet";
            for keeper in keeping {
                match keeper.targets.get(&machine.id) {
                    Some(target) if holds_now(target, keeper.digest) => return None,
                    Some(target) => standing = target.standing.name(),
                    None => {}
                }
            }
            Some(RotationWait {
                machine: machine.id.clone(),
                reason: format!("state {first}: {standing}, not yet holding with the next user CA"),
            })
        })
        .collect()
}

/// In sync, as checked with the content of `digest`.
fn holds_now(target: &Target, digest: &str) -> bool {
    target.standing == Standing::InSync
        && target
            .check
            .as_ref()
            .is_some_and(|check| check.digest == digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "6f1c1c9e-1f7b-4a3e-9c55-0d2a9a1b7e42";

    fn trust() -> Trust {
        Trust {
            user_cas: vec!["ssh-ed25519 AAAA linkops user CA".into()],
            login: "root".into(),
            uuid: UUID.into(),
            host_certificate_path: "/etc/ssh/ssh_host_ed25519_key-cert.pub".into(),
        }
    }

    fn keeper_state(tags: &[&str]) -> DeclaredState {
        DeclaredState {
            id: "linkops-trust".into(),
            file: "states/linkops-trust.yaml".into(),
            description: String::new(),
            script: "linkops-trust".into(),
            targets: crate::script::Targets {
                machines: vec![],
                tags: tags.iter().map(|t| t.to_string()).collect(),
                where_: Default::default(),
            },
            params: BTreeMap::new(),
            mode: crate::state::Mode::Enforce,
            interval: Duration::from_secs(60),
            windows: vec![],
            zone: "UTC".into(),
            rollout: Default::default(),
        }
    }

    fn target(machine: &str, standing: Standing, digest: &str) -> Target {
        let mut target = Target::new("linkops-trust", machine, 0);
        target.stand(standing, 1);
        target.checked(crate::state::CheckRecord {
            digest: digest.into(),
            at_ms: 1,
            duration_ms: 1,
            outcome: crate::state::CheckOutcome::Holds,
            output: String::new(),
        });
        target
    }

    #[test]
    fn a_rotation_waits_for_each_certificate_machine_until_its_trust_holds_with_both_cas() {
        let on_certificates = |id: &str, tags: &[&str]| Machine {
            auth: Auth::Certificate,
            ..crate::fixtures::machine(id, tags)
        };
        let machines = vec![
            on_certificates("ready", &[TRUST_TAG]),
            on_certificates("stale", &[TRUST_TAG]),
            on_certificates("applying", &[TRUST_TAG]),
            on_certificates("unchecked", &[TRUST_TAG]),
            on_certificates("untagged", &[]),
            crate::fixtures::machine("router", &[]), // auth: key, nothing to wait for
        ];
        let state = keeper_state(&[TRUST_TAG]);
        let targets: BTreeMap<String, Target> = [
            target("ready", Standing::InSync, "now"),
            target("stale", Standing::InSync, "before"),
            target("applying", Standing::Applying { operation_id: 7 }, "now"),
        ]
        .into_iter()
        .map(|t| (t.machine_id.clone(), t))
        .collect();
        let keepers = [TrustKeeper {
            state: &state,
            digest: "now",
            targets: &targets,
        }];
        let waits: Vec<(String, String)> = rotation_waits(&machines, &keepers)
            .into_iter()
            .map(|wait| (wait.machine, wait.reason))
            .collect();
        let expected = [
            (
                "stale",
                "state linkops-trust: in_sync, not yet holding with the next user CA",
            ),
            (
                "applying",
                "state linkops-trust: applying, not yet holding with the next user CA",
            ),
            (
                "unchecked",
                "state linkops-trust: not checked yet, not yet holding with the next user CA",
            ),
            (
                "untagged",
                "no declared state keeps its trust: tag it linkops-trust for states/linkops-trust.yaml",
            ),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(m, r)| (m.to_string(), r.to_string()))
            .collect();
        assert_eq!(waits, expected);
        // Every one holding today's content: the rotation may finish.
        let all: BTreeMap<String, Target> = machines
            .iter()
            .map(|m| (m.id.clone(), target(&m.id, Standing::InSync, "now")))
            .collect();
        let tagged_all = keeper_state(&[TRUST_TAG, "untagged-too"]);
        let mut machines = machines;
        machines[4].tags.push("untagged-too".into());
        let keepers = [TrustKeeper {
            state: &tagged_all,
            digest: "now",
            targets: &all,
        }];
        assert_eq!(rotation_waits(&machines, &keepers), []);
    }

    fn on_machine(files: &[ManagedFile]) -> BTreeMap<String, String> {
        files
            .iter()
            .map(|file| (file.path.clone(), file.content.clone()))
            .collect()
    }

    #[test]
    fn a_bare_machine_gets_every_file_and_sshd_reloads() {
        let plan = plan(files(&trust()), &BTreeMap::new());
        let paths: Vec<&str> = plan.writes.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                CLIENT_ID_PATH,
                USER_CA_PATH,
                "/etc/ssh/linkops/principals/root",
                REVOKED_KEYS_PATH,
                REVOKED_SERIALS_PATH,
                SSHD_DROP_IN_PATH
            ]
        );
        assert!(plan.reload_sshd);
        let owned: Vec<&str> = plan
            .writes
            .iter()
            .filter(|f| f.owned_by_login)
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(
            owned,
            [USER_CA_PATH, REVOKED_KEYS_PATH, REVOKED_SERIALS_PATH]
        );
        let drop_in = &plan.writes[5].content;
        for line in [
            "TrustedUserCAKeys /etc/ssh/linkops/kept/user_ca.pub",
            "AuthorizedPrincipalsFile /etc/ssh/linkops/principals/%u",
            "RevokedKeys /etc/ssh/linkops/kept/revoked_keys",
            "HostCertificate /etc/ssh/ssh_host_ed25519_key-cert.pub",
        ] {
            assert!(drop_in.lines().any(|l| l == line), "{line}");
        }
        assert_eq!(plan.writes[0].content, format!("LINKOPS-{UUID}\n"));
    }

    #[test]
    fn an_enrolled_machine_changes_nothing() {
        let there = on_machine(&files(&trust()));
        assert_eq!(plan(files(&trust()), &there), Plan::default());
    }

    #[test]
    fn only_what_differs_is_written_and_the_revocation_list_is_never_emptied() {
        let mut there = on_machine(&files(&trust()));
        there.insert(REVOKED_KEYS_PATH.into(), "(a KRL)".into());
        there.insert(REVOKED_SERIALS_PATH.into(), "42".into());
        there.remove(SSHD_DROP_IN_PATH);
        let planned = plan(files(&trust()), &there);
        let paths: Vec<&str> = planned.writes.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, [SSHD_DROP_IN_PATH]);
        assert!(planned.reload_sshd);

        // The enrollment id alone: sshd need not reload.
        let mut there = on_machine(&files(&trust()));
        there.remove(CLIENT_ID_PATH);
        let planned = plan(files(&trust()), &there);
        assert_eq!(planned.writes.len(), 1);
        assert!(!planned.reload_sshd);
    }

    #[test]
    fn a_machine_keeps_the_uuid_its_client_id_names() {
        let new = "0b5e8f4e-2c43-4d1e-8a8e-3f9c2d7b6a10";
        let cases = [
            (Some(format!("LINKOPS-{UUID}\n")), UUID),
            (None, new),
            (Some("LINKOPS-not-a-uuid".to_owned()), new),
            (Some(String::new()), new),
        ];
        for (client_id, kept) in cases {
            assert_eq!(
                enrollment_uuid(client_id.as_deref(), new),
                kept,
                "{client_id:?}"
            );
        }
    }

    #[test]
    fn a_host_certificate_is_renewed_unless_ours_complete_and_far_from_its_end() {
        let now = 1_000_000_000;
        let names = ["10.0.0.5".to_owned(), "web1".to_owned()];
        let month = HOST_CERTIFICATE_RENEWAL.as_secs();
        let found = |ours, principals: &[&str], valid_before| FoundCertificate {
            ours,
            principals: principals.iter().map(|p| p.to_string()).collect(),
            valid_before,
        };
        let cases = [
            (None, false),
            (
                Some(found(true, &["10.0.0.5", "web1"], now + 2 * month)),
                true,
            ),
            (
                Some(found(false, &["10.0.0.5", "web1"], now + 2 * month)),
                false,
            ),
            (Some(found(true, &["10.0.0.5"], now + 2 * month)), false),
            (Some(found(true, &["10.0.0.5", "web1"], now + month)), false),
        ];
        for (found, current) in cases {
            assert_eq!(
                host_certificate_current(found.as_ref(), &names, now),
                current,
                "{found:?}"
            );
        }
    }

    fn machine() -> NewMachine {
        NewMachine {
            id: "web-3".into(),
            host: "10.0.1.123".into(),
            port: 2222,
            user: "root".into(),
            uuid: UUID.into(),
            tags: vec!["web".into(), "yes".into()],
        }
    }

    #[test]
    fn the_entry_logs_in_with_certificates_and_quotes_what_yaml_would_misread() {
        let entry = inventory_entry(&machine(), "  ");
        assert_eq!(
            entry,
            format!(
                "  - id: web-3\n    name: web-3\n    host: 10.0.1.123\n    port: 2222\n    user: root\n    uuid: {UUID}\n    auth: certificate\n    tags: [web, \"yes\"]\n"
            )
        );
        assert_eq!(scalar("1.5"), "\"1.5\"");
        assert_eq!(scalar("a b"), "\"a b\"");
        assert_eq!(scalar("web1.lan"), "web1.lan");
    }

    #[test]
    fn the_entry_goes_at_the_end_of_the_machines_list_in_its_indentation() {
        let links = "# the fleet\nmachines:\n    - id: a\n      host: h\n";
        let appended = append_entry(links, &machine()).unwrap();
        assert!(
            appended.starts_with("# the fleet\nmachines:\n    - id: a\n      host: h\n\n    - id: web-3\n      name: web-3\n"),
            "{appended}"
        );
        let empty = append_entry("machines: []\n", &machine()).unwrap();
        assert!(empty.starts_with("machines:\n  - id: web-3\n"), "{empty}");
        // Another key after the list: the operator places it.
        assert_eq!(
            append_entry("machines:\n  - id: a\nother: 1\n", &machine()),
            None
        );
    }
}
