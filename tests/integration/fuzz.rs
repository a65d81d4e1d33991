//! Every parser that takes outside input, fed mutated and random input: the
//! config repository's `load`, the webhook's verify and parse, the tables
//! query, the terminal socket's client messages, the config file and the
//! known_hosts reader. None may panic; each answers or refuses.
//!
//! Mutation fuzzing on stable Rust, seeded from real inputs (the example
//! repository, real messages) with structural tokens YAML, JSON and TOML care
//! about. `FUZZ_CASES` cases per target (2,000 by default; CI runs 20,000, the
//! long campaign 1,000,000 — see README), from `FUZZ_SEED` (random, printed on
//! failure). A case that panics is written to `tests/fixtures/fuzz/<target>/`
//! and every file there is replayed first, as a regression test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Bytes that change structure in YAML, JSON or TOML.
const TOKENS: &[&[u8]] = &[
    b"\n",
    b": ",
    b"- ",
    b"&a ",
    b"*a",
    b"<<: *a",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"'",
    b"\\",
    b"!!str ",
    b"!!binary ",
    b"---\n",
    b"...\n",
    b"#",
    b"%YAML 1.2\n",
    b"\t",
    b"  ",
    b"\r\n",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\0",
    b"99999999999999999999999",
    b"-1",
    b"1e999",
    b"null",
    b"true",
    b"~",
    b"=",
    b"[[",
    b"]]",
    b"\"\"\"",
    b",",
    b"\xc3",
    b"\xf0\x9f\x98",
];

fn cases() -> usize {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000)
}

/// `seed` changed by a few random edits: flips, token insertions, deletions,
/// duplications, truncation; sometimes pure noise.
fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    if rng.random_range(0..20) == 0 {
        let len = rng.random_range(0..512);
        return (0..len).map(|_| rng.random()).collect();
    }
    for _ in 0..rng.random_range(1..8) {
        let at = rng.random_range(0..=data.len());
        match rng.random_range(0..6) {
            0 if at < data.len() => data[at] ^= 1 << rng.random_range(0..8),
            1 => {
                let token = TOKENS[rng.random_range(0..TOKENS.len())];
                data.splice(at..at, token.iter().copied());
            }
            2 => {
                let end = (at + rng.random_range(0..64)).min(data.len());
                data.drain(at..end);
            }
            3 => {
                let end = (at + rng.random_range(0..256)).min(data.len());
                let copy: Vec<u8> = data[at..end].to_vec();
                for _ in 0..rng.random_range(1..4) {
                    data.splice(at..at, copy.iter().copied());
                }
            }
            4 => data.truncate(at),
            _ => data.insert(at, rng.random()),
        }
    }
    data
}

/// Runs `target` on every saved crasher, then on `cases()` mutations of the seeds.
fn campaign(name: &str, seeds: &[Vec<u8>], target: impl Fn(&[u8])) {
    let saved = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(name);
    if let Ok(entries) = std::fs::read_dir(&saved) {
        for entry in entries {
            let input = std::fs::read(entry.unwrap().path()).unwrap();
            target(&input);
        }
    }
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..cases() {
        let seed_input = &seeds[rng.random_range(0..seeds.len())];
        let input = mutate(&mut rng, seed_input);
        // A panic is the finding: the store's handle is not unwind-safe, and need not be.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input))).is_err() {
            std::fs::create_dir_all(&saved).unwrap();
            let path = saved.join(format!("crash-{seed}-{}", input.len()));
            std::fs::write(&path, &input).unwrap();
            panic!(
                "{name} panicked on an input saved as {} (FUZZ_SEED={seed})",
                path.display()
            );
        }
    }
}

fn example_file(path: &str) -> Vec<u8> {
    std::fs::read(crate::support::example_repo().join(path)).unwrap()
}

#[test]
fn the_config_repository_loader_never_panics() {
    let files = [
        "links.yaml",
        "scripts.yaml",
        "runs/2026-11-25-upgrade-web.yaml",
    ];
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| example_file(f)).collect();
    let base: BTreeMap<String, Vec<u8>> = files
        .iter()
        .map(|f| (f.to_string(), example_file(f)))
        .chain(
            ["scripts/apt-upgrade.sh", "scripts/disk-usage.sh"]
                .map(|f| (f.to_owned(), example_file(f))),
        )
        .collect();
    // Each case replaces one file of the example revision.
    let which = std::sync::atomic::AtomicUsize::new(0);
    campaign("desired_load", &seeds, |input| {
        let mut revision = base.clone();
        let file = files[which.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % files.len()];
        revision.insert(file.to_owned(), input.to_vec());
        let _ = linkops_reconcilers::desired::load("fuzz", &revision);
    });
}

#[test]
fn the_webhook_verify_and_parse_never_panic() {
    use axum::http::{HeaderMap, HeaderName, HeaderValue};
    use linkops::git::webhook;
    let body = br#"{"ref":"refs/heads/main","after":"0123456789abcdef0123456789abcdef01234567","commits":[]}"#;
    let signature = webhook::sign(body, b"secret");
    let seeds = vec![
        body.to_vec(),
        format!("x-forgejo-signature: {signature}\nx-forgejo-delivery: d-1\nx-forgejo-event: push")
            .into_bytes(),
        format!("x-hub-signature-256: sha256={signature}\nx-github-delivery: g-1").into_bytes(),
    ];
    campaign("webhook", &seeds, |input| {
        // The input is both the header block (name: value lines) and the body.
        let mut headers = HeaderMap::new();
        for line in input.split(|b| *b == b'\n') {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                headers.append(name, value);
            }
        }
        let _ = webhook::verify_signature(&headers, input, b"secret");
        let _ = webhook::delivery_id(&headers);
        let _ = webhook::event(&headers);
        if let Ok(payload) = serde_json::from_slice::<serde_json::Value>(input) {
            let _ = webhook::pushed_branch(&payload);
            let _ = webhook::pushed_head(&payload);
        }
    });
}

#[test]
fn the_tables_query_never_panics() {
    use linkops::tables::{self, query::QueryRequest};
    let dir = testbed::private_dir();
    let store = linkops::store::Store::open(&dir.path().join("fuzz.redb")).unwrap();
    let seeds: Vec<Vec<u8>> = [
        r#"{"table":"operations","filter":[{"column":"state","op":"eq","value":"failed"}],"sort":[{"column":"created_at","dir":"desc"}],"limit":50}"#,
        r#"{"table":"audit_log","filter":[{"column":"at","op":"ge","value":"2026-01-01T00:00:00Z"},{"column":"seq","op":"in","value":[1,2]}],"cursor":"AAAA"}"#,
        r#"{"table":"machines","filter":[{"column":"tags","op":"contains","value":"web"}],"offset":10}"#,
        r#"{"table":"operation_hosts","filter":[{"column":"operation_id","op":"eq","value":1}]}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    campaign("tables_query", &seeds, |input| {
        if let Ok(request) = serde_json::from_slice::<QueryRequest>(input) {
            let _ = tables::run(&store, &request, &|_| true);
        }
    });
}

#[test]
fn the_terminal_client_messages_never_panic() {
    use linkops::terminal::protocol::{ClientMessage, parse_binary_input};
    let seeds: Vec<Vec<u8>> = [
        r#"{"type":"input","pane":0,"data":"ls\r"}"#,
        r#"{"type":"resize","pane":3,"cols":120,"rows":40}"#,
        r#"{"type":"open","pane":1,"cols":80}"#,
        r#"{"type":"close","pane":2}"#,
        r#"{"type":"broadcast","enabled":true}"#,
        "\u{1}echo hi\r",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    campaign("terminal_messages", &seeds, |input| {
        let _ = serde_json::from_slice::<ClientMessage>(input);
        let _ = parse_binary_input(input);
    });
}

#[test]
fn the_config_file_reader_never_panics() {
    let dir = testbed::private_dir();
    let path = dir.path().join("config.toml");
    let seeds = vec![
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config.toml")).unwrap(),
    ];
    campaign("config", &seeds, |input| {
        std::fs::write(&path, input).unwrap();
        let _ = linkops::config::Config::load(Some(&path));
    });
}

#[test]
fn the_known_hosts_reader_never_panics() {
    let dir = testbed::private_dir();
    let path: PathBuf = dir.path().join("known_hosts");
    let seeds = vec![
        b"127.0.10.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n[127.0.10.2]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl comment\n".to_vec(),
        b"|1|F1E1KeoE/eEWhi10WpGv4OdiO6Y=|3988QV0VE8wmZL7suNrYQLITLCg= ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC\n@cert-authority *.example ssh-ed25519 AAAA\n".to_vec(),
    ];
    campaign("known_hosts", &seeds, |input| {
        std::fs::write(&path, input).unwrap();
        let known = linkops::ssh::KnownHosts::new(path.clone());
        let _ = known.keys("127.0.10.1", 22);
        let _ = known.keys("127.0.10.2", 2222);
    });
}
