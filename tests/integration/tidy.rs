//! The layering ARCHITECTURE.md states, held by reading the source (the
//! rust-analyzer "tidy" pattern): who may use redb and russh, what the
//! functional core may not touch, where the API's shapes are declared, a
//! module doc on every file, no span guard that could be held across an
//! `.await`, one way off the async runtime, and handlers that leave writing
//! the store to the services.

use std::path::{Path, PathBuf};

/// Every `.rs` file of the workspace, relative to its root, but this one
/// (which names what it looks for).
fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    let mut dirs: Vec<PathBuf> = ["src", "reconcilers/src", "xtask/src", "tests", "benches"]
        .iter()
        .map(|dir| root.join(dir))
        .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.ends_with("node_modules") {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let name = path.strip_prefix(root).unwrap().display().to_string();
                if name != "tests/integration/tidy.rs" {
                    found.push((name, std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
    }
    assert!(found.len() > 100, "the sources: {}", found.len());
    found
}

/// The lines of code (not comments) of `text` that contain `needle`.
fn uses<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|line| {
            let code = line.trim_start();
            !code.starts_with("//") && code.contains(needle)
        })
        .collect()
}

#[test]
fn the_store_s_engines_alone_use_redb_and_postgres_and_the_ssh_module_alone_russh() {
    let mut wrong = Vec::new();
    for (name, text) in sources() {
        for (needle, home) in [
            ("redb::", "src/store/engine/"),
            ("use redb", "src/store/engine/"),
            ("tokio_postgres", "src/store/engine/"),
            ("deadpool_postgres", "src/store/engine/"),
            ("russh::", "src/ssh/"),
            ("use russh", "src/ssh/"),
        ] {
            // The benchmarks' simulated fleet is an SSH server, on russh's server side.
            let simulator = name == "tests/testbed/src/simulated.rs" && needle.contains("russh");
            // The store's error enum wraps redb's errors, and the conversion of
            // redb's typed tables (schema 7 and before) knows those tables.
            let legacy = ["src/store/mod.rs", "src/store/migrations.rs"].contains(&name.as_str())
                && needle.contains("redb");
            if !name.starts_with(home) && !simulator && !legacy && !uses(&text, needle).is_empty() {
                wrong.push(format!("{name} uses {needle} (only {home} may)"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn the_api_shapes_are_declared_in_the_contract_alone() {
    let mut wrong = Vec::new();
    for (name, text) in sources() {
        // The saved login is the CLI's own file, not an API shape.
        let edge = name.starts_with("src/api/") || name.starts_with("src/client/");
        if !edge || name == "src/client/session.rs" {
            continue;
        }
        for line in uses(&text, "derive(") {
            let shape = ["Serialize", "Deserialize", "ToSchema", "IntoParams"];
            if shape.iter().any(|derive| line.contains(derive)) {
                wrong.push(format!(
                    "{name}: {} (declare it in src/contract)",
                    line.trim()
                ));
            }
        }
    }
    // What the store keeps is not what the API shows: a stored record renamed
    // must not change an answer, nor the CLI's reading of one.
    for (name, text) in sources() {
        let speaks_the_contract =
            name.starts_with("src/contract/") || name.starts_with("src/client/");
        if speaks_the_contract {
            for line in uses(&text, "store::") {
                wrong.push(format!(
                    "{name}: {} (a store type in the contract)",
                    line.trim()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn the_functional_core_does_no_io_reads_no_clock_and_runs_no_runtime() {
    let forbidden = [
        "std::fs",
        "std::net",
        "std::process",
        "std::thread",
        "std::env",
        "tokio",
        "SystemTime::now",
        "Instant::now",
        "Timestamp::now",
        // Time zones come in as data: the shell reads the tz database.
        "tz::db",
        "TimeZone::system",
        "TimeZone::get",
    ];
    let mut wrong = Vec::new();
    for (name, text) in sources() {
        if !name.starts_with("reconcilers/") {
            continue;
        }
        for needle in forbidden {
            for line in uses(&text, needle) {
                wrong.push(format!("{name}: {}", line.trim()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "decisions take these as inputs: {wrong:#?}"
    );
}

#[test]
fn every_file_says_what_it_owns() {
    let undocumented: Vec<String> = sources()
        .into_iter()
        .filter(|(_, text)| !(text.starts_with("//!") || text.starts_with("#![doc")))
        .map(|(name, _)| name)
        .collect();
    assert!(
        undocumented.is_empty(),
        "no //! module doc: {undocumented:#?}"
    );
}

#[test]
fn no_span_is_entered_by_hand() {
    // An entered span's guard held across `.await` tags whatever else the
    // thread runs meanwhile; futures get `.instrument(span)` instead.
    let mut wrong = Vec::new();
    for (name, text) in sources() {
        for needle in [".enter()", ".entered()"] {
            for line in uses(&text, needle) {
                wrong.push(format!("{name}: {}", line.trim()));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn blocking_work_leaves_the_runtime_one_way() {
    // `blocking::run` marks its threads as allowed to call the store (which
    // debug builds check at every transaction); tokio's own would not.
    let mut wrong = Vec::new();
    for (name, text) in sources() {
        if name == "src/blocking.rs" {
            continue;
        }
        for line in uses(&text, "spawn_blocking(") {
            wrong.push(format!(
                "{name}: {} (use blocking::run or Store::run)",
                line.trim()
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The store's methods that write: those whose body opens a write
/// transaction, and those that call one of them.
fn store_writes(sources: &[(String, String)]) -> std::collections::BTreeSet<String> {
    let mut bodies = Vec::new();
    for (name, text) in sources {
        if !name.starts_with("src/store/") || name.starts_with("src/store/engine/") {
            continue;
        }
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            let Some(rest) = line.strip_prefix("    pub fn ") else {
                continue;
            };
            let method: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let mut body = String::new();
            for line in lines.by_ref() {
                if line == "    }" {
                    break;
                }
                body.push_str(line);
                body.push('\n');
            }
            bodies.push((method, body));
        }
    }
    let mut writes: std::collections::BTreeSet<String> = bodies
        .iter()
        .filter(|(_, body)| body.contains("self.write()"))
        .map(|(method, _)| method.clone())
        .collect();
    loop {
        let more: Vec<String> = bodies
            .iter()
            .filter(|(method, body)| {
                !writes.contains(method)
                    && writes.iter().any(|w| body.contains(&format!("self.{w}(")))
            })
            .map(|(method, _)| method.clone())
            .collect();
        if more.is_empty() {
            return writes;
        }
        writes.extend(more);
    }
}

#[test]
fn handlers_call_services_and_only_read_the_store() {
    // What a request changes is a service's work (the controller, the
    // engine, the terminals, auth, the webhook's deliveries), which records
    // it with its audit in one transaction; handlers parse, authorise, call
    // it and frame the answer.
    let sources = sources();
    let writes = store_writes(&sources);
    for known in [
        "audit",
        "put_workspace",
        "ask_stop",
        "claim_webhook_delivery",
    ] {
        assert!(
            writes.contains(known),
            "{known} not seen as a write: {writes:?}"
        );
    }
    assert!(!writes.contains("machine_statuses"), "{writes:?}");
    let mut wrong = Vec::new();
    for (name, text) in &sources {
        if !name.starts_with("src/api/") {
            continue;
        }
        for write in &writes {
            for line in uses(text, &format!("store.{write}(")) {
                wrong.push(format!("{name}: {} (a write: call a service)", line.trim()));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn the_configuration_stands_below_the_rooms_that_read_it() {
    // Every room reads the configuration; were it to reach back into one
    // (the store, Git), the two could no longer change apart.
    let mut wrong = Vec::new();
    for (name, text) in sources() {
        if !name.starts_with("src/config/") {
            continue;
        }
        for line in uses(&text, "crate::") {
            let below = ["crate::config", "crate::secrets"];
            if !below.iter().any(|room| line.contains(room)) {
                wrong.push(format!(
                    "{name}: {} (config uses only secrets)",
                    line.trim()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn anyhow_stays_at_the_binary_s_edge() {
    // Errors inside name the thing and the fix in a typed enum per module.
    let mut wrong = Vec::new();
    for (name, text) in sources() {
        if name != "src/main.rs" && !uses(&text, "anyhow").is_empty() {
            wrong.push(format!("{name} uses anyhow (only src/main.rs may)"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn the_product_uses_the_testbed_only_for_the_demo_and_its_own_tests() {
    // Test support lives in its crate (tests/testbed), which knows the daemon
    // from outside; the library reaches it for `linkops demo` (the `demo`
    // feature) and in its `#[cfg(test)]` modules, nowhere else.
    let mut wrong = Vec::new();
    for (name, text) in sources() {
        if !name.starts_with("src/") || name == "src/demo.rs" {
            continue;
        }
        let tests_from = text.find("#[cfg(test)]").unwrap_or(text.len());
        let first_use = (text.match_indices("testbed::"))
            .map(|(at, _)| at)
            .find(|&at| {
                !text[..at]
                    .rsplit('\n')
                    .next()
                    .unwrap_or_default()
                    .contains("//")
            });
        if first_use.is_some_and(|at| at < tests_from) {
            wrong.push(format!("{name} uses the testbed outside its tests"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn only_the_sync_worker_fetches_and_changes_the_desired_state() {
    // The followed branch is fetched by the leader's sync (git/sync/lead.rs),
    // other branches by the plans it queues (git/plans.rs); nothing else
    // reaches the remote, and only the sync publishes a desired state.
    let mut wrong = Vec::new();
    for (name, text) in sources() {
        let fetcher = name == "src/git/sync/lead.rs" || name == "src/git/plans.rs";
        for line in uses(&text, "mirror.fetch(") {
            if !fetcher {
                wrong.push(format!(
                    "{name}: {} (only the sync worker fetches)",
                    line.trim()
                ));
            }
        }
        if !name.starts_with("src/git/sync/") {
            for line in uses(&text, "desired.send") {
                wrong.push(format!("{name}: {} (only the sync publishes)", line.trim()));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn every_store_test_runs_on_both_engines() {
    // `store::testing::backings` gives each test a redb file and a PostgreSQL
    // database. The exceptions test one engine's own matter, or no store.
    let one_engine = [
        // redb's typed tables of versions 1 to 7, and versions stored by redb.
        "src/store/migrations.rs",
        // The keys' encoding and the records' JSON: no store at all.
        "src/store/engine/key.rs",
        "src/store/records.rs",
        // The in-memory log of changes.
        "src/store/changes.rs",
    ];
    let redb_only = [
        // A file's mode and lock, and redb's page-granular table sizes.
        "the_store_file_is_owner_only_even_in_an_open_directory",
        "a_second_open_of_the_same_file_is_refused_clearly",
        "table_sizes_name_each_table_and_grow_with_what_it_holds",
        // Roles' order: no store.
        "roles_are_ordered_by_power",
    ];
    let mut wrong = Vec::new();
    for (name, text) in sources() {
        if !name.starts_with("src/store/") || one_engine.contains(&name.as_str()) {
            continue;
        }
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            if line.trim() != "#[test]" {
                continue;
            }
            let Some(test) = lines.next().and_then(|l| l.trim().strip_prefix("fn ")) else {
                continue;
            };
            let test: String = test.chars().take_while(|c| *c != '(').collect();
            let mut body = String::new();
            for line in lines.by_ref() {
                if line == "    }" {
                    break;
                }
                body.push_str(line);
            }
            let both = body.contains("backings()") || body.contains("testing::");
            if !both && !redb_only.contains(&test.as_str()) {
                wrong.push(format!("{name}: {test} (run it on testing::backings())"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn every_route_declares_what_it_checks() {
    // A handler that takes the caller says what it checks through one of
    // `Authenticated`'s methods: anyone signed in, a need decided by
    // `reconcilers::grant`, reads filtered by what the grants reach, or the
    // grants handed to the service that decides. Only the routes the
    // description marks public (`security(())`) take no caller.
    const CHECKS: [&str; 7] = [
        "caller.signed_in()",
        "own_account(&caller)",
        "caller.is_admin(",
        "caller.may(",
        "caller.administers(",
        "caller.reach(",
        "caller.grants(",
    ];
    let mut wrong = Vec::new();
    let mut routes = 0;
    for (name, text) in sources() {
        if !name.starts_with("src/api/") {
            continue;
        }
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if !line.starts_with("#[utoipa::path(") {
                continue;
            }
            routes += 1;
            let public = line.contains("security(())");
            let handler: Vec<&str> = lines.by_ref().take_while(|l| *l != "}").collect();
            let signature = handler.first().copied().unwrap_or_default();
            let body = handler.join("\n");
            let takes_caller = body.contains(": Authenticated");
            let checks = CHECKS.iter().any(|check| body.contains(check));
            match (public, takes_caller, checks) {
                (true, false, _) | (false, true, true) => {}
                (true, true, _) => wrong.push(format!(
                    "{name}: {signature} is public (security(())) yet takes a caller"
                )),
                (false, false, _) => wrong.push(format!(
                    "{name}: {signature} takes no caller: say security(()) if it is public"
                )),
                (false, true, false) => wrong.push(format!(
                    "{name}: {signature} checks nothing: call one of {CHECKS:?}"
                )),
            }
        }
    }
    assert!(routes > 40, "only {routes} routes seen");
    assert!(wrong.is_empty(), "{wrong:#?}");
}
