//! `links.yaml`: the inventory.

use super::*;
use crate::machine::Auth;

pub(super) fn check_machines(links: LinksFile, problems: &mut Vec<Problem>) -> Vec<Machine> {
    let mut report = Report {
        file: LINKS_FILE,
        problems,
    };
    let mut ids: BTreeMap<String, u64> = BTreeMap::new();
    let mut uuids: BTreeMap<String, String> = BTreeMap::new();
    let mut machines = Vec::new();
    let protected_tags = links.protected_tags;
    for entry in links.machines {
        let MachineEntry {
            id,
            name,
            host,
            port,
            user,
            key,
            uuid,
            tags,
            labels,
            host_key,
            health_interval,
            concurrency,
            auth,
            protected,
        } = entry.value;
        if !conforms(&mut report, "machine id", &id, &ID, ID_RULE) {
            continue;
        }
        if let (Some(key), Auth::Certificate) = (&key, auth) {
            report.at(
                key,
                "key names a key file, but auth is certificate: the daemon logs in with a certificate of its CA; remove key (or say auth: key)",
            );
        }
        if let Some(key) = &key {
            conforms(
                &mut report,
                "key name",
                key,
                &KEY,
                "a key is a plain file name in the daemon's keys directory: letters, digits, '.', '_' and '-', not starting with a dot",
            );
        }
        if let Some(line) = ids.get(&id.value) {
            report.at(
                &id,
                format!("duplicate machine id {:?} (first at line {line})", id.value),
            );
            continue;
        }
        ids.insert(id.value.clone(), id.referenced.line());
        let uuid_text = uuid.value.trim().to_ascii_lowercase();
        if uuid::Uuid::parse_str(&uuid_text).is_err() {
            report.at(
                &uuid,
                format!(
                    "uuid {:?} is not a UUID (like 6f1c1c9e-1f7b-4a3e-9c55-0d2a9a1b7e42)",
                    uuid.value
                ),
            );
        } else if let Some(other) = uuids.insert(uuid_text.clone(), id.value.clone()) {
            report.at(&uuid, format!("uuid {uuid_text} is also the uuid of machine {other:?}; enrollment ids must be unique"));
        }
        if let Some(key) = &host_key {
            let mut fields = key.value.split_whitespace();
            let looks_right = matches!((fields.next(), fields.next()), (Some(alg), Some(_)) if alg.starts_with("ssh-") || alg.starts_with("ecdsa-"));
            if !looks_right {
                report.at(
                    key,
                    "host_key must be an OpenSSH public key line such as `ssh-ed25519 AAAA…`",
                );
            }
        }
        let health_interval = health_interval.and_then(|d| duration(&d, &mut report));
        machines.push(Machine {
            id: id.value,
            name,
            host,
            port,
            user,
            key: key.map(|key| key.value),
            uuid: uuid_text,
            tags,
            labels,
            host_key: host_key.map(|k| k.value.trim().to_owned()),
            health_interval,
            concurrency,
            auth,
            protected,
        });
    }
    for tag in &protected_tags {
        if !machines
            .iter()
            .any(|m: &Machine| m.tags.contains(&tag.value))
        {
            report.at(
                tag,
                format!("protected_tags: no machine has the tag {:?}", tag.value),
            );
        }
    }
    for machine in &mut machines {
        machine.protected |= (protected_tags.iter()).any(|tag| machine.tags.contains(&tag.value));
    }
    machines
}
