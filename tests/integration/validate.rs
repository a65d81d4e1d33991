//! `linkops validate` and `linkops schema`, run as the operator runs them.

use std::path::{Path, PathBuf};
use std::process::Command;

fn linkops(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_linkops"))
        .args(args)
        .output()
        .unwrap()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn example_repository_is_valid() {
    let dir = root().join("examples/config-repo");
    let output = linkops(&["validate", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("6 machines, 12 scripts, 2 run-requests, 5 states, 1 schedules, 1 triggers, 2 grants, 0 secrets"),
        "{stdout}"
    );
}

/// Each `tests/fixtures/broken/<case>/` is a repository; `<case>.expected` is
/// exactly what `linkops validate` must print for it.
#[test]
fn broken_repositories_print_the_expected_problems() {
    let fixtures = root().join("tests/fixtures/broken");
    let mut cases = 0;
    for entry in std::fs::read_dir(&fixtures).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        cases += 1;
        let expected = std::fs::read_to_string(dir.with_extension("expected")).unwrap();
        let output = linkops(&["validate", dir.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(1), "{}", dir.display());
        let actual = String::from_utf8(output.stdout).unwrap();
        assert_eq!(actual, expected, "output for {} changed", dir.display());
        // Every line is `file:line:col: message`.
        for line in actual.lines() {
            let fields: Vec<&str> = line.splitn(4, ':').collect();
            assert!(
                fields.len() == 4
                    && fields[1].parse::<u32>().is_ok()
                    && fields[2].parse::<u32>().is_ok(),
                "{line}"
            );
        }
    }
    assert!(cases >= 4, "fixtures missing: {cases}");
}

#[test]
fn checked_in_schemas_match_the_types() {
    let out = testbed::private_dir();
    let output = linkops(&["schema", "--out", out.path().to_str().unwrap()]);
    assert!(output.status.success());
    let checked_in = root().join("schemas");
    let names = [
        "links.schema.json",
        "scripts.schema.json",
        "run-request.schema.json",
        "state.schema.json",
        // The console's TypeScript types are generated from it (src/web/build.mjs).
        "openapi.json",
    ];
    for name in names {
        let generated = std::fs::read_to_string(out.path().join(name)).unwrap();
        let committed = std::fs::read_to_string(checked_in.join(name)).unwrap_or_default();
        assert!(
            generated == committed,
            "schemas/{name} is out of date: run `cargo run -- schema` and commit the result"
        );
    }
}

#[test]
fn example_files_point_editors_at_the_schemas() {
    let repo = root().join("examples/config-repo");
    for (file, schema) in [
        ("links.yaml", "links.schema.json"),
        ("scripts.yaml", "scripts.schema.json"),
        (
            "runs/2026-11-25-upgrade-web.yaml",
            "run-request.schema.json",
        ),
    ] {
        let path = repo.join(file);
        let first = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_owned();
        let target = first
            .strip_prefix("# yaml-language-server: $schema=")
            .unwrap_or_else(|| panic!("{file} has no modeline: {first}"));
        let resolved = path.parent().unwrap().join(target);
        assert!(
            resolved.ends_with(Path::new(schema)) && resolved.exists(),
            "{file}: {target}"
        );
    }
}

/// Defect 8: a revision built to exhaust memory is refused with `file:line:col`,
/// by the YAML budget and the size limits, before it can grow the daemon.
#[test]
fn revisions_built_to_exhaust_memory_are_refused_where_they_break_the_budget() {
    let dir = testbed::private_dir();
    // Aliases past the budget (each could be a whole expanded subtree).
    let mut laughs = String::from("machines:\n");
    for i in 0..1_001 {
        let name = if i == 0 { "&n lol" } else { "*n" };
        laughs.push_str(&format!(
            "  - {{id: m{i}, name: {name}, host: h, uuid: 6f1c1c9e-1f7b-4a3e-9c55-{i:012}}}\n"
        ));
    }
    std::fs::write(dir.path().join("links.yaml"), &laughs).unwrap();
    let output = linkops(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.starts_with("links.yaml:"), "{stdout}");
    assert!(
        stdout.contains("budget") || stdout.contains("limit"),
        "{stdout}"
    );

    let huge = format!("machines: []\n# {}\n", "x".repeat(5 << 20));
    std::fs::write(dir.path().join("links.yaml"), huge).unwrap();
    let output = linkops(&["validate", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout.trim(),
        "links.yaml:1:1: the file is 5242896 bytes; a config file may have at most 4194304"
    );
}

/// Completions and the man page come from the same clap definitions as `--help`.
#[test]
fn completions_and_the_man_page_are_generated_from_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let output = linkops(&["completions", shell]);
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8(output.stdout).unwrap();
        for command in ["serve", "validate", "login", "completions"] {
            assert!(
                script.contains(command),
                "{shell} completions lack {command}"
            );
        }
    }
    let output = linkops(&["man"]);
    assert!(output.status.success());
    let page = String::from_utf8(output.stdout).unwrap();
    assert!(page.contains(".TH linkops 1"), "{page}");
    assert!(page.contains("demo") && page.contains("serve"), "{page}");
}
