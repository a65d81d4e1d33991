//! Inventory sources: machines declared elsewhere — Proxmox VE's guests —
//! proposed as inventory entries. Here: the mapping rules a config
//! repository gives (`inventory/proxmox.yaml`), which guests they take and
//! how each becomes an entry, and the block of `links.yaml` the source owns
//! — between its two marker lines, so that entries written by hand are never
//! touched.

use core::net::IpAddr;
use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::Deserialize;

use crate::desired::Problem;
use crate::machine::Machine;
use crate::trust::scalar;

/// Where a config repository keeps the Proxmox source's rules.
pub const PROXMOX_RULES_FILE: &str = "inventory/proxmox.yaml";
/// The label every entry the source writes carries (`inventory: proxmox`),
/// with `proxmox_vmid` and `proxmox_node`.
pub const SOURCE_LABEL: &str = "inventory";
pub const SOURCE: &str = "proxmox";
/// The lines around the source's block in `links.yaml`.
pub const BLOCK_BEGIN: &str = "# --- linkops inventory sync: proxmox (written by `linkops inventory sync`; edits here are replaced) ---";
pub const BLOCK_END: &str = "# --- end of linkops inventory sync: proxmox ---";
/// Most guests one sync takes (a cluster's answer beyond it is refused).
pub const MAX_GUESTS: usize = 10_000;

/// `inventory/proxmox.yaml`: where Proxmox VE is, which guests become
/// machines, and how.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "LinkOps inventory source: Proxmox VE (inventory/proxmox.yaml)")]
pub struct ProxmoxRules {
    /// The API's base, e.g. `https://pve.lan:8006`.
    pub url: String,
    /// The API token's id, `USER@REALM!TOKENID`; its secret stays in a 0600 file.
    pub token_id: String,
    /// The branch the proposal is committed on.
    #[serde(default = "default_branch")]
    #[schemars(default = "default_branch")]
    pub branch: String,
    #[serde(default)]
    pub guests: GuestRules,
    #[serde(default)]
    pub machines: EntryRules,
}

impl ProxmoxRules {
    /// `inventory/proxmox.yaml`, read and checked: an `https://` URL, a token
    /// id `USER@REALM!TOKENID`, a branch of the source's own.
    pub fn read(text: &str) -> Result<ProxmoxRules, Problem> {
        let rules: ProxmoxRules = serde_saphyr::from_str(text)
            .map_err(|error| crate::desired::yaml_problem(PROXMOX_RULES_FILE, 0, &error))?;
        let refused = |message: String| Problem {
            file: PROXMOX_RULES_FILE.to_owned(),
            line: 1,
            column: 1,
            message,
        };
        if !rules.url.starts_with("https://") {
            return Err(refused(format!(
                "url {:?}: Proxmox VE's API is https://HOST:8006",
                rules.url
            )));
        }
        let token = rules
            .token_id
            .split_once('@')
            .and_then(|(_, rest)| rest.split_once('!'));
        if !token.is_some_and(|(realm, id)| !realm.is_empty() && !id.is_empty()) {
            return Err(refused(format!(
                "token_id {:?}: write it USER@REALM!TOKENID, as Proxmox VE shows it (its secret goes in the token file, not here)",
                rules.token_id
            )));
        }
        if matches!(rules.branch.as_str(), "main" | "master" | "") {
            return Err(refused(format!(
                "branch {:?}: the proposal needs a branch of its own, merged by a person",
                rules.branch
            )));
        }
        Ok(rules)
    }
}

fn default_branch() -> String {
    "inventory/proxmox".to_owned()
}

/// Which guests become machines; every rule given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestRules {
    /// Guests with any of these Proxmox tags (none: any guest).
    #[serde(default)]
    pub tags: Vec<String>,
    /// `qemu`, `lxc` (none: both).
    #[serde(default)]
    pub types: Vec<GuestKind>,
    /// On these nodes (none: any).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Stopped guests too (default: running ones only — a stopped guest has no address).
    #[serde(default)]
    pub stopped: bool,
}

/// How a guest becomes an inventory entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EntryRules {
    /// The machine's id: the guest's `{name}`, `{vmid}` and `{node}` put in.
    pub id: String,
    pub user: Option<String>,
    pub port: u16,
    /// The key file in the daemon's keys directory (its `[ssh] key` when absent).
    pub key: Option<String>,
    /// Tags every such machine gets, beside the guest's own Proxmox tags when `copy_tags`.
    pub tags: Vec<String>,
    pub copy_tags: bool,
    /// The address: the guest's first IPv4 address in this network (`10.0.0.0/8`), else its first.
    pub network: Option<String>,
}

impl Default for EntryRules {
    fn default() -> Self {
        EntryRules {
            id: "{name}".to_owned(),
            user: None,
            port: 22,
            key: None,
            tags: Vec::new(),
            copy_tags: true,
            network: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    Qemu,
    Lxc,
}

/// A guest as Proxmox VE tells it: `/cluster/resources`, and its addresses
/// from the guest agent (QEMU) or the container's interfaces (LXC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    pub node: String,
    pub vmid: u32,
    pub name: String,
    pub kind: GuestKind,
    pub running: bool,
    pub tags: Vec<String>,
    pub addresses: Vec<IpAddr>,
}

/// Whether `rules` take `guest` (its addresses aside: those are asked for
/// the guests taken only).
pub fn takes(rules: &GuestRules, guest: &Guest) -> bool {
    (rules.tags.is_empty() || guest.tags.iter().any(|t| rules.tags.contains(t)))
        && (rules.types.is_empty() || rules.types.contains(&guest.kind))
        && (rules.nodes.is_empty() || rules.nodes.contains(&guest.node))
        && (rules.stopped || guest.running)
}

/// An entry the source proposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub key: Option<String>,
    pub uuid: String,
    pub tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// A guest the rules took that got no entry, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub guest: String,
    pub why: String,
}

/// The entries for the `guests` the rules took, in id order: each keeps the
/// uuid an earlier sync gave its guest (`inventory` holds the entries now,
/// by hand and by the source), a new one gets a uuid derived from the
/// cluster and its vmid (its `/etc/linkops/client_id` is written when it is
/// enrolled). A guest whose id a hand-written entry has is skipped: what was
/// written by hand wins.
pub fn entries(
    rules: &ProxmoxRules,
    guests: &[Guest],
    inventory: &[Machine],
) -> Result<(Vec<Entry>, Vec<Skipped>), String> {
    let network = match &rules.machines.network {
        Some(text) => Some(
            text.parse::<ipnet::IpNet>()
                .map_err(|error| format!("machines.network {text:?}: {error}"))?,
        ),
        None => None,
    };
    let by_hand: BTreeSet<&str> = (inventory.iter())
        .filter(|m| !written_by_source(m))
        .map(|m| m.id.as_str())
        .collect();
    let earlier: BTreeMap<&str, &str> = (inventory.iter())
        .filter(|m| written_by_source(m))
        .filter_map(|m| Some((m.labels.get("proxmox_vmid")?.as_str(), m.uuid.as_str())))
        .collect();
    let (mut made, mut skipped) = (BTreeMap::new(), Vec::new());
    for guest in guests.iter().filter(|g| takes(&rules.guests, g)) {
        let id = (rules.machines.id.replace("{name}", &guest.name))
            .replace("{vmid}", &guest.vmid.to_string())
            .replace("{node}", &guest.node)
            .to_lowercase();
        let named = format!("{} {} ({id})", kind_name(guest.kind), guest.vmid);
        if !crate::desired::is_id(&id) {
            let why = format!("{id:?} is not a machine id: change machines.id");
            skipped.push(Skipped { guest: named, why });
            continue;
        }
        if by_hand.contains(id.as_str()) {
            let why = "links.yaml has a machine of that id written by hand: it is left as it is"
                .to_owned();
            skipped.push(Skipped { guest: named, why });
            continue;
        }
        let in_network = |ip: &&IpAddr| network.is_none_or(|net| net.contains(*ip));
        let address = (guest.addresses.iter())
            .filter(|ip| ip.is_ipv4() && !ip.is_loopback())
            .find(in_network)
            .or_else(|| {
                guest
                    .addresses
                    .iter()
                    .filter(|ip| !ip.is_loopback())
                    .find(in_network)
            });
        let Some(address) = address else {
            let why =
                "no address (a QEMU guest tells its addresses through its guest agent)".to_owned();
            skipped.push(Skipped { guest: named, why });
            continue;
        };
        if made.contains_key(&id) {
            let why = format!("another guest has the id {id:?}: put {{vmid}} in machines.id");
            skipped.push(Skipped { guest: named, why });
            continue;
        }
        let vmid = guest.vmid.to_string();
        let uuid = match earlier.get(vmid.as_str()) {
            Some(uuid) => (*uuid).to_owned(),
            None => {
                let seed = format!("linkops:proxmox:{}:{vmid}", rules.url);
                uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, seed.as_bytes()).to_string()
            }
        };
        let mut tags = rules.machines.tags.clone();
        if rules.machines.copy_tags {
            tags.extend(guest.tags.iter().map(|tag| tag.to_lowercase()));
        }
        tags.sort();
        tags.dedup();
        let labels = BTreeMap::from([
            (SOURCE_LABEL.to_owned(), SOURCE.to_owned()),
            ("proxmox_node".to_owned(), guest.node.clone()),
            ("proxmox_vmid".to_owned(), vmid),
        ]);
        let entry = Entry {
            id: id.clone(),
            name: guest.name.clone(),
            host: address.to_string(),
            port: rules.machines.port,
            user: rules.machines.user.clone(),
            key: rules.machines.key.clone(),
            uuid,
            tags,
            labels,
        };
        made.insert(id, entry);
    }
    Ok((made.into_values().collect(), skipped))
}

fn kind_name(kind: GuestKind) -> &'static str {
    match kind {
        GuestKind::Qemu => "VM",
        GuestKind::Lxc => "container",
    }
}

/// Whether the source wrote `machine`'s entry (its label says so).
pub fn written_by_source(machine: &Machine) -> bool {
    machine.labels.get(SOURCE_LABEL).map(String::as_str) == Some(SOURCE)
}

/// What a sync changes in the source's block, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Differences {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// The source's `entries` against the entries it wrote before (those of
/// `machines` labelled as its own; hand-written ones are never compared).
pub fn compare(machines: &[Machine], entries: &[Entry]) -> Differences {
    let before: BTreeMap<&str, &Machine> = (machines.iter())
        .filter(|m| written_by_source(m))
        .map(|m| (m.id.as_str(), m))
        .collect();
    let after: BTreeSet<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    let added = (entries.iter())
        .filter(|e| !before.contains_key(e.id.as_str()))
        .map(|e| e.id.clone())
        .collect();
    let removed = (before.keys())
        .filter(|id| !after.contains(*id))
        .map(|id| (*id).to_owned())
        .collect();
    let changed = (entries.iter())
        .filter(|e| {
            before.get(e.id.as_str()).is_some_and(|m| {
                m.host != e.host || m.tags != e.tags || m.name != e.name || m.port != e.port
            })
        })
        .map(|e| e.id.clone())
        .collect();
    Differences {
        added,
        removed,
        changed,
    }
}

/// The source's block of `links.yaml`: its markers and its entries, in the list's `indent`.
pub fn block(entries: &[Entry], indent: &str) -> String {
    let mut text = format!("{indent}{BLOCK_BEGIN}\n");
    for entry in entries {
        text.push_str(&format!(
            "{indent}- id: {}\n{indent}  name: {}\n{indent}  host: {}\n",
            scalar(&entry.id),
            scalar(&entry.name),
            scalar(&entry.host)
        ));
        if entry.port != 22 {
            text.push_str(&format!("{indent}  port: {}\n", entry.port));
        }
        for (field, value) in [("user", &entry.user), ("key", &entry.key)] {
            if let Some(value) = value {
                text.push_str(&format!("{indent}  {field}: {}\n", scalar(value)));
            }
        }
        text.push_str(&format!("{indent}  uuid: {}\n", entry.uuid));
        if !entry.tags.is_empty() {
            let tags: Vec<String> = entry.tags.iter().map(|tag| scalar(tag)).collect();
            text.push_str(&format!("{indent}  tags: [{}]\n", tags.join(", ")));
        }
        let labels: Vec<String> = (entry.labels.iter())
            .map(|(name, value)| format!("{name}: {}", scalar(value)))
            .collect();
        text.push_str(&format!("{indent}  labels: {{{}}}\n", labels.join(", ")));
    }
    text.push_str(&format!("{indent}{BLOCK_END}\n"));
    text
}

/// `links.yaml` with the source's block replaced by `entries` — or, the
/// first time, added at the end of its `machines:` list. Every line outside
/// the block stays as it was. `None` when there is no block and the file does
/// not end with its `machines:` list.
pub fn splice(links_yaml: &str, entries: &[Entry]) -> Option<String> {
    let lines: Vec<&str> = links_yaml.lines().collect();
    let begin = lines.iter().position(|l| l.trim() == BLOCK_BEGIN);
    let end = lines.iter().position(|l| l.trim() == BLOCK_END);
    if let (Some(begin), Some(end)) = (begin, end)
        && begin < end
    {
        let indent = &lines[begin][..lines[begin].len() - lines[begin].trim_start().len()];
        let mut text: String = lines[..begin].iter().map(|l| format!("{l}\n")).collect();
        text.push_str(&block(entries, indent));
        text.extend(lines[end + 1..].iter().map(|l| format!("{l}\n")));
        return Some(text);
    }
    let (mut text, indent) = crate::trust::open_machines_list(links_yaml)?;
    text.push_str(&block(entries, &indent));
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{RepoFiles, load};

    fn guest(vmid: u32, name: &str, kind: GuestKind, tags: &[&str], addresses: &[&str]) -> Guest {
        Guest {
            node: "pve1".into(),
            vmid,
            name: name.into(),
            kind,
            running: true,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    /// The rules, `machines` ending with `last` (its network, by default).
    fn rules(last: &str) -> ProxmoxRules {
        let last = if last.is_empty() {
            "network: 10.0.0.0/8"
        } else {
            last
        };
        let text = format!(
            "url: https://pve.lan:8006\ntoken_id: linkops@pve!inventory\nguests: {{tags: [linkops]}}\nmachines: {{user: root, tags: [proxmox], {last}}}\n"
        );
        ProxmoxRules::read(&text).unwrap()
    }

    const HAND: &str = "# The inventory.\nmachines:\n  # the router, by hand\n  - {id: router, name: Router, host: 10.0.0.1, uuid: 11111111-1111-4111-8111-111111111111}\n";

    fn inventory(links: &str) -> Vec<Machine> {
        let files = RepoFiles::from([("links.yaml".to_owned(), links.as_bytes().to_vec())]);
        load("r", &files).unwrap().machines
    }

    #[test]
    fn guests_become_entries_in_their_own_block_and_hand_written_ones_stay() {
        let guests = [
            guest(
                101,
                "web1",
                GuestKind::Qemu,
                &["linkops", "Web"],
                &["127.0.0.1", "192.168.1.5", "10.0.0.5"],
            ),
            guest(102, "db1", GuestKind::Lxc, &["linkops"], &["10.0.0.6"]),
            guest(103, "router", GuestKind::Lxc, &["linkops"], &["10.0.0.7"]),
            guest(104, "agentless", GuestKind::Qemu, &["linkops"], &[]),
            guest(105, "untagged", GuestKind::Lxc, &[], &["10.0.0.9"]),
            Guest {
                running: false,
                ..guest(106, "stopped", GuestKind::Lxc, &["linkops"], &["10.0.0.10"])
            },
        ];
        let (made, skipped) = entries(&rules(""), &guests, &inventory(HAND)).unwrap();
        let ids: Vec<&str> = made.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["db1", "web1"]);
        assert_eq!(made[1].host, "10.0.0.5", "the address in the network");
        assert_eq!(made[1].tags, ["linkops", "proxmox", "web"]);
        let skipped: Vec<String> = skipped
            .iter()
            .map(|s| format!("{}: {}", s.guest, s.why))
            .collect();
        assert_eq!(
            skipped,
            [
                "container 103 (router): links.yaml has a machine of that id written by hand: it is left as it is",
                "VM 104 (agentless): no address (a QEMU guest tells its addresses through its guest agent)",
            ]
        );

        let first = splice(HAND, &made).unwrap();
        assert!(
            first.starts_with(HAND),
            "the hand-written lines stay as they were:\n{first}"
        );
        let read = inventory(&first);
        assert_eq!(read.len(), 3);
        let web1 = read.iter().find(|m| m.id == "web1").unwrap();
        assert!(written_by_source(web1));
        assert_eq!(web1.labels["proxmox_vmid"], "101");

        // Again, with web1 moved and db1 gone: the block is replaced, uuids kept.
        let moved = [guest(
            101,
            "web1",
            GuestKind::Qemu,
            &["linkops"],
            &["10.0.0.50"],
        )];
        let (again, _) = entries(&rules(""), &moved, &read).unwrap();
        assert_eq!(again[0].uuid, web1.uuid, "a guest keeps its uuid");
        let second = splice(&format!("{first}# a comment after\n"), &again).unwrap();
        assert!(second.starts_with(HAND));
        assert!(second.ends_with("# a comment after\n"), "{second}");
        let read = inventory(&second);
        let ids: Vec<&str> = read.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["router", "web1"]);
        assert_eq!(read[1].host, "10.0.0.50");
    }

    #[test]
    fn a_sync_compares_only_the_entries_it_wrote() {
        let guests = [
            guest(101, "web1", GuestKind::Qemu, &["linkops"], &["10.0.0.5"]),
            guest(102, "db1", GuestKind::Lxc, &["linkops"], &["10.0.0.6"]),
        ];
        let (first, _) = entries(&rules(""), &guests, &inventory(HAND)).unwrap();
        let written = inventory(&splice(HAND, &first).unwrap());
        let cases: [(&str, &[Guest], Differences); 4] = [
            ("the same guests", &guests, Differences::default()),
            (
                "db1 gone, web1 moved, cache new",
                &[
                    guest(101, "web1", GuestKind::Qemu, &["linkops"], &["10.0.0.50"]),
                    guest(107, "cache", GuestKind::Lxc, &["linkops"], &["10.0.0.7"]),
                ],
                Differences {
                    added: vec!["cache".into()],
                    removed: vec!["db1".into()],
                    changed: vec!["web1".into()],
                },
            ),
            (
                "web1 retagged",
                &[
                    guest(
                        101,
                        "web1",
                        GuestKind::Qemu,
                        &["linkops", "edge"],
                        &["10.0.0.5"],
                    ),
                    guest(102, "db1", GuestKind::Lxc, &["linkops"], &["10.0.0.6"]),
                ],
                Differences {
                    changed: vec!["web1".into()],
                    ..Differences::default()
                },
            ),
            (
                "no guests: the hand-written router is never removed",
                &[],
                Differences {
                    removed: vec!["db1".into(), "web1".into()],
                    ..Differences::default()
                },
            ),
        ];
        for (case, now, expected) in cases {
            let (proposed, _) = entries(&rules(""), now, &written).unwrap();
            assert_eq!(compare(&written, &proposed), expected, "{case}");
        }
    }

    #[test]
    fn an_id_template_a_bad_network_and_a_file_not_ending_with_machines_are_refused_clearly() {
        let guests = [guest(
            101,
            "Web 1",
            GuestKind::Qemu,
            &["linkops"],
            &["10.0.0.5"],
        )];
        let (_, skipped) = entries(&rules(""), &guests, &[]).unwrap();
        assert!(
            skipped[0].why.contains("is not a machine id"),
            "{skipped:?}"
        );
        let (made, _) = entries(&rules("id: \"vm-{vmid}\""), &guests, &[]).unwrap();
        assert_eq!(made[0].id, "vm-101");
        assert!(entries(&rules("network: nope"), &guests, &[]).is_err());
        assert!(splice("machines: []\nsettings: {}\n", &made).is_none());
        let refused = |text: &str| ProxmoxRules::read(text).unwrap_err().to_string();
        assert!(refused("url: http://pve:8006\ntoken_id: a@pve!t\n").contains("https://"));
        assert!(
            refused("url: https://pve:8006\ntoken_id: a@pve=secret\n")
                .contains("USER@REALM!TOKENID")
        );
        assert!(
            refused("url: https://pve:8006\ntoken_id: a@pve!t\nbranch: main\n").contains("own")
        );
        assert!(refused("url: https://pve:8006\ntoken_id: a@pve!t\nguest: {}\n").contains("guest"));
        assert!(
            splice("machines: []\n", &made)
                .unwrap()
                .starts_with("machines:\n  # ---")
        );
    }
}
