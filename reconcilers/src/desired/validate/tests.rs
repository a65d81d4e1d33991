//! `load` table-tested: every kind of file, every kind of problem.

use super::*;
use crate::machine::Auth;
use crate::script::ParamValue;

#[test]
fn a_revision_reports_at_most_so_many_problems_and_counts_the_rest() {
    let mut links = String::from("machines:\n");
    for i in 0..MAX_REPORTED_PROBLEMS + 50 {
        links.push_str(&format!("  - {{id: m{i}, name: M, host: h, uuid: nope}}\n"));
    }
    let files: RepoFiles = [("links.yaml".to_owned(), links.into_bytes())].into();
    let problems = load("r1", &files).unwrap_err();
    assert_eq!(problems.len(), MAX_REPORTED_PROBLEMS + 1);
    let last = problems.last().unwrap();
    assert!(
        last.message.starts_with("and 50 more problem(s)"),
        "{}",
        last.message
    );
}

#[test]
fn a_run_request_carries_its_parameters_resolved_once() {
    let files: RepoFiles = [
        (
            "links.yaml",
            "machines:\n  - {id: web1, name: Web, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, tags: [web]}\n",
        ),
        (
            "scripts.yaml",
            "scripts:\n  - id: greet\n    name: Greet\n    body: echo\n    params:\n      - {name: name, type: string, default: world}\n      - {name: times, type: int, required: true}\n",
        ),
        (
            "runs/once.yaml",
            "id: once\nscript: greet\ntargets: {tags: [web]}\nparams: {times: \"2\"}\n",
        ),
    ]
    .into_iter()
    .map(|(path, text)| (path.to_owned(), text.as_bytes().to_vec()))
    .collect();
    let desired = load("r1", &files).unwrap();
    let run = &desired.runs["once"];
    // As written, for telling an edit after the run…
    assert_eq!(run.params["times"], ParamValue::String("2".into()));
    assert!(!run.params.contains_key("name"));
    // …and what the script gets: typed, defaults filled in.
    assert_eq!(run.resolved["times"], ParamValue::Int(2));
    assert_eq!(run.resolved["name"], ParamValue::String("world".into()));
}

#[test]
fn run_requests_and_states_carry_their_rollouts() {
    let files: RepoFiles = [
        (
            "links.yaml",
            "machines:\n  - {id: web1, name: Web, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, tags: [web]}\n",
        ),
        (
            "scripts.yaml",
            "scripts:\n  - {id: motd, name: Motd, body: 'echo hi > /etc/motd', check: 'test -f /etc/motd'}\n",
        ),
        (
            "runs/once.yaml",
            "id: once\nscript: motd\ntargets: {tags: [web]}\nrollout: {canary: 2}\n",
        ),
        ("states/motd.yaml", "id: motd\nscript: motd\ntargets: {tags: [web]}\n"),
    ]
    .into_iter()
    .map(|(path, text)| (path.to_owned(), text.as_bytes().to_vec()))
    .collect();
    let desired = load("r1", &files).unwrap();
    let given = Rollout {
        batch: 5,
        canary: 2,
        max_failures: 1,
    };
    assert_eq!(desired.runs["once"].rollout, Some(given));
    let state = &desired.states["motd"];
    assert_eq!(state.rollout, Rollout::default());
    assert_eq!(state.interval, crate::state::DEFAULT_INTERVAL);
    assert_eq!(state.mode, crate::state::Mode::Enforce);
    assert!(state.windows.is_empty());
}

#[test]
fn every_broken_field_of_a_state_file_is_reported_at_once() {
    let files: RepoFiles = [
        (
            "links.yaml",
            "machines:\n  - {id: web1, name: Web, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, tags: [web]}\n",
        ),
        (
            "scripts.yaml",
            "scripts:\n  - {id: motd, name: Motd, body: 'echo hi > /etc/motd', check: 'test -f /etc/motd'}\n",
        ),
        (
            "states/motd.yaml",
            "id: motd\nscript: motd\nmode: enforced\ntargets: {tags: [web]}\nrollout:\n  canary: many\nwindows:\n  - {days: [funday], from: \"01:00\", to: \"02:00\"}\n",
        ),
    ]
    .into_iter()
    .map(|(path, text)| (path.to_owned(), text.as_bytes().to_vec()))
    .collect();
    let problems = load("r1", &files).unwrap_err();
    let lines: Vec<(u64, bool)> = problems
        .iter()
        .map(|p| (p.line, p.file == "states/motd.yaml"))
        .collect();
    assert_eq!(lines, [(3, true), (6, true), (8, true)], "{problems:?}");
    assert!(problems[0].message.contains("enforced"), "{problems:?}");
}

#[test]
fn a_machine_logs_in_by_key_unless_it_says_certificate_and_never_both() {
    let links = "machines:\n  - {id: web1, name: Web, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935}\n  - {id: web2, name: Web, host: 10.0.0.2, uuid: 8d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, auth: certificate}\n";
    let files: RepoFiles = [("links.yaml".to_owned(), links.as_bytes().to_vec())].into();
    let desired = load("r1", &files).unwrap();
    let auth: Vec<Auth> = desired.machines.iter().map(|m| m.auth).collect();
    assert_eq!(auth, [Auth::Key, Auth::Certificate]);

    let both = "machines:\n  - {id: web1, name: Web, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, key: web_key, auth: certificate}\n";
    let files: RepoFiles = [("links.yaml".to_owned(), both.as_bytes().to_vec())].into();
    let problems = load("r1", &files).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let said = &problems[0];
    assert_eq!((said.file.as_str(), said.line), ("links.yaml", 2));
    assert!(
        said.message.contains("auth is certificate"),
        "{}",
        said.message
    );
}

#[test]
fn a_machine_is_protected_by_its_own_mark_or_by_a_protected_tag() {
    let links = "protected_tags: [db]\nmachines:\n  - {id: web1, name: Web, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, tags: [web]}\n  - {id: db1, name: DB, host: 10.0.0.2, uuid: 8d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, tags: [db]}\n  - {id: vault, name: Vault, host: 10.0.0.3, uuid: 9d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, protected: true}\n";
    let files: RepoFiles = [("links.yaml".to_owned(), links.as_bytes().to_vec())].into();
    let desired = load("r1", &files).unwrap();
    let protected: Vec<bool> = desired.machines.iter().map(|m| m.protected).collect();
    assert_eq!(protected, [false, true, true]);

    let unknown = links.replace("protected_tags: [db]", "protected_tags: [prod]");
    let files: RepoFiles = [("links.yaml".to_owned(), unknown.into_bytes())].into();
    let problems = load("r1", &files).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        (problems[0].line, problems[0].message.as_str()),
        (1, "protected_tags: no machine has the tag \"prod\"")
    );
}

#[test]
fn access_grants_roles_over_scopes_to_groups_and_users() {
    let files: RepoFiles = [
        (
            "links.yaml",
            "machines:\n  - {id: web1, name: Web, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, tags: [web]}\n",
        ),
        ("scripts.yaml", "scripts:\n  - {id: deploy, name: Deploy, body: echo}\n"),
        (
            "access.yaml",
            "grants:\n  - to: {group: web-team}\n    role: operator\n    tags: [web]\n    scripts: [deploy]\n  - to: {user: alice}\n    role: viewer\n",
        ),
    ]
    .into_iter()
    .map(|(path, text)| (path.to_owned(), text.as_bytes().to_vec()))
    .collect();
    let desired = load("r1", &files).unwrap();
    let held = crate::grant::held_by(&desired.grants, "alice", &["web-team".to_owned()]);
    assert_eq!(held.len(), 2);
    assert_eq!(held[0].role, crate::role::Role::Operator);
    assert_eq!(held[0].scope.tags, ["web"]);
    assert_eq!(held[0].scope.scripts, ["deploy"]);
    assert!(held[1].scope.is_fleet());
}

#[test]
fn access_names_the_runs_that_wait_for_approvers() {
    let load_with = |access: &str| {
        let files: RepoFiles = [
            (
                "links.yaml",
                "machines:\n  - {id: db1, name: Db, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, tags: [prod]}\n",
            ),
            ("scripts.yaml", "scripts:\n  - {id: deploy, name: Deploy, body: echo}\n"),
            ("access.yaml", access),
        ]
        .into_iter()
        .map(|(path, text)| (path.to_owned(), text.as_bytes().to_vec()))
        .collect();
        load("r1", &files)
            .map_err(|problems| problems.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    let desired =
        load_with("approvals:\n  - {name: prod, tags: [prod], approvers: 2, expires: 4h}\n")
            .unwrap();
    let rule = &desired.approvals[0];
    assert_eq!((rule.name.as_str(), rule.approvers), ("prod", 2));
    assert_eq!(rule.role, crate::role::Role::Operator);
    assert_eq!(rule.expires, Duration::from_secs(4 * 3600));
    assert_eq!(rule.scope.tags, ["prod"]);
    for (access, problem) in [
        (
            "approvals:\n  - {name: prod, tags: [prod], approvers: 0}\n",
            "access.yaml:2:43: approvers is 0",
        ),
        (
            "approvals:\n  - {name: prod, tags: [prod], approvers: 1, role: viewer}\n",
            "access.yaml:2:52: a viewer runs nothing",
        ),
        (
            "approvals:\n  - {name: prod, tags: [qa], approvers: 1}\n",
            "access.yaml:2:25: tag \"qa\" matches no machine",
        ),
        (
            "approvals:\n  - {name: prod, approvers: 1}\n  - {name: prod, approvers: 2}\n",
            "access.yaml:3:12: approval rule \"prod\" is named twice",
        ),
    ] {
        let problems = load_with(access).unwrap_err();
        assert!(
            problems.len() == 1 && problems[0].starts_with(problem),
            "{access}: {problems:#?}"
        );
    }
}

#[test]
fn secrets_are_sealed_named_where_they_live_and_used_only_within_their_limits() {
    const SEALED: &str =
        "|\n  -----BEGIN AGE ENCRYPTED FILE-----\n  YWdl\n  -----END AGE ENCRYPTED FILE-----\n";
    let recipient = format!("age1{}", "q".repeat(58));
    let files = |extra: &[(&str, String)]| -> RepoFiles {
        let mut files: RepoFiles = [
            (
                "links.yaml".to_owned(),
                "machines:\n  - {id: web1, name: Web, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, tags: [web]}\n  - {id: db1, name: Db, host: 10.0.0.2, uuid: 8d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, tags: [db]}\n".to_owned(),
            ),
            (
                "scripts.yaml".to_owned(),
                "scripts:\n  - id: backup\n    name: Backup\n    body: pg_dump\n    check: \"false\"\n    params:\n      - {name: password, type: secret, default: db-password}\n".to_owned(),
            ),
            (
                "recipients.yaml".to_owned(),
                format!("all: [{recipient}]\ntags:\n  db: [{recipient}]\n"),
            ),
            (
                "secrets/db-password.yaml".to_owned(),
                format!("name: db-password\nscripts: [backup]\ntargets: {{tags: [db]}}\nvalue: {SEALED}"),
            ),
        ]
        .into_iter()
        .map(|(path, text)| (path, text.into_bytes()))
        .collect();
        for (path, text) in extra {
            files.insert((*path).to_owned(), text.clone().into_bytes());
        }
        files
    };
    let problems = |extra: &[(&str, String)]| -> Vec<String> {
        match load("r1", &files(extra)) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    };
    let desired = load("r1", &files(&[])).unwrap();
    let secret = &desired.secrets["db-password"];
    assert_eq!(secret.scripts, ["backup"]);
    assert!(
        secret
            .sealed
            .starts_with("-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n")
    );
    assert_eq!(desired.recipients.of(secret), [recipient.as_str()]);

    // Files added to the repository, and the problems they make.
    type Case<'a> = (&'a [(&'a str, String)], &'a [&'a str]);
    let table: [Case; 6] = [
        // Within its limits.
        (
            &[(
                "runs/ok.yaml",
                "id: ok\nscript: backup\ntargets: {tags: [db]}\n".into(),
            )],
            &[],
        ),
        // A run-request that takes the default secret where it may not go.
        (
            &[(
                "runs/web.yaml",
                "id: web\nscript: backup\ntargets: {tags: [web]}\n".into(),
            )],
            &[
                "runs/web.yaml:1:5: parameter password (its default): secret \"db-password\" may reach machines tagged db only; web1 is not among them (secrets/db-password.yaml)",
            ],
        ),
        // A state naming a secret that is not there: at the value.
        (
            &[(
                "states/s.yaml",
                "id: s\nscript: backup\ntargets: {tags: [db]}\nparams:\n  password: db-pasword\n"
                    .into(),
            )],
            &[
                "states/s.yaml:5:13: no secret \"db-pasword\": there is no secrets/db-pasword.yaml (`linkops secret set db-pasword` writes one)",
            ],
        ),
        // A value in clear, a file whose name is not the secret's, an unknown script.
        (
            &[(
                "secrets/clear.yaml",
                "name: other\nscripts: [nope]\nvalue: hunter2\n".into(),
            )],
            &[
                "secrets/clear.yaml:1:7: secret \"other\" must be in secrets/other.yaml, where `linkops secret` looks for it",
                "secrets/clear.yaml:2:11: unknown script \"nope\": it is not in scripts.yaml",
                "secrets/clear.yaml:3:8: the value of secret \"other\" is not sealed: it must be an ASCII-armored age file (-----BEGIN AGE ENCRYPTED FILE----- …), as `linkops secret set` or `age -e -a` writes it — never a value in clear",
            ],
        ),
        (
            &[(
                "secrets/token.yaml",
                format!("name: token\nscripts: [nope]\nvalue: {SEALED}"),
            )],
            &["secrets/token.yaml:2:11: unknown script \"nope\": it is not in scripts.yaml"],
        ),
        (
            &[(
                "recipients.yaml",
                "all: [ssh-ed25519 AAAA]\ntags:\n  nope: []\n".into(),
            )],
            &[
                "recipients.yaml:1:1: tag \"nope\" matches no machine in links.yaml",
                "recipients.yaml:1:7: \"ssh-ed25519 AAAA\" is not an age recipient: it is `age1` and 58 more characters, as `age-keygen -y` or `linkops secret recipient` prints it",
            ],
        ),
    ];
    for (extra, expected) in table {
        assert_eq!(problems(extra), expected, "{extra:?}");
    }
}

#[test]
fn where_selects_by_facts_for_run_requests_only() {
    let files = |run: &str, state: &str| -> RepoFiles {
        [
            (
                "links.yaml",
                "machines:\n  - {id: web1, name: Web, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, tags: [web]}\n",
            ),
            (
                "scripts.yaml",
                "scripts:\n  - {id: reboot, name: Reboot, body: reboot, check: \"true\"}\n",
            ),
            ("runs/r.yaml", run),
            ("states/s.yaml", state),
        ]
        .into_iter()
        .map(|(path, text)| (path.to_owned(), text.as_bytes().to_vec()))
        .collect()
    };
    let run = "id: r\nscript: reboot\ntargets:\n  tags: [web]\n  where: {reboot_required: true}\n";
    let state = "id: s\nscript: reboot\ntargets: {tags: [web]}\n";
    let desired = load("r1", &files(run, state)).unwrap();
    let targets = &desired.runs["r"].targets;
    assert_eq!(targets.where_["reboot_required"], ParamValue::Bool(true));
    assert_eq!(targets.tags, ["web"]);

    let state = "id: s\nscript: reboot\ntargets:\n  where: {os: debian-12}\n";
    let run = "id: r\nscript: reboot\ntargets:\n  where: {\"Not A Fact\": 1}\n";
    let problems: Vec<String> = (load("r1", &files(run, state)).unwrap_err().iter())
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        problems,
        [
            "runs/r.yaml:4:25: \"Not A Fact\" is not a fact's name (`linkops facts ID` lists them)",
            "states/s.yaml:4:15: `where` selects machines by their facts for runs and run-requests only, not for a declared state: name tags or machines",
        ]
    );
}

#[test]
fn custom_facts_are_named_where_they_live_bounded_and_targeted() {
    let load_with = |fact_files: &[(&str, &str)]| {
        let mut files: RepoFiles = [(
            "links.yaml".to_owned(),
            b"machines:\n  - {id: web1, name: Web, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, tags: [web]}\n".to_vec(),
        )]
        .into();
        for (path, text) in fact_files {
            files.insert((*path).to_owned(), text.as_bytes().to_vec());
        }
        load("r1", &files)
            .map_err(|problems| problems.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    let desired = load_with(&[(
        "facts/nginx.yaml",
        "name: nginx\ntargets: {tags: [web]}\ntimeout: 5s\nscript: |\n  echo '{\"version\": \"1.22\"}'\n",
    )])
    .unwrap();
    let nginx = &desired.custom_facts["nginx"];
    assert_eq!(nginx.targets.tags, ["web"]);
    assert_eq!(nginx.timeout, Duration::from_secs(5));
    assert!(nginx.script.contains("version"));

    let long = format!("name: big\nscript: \"{}\"\n", "x".repeat(17 << 10));
    let problems = load_with(&[
        ("facts/other.yaml", "name: nginx\nscript: echo {}\n"),
        (
            "facts/raid.yaml",
            "name: raid\nscript: echo {}\ntimeout: 2m\n",
        ),
        ("facts/Bad.yaml", "name: Bad\nscript: echo {}\n"),
        ("facts/big.yaml", &long),
        (
            "facts/db.yaml",
            "name: db\nscript: echo {}\ntargets: {tags: [dbs], where: {os: x}}\n",
        ),
    ])
    .unwrap_err();
    assert_eq!(
        problems,
        [
            "facts/Bad.yaml:1:7: custom fact id \"Bad\" is not allowed: use lower-case letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128 characters",
            "facts/big.yaml:2:9: the script is 17408 bytes; a custom fact's is at most 16384 (it runs on every machine at every gathering)",
            "facts/db.yaml:3:18: tag \"dbs\" matches no machine in links.yaml",
            "facts/db.yaml:3:36: `where` selects machines by their facts for runs and run-requests only, not for custom facts: name tags or machines",
            "facts/other.yaml:1:7: custom fact \"nginx\" must be in facts/nginx.yaml",
            "facts/raid.yaml:3:10: a custom fact may take at most 60s",
        ]
    );
}

#[test]
fn schedules_name_their_script_a_cron_expression_and_a_zone() {
    let load_with = |schedule_files: &[(&str, &str)]| {
        let mut files: RepoFiles = [
            (
                "links.yaml".to_owned(),
                b"machines:\n  - {id: db1, name: DB, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, tags: [db]}\n".to_vec(),
            ),
            (
                "scripts.yaml".to_owned(),
                b"scripts:\n  - id: backup\n    name: Backup\n    body: pg_dumpall\n    params:\n      - {name: keep, type: int, default: 7}\n".to_vec(),
            ),
        ]
        .into();
        for (path, text) in schedule_files {
            files.insert((*path).to_owned(), text.as_bytes().to_vec());
        }
        load("r1", &files)
            .map_err(|problems| problems.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    let desired = load_with(&[(
        "schedules/nightly.yaml",
        "name: nightly\nscript: backup\ntargets: {tags: [db]}\ncron: \"30 2 * * *\"\nzone: Europe/Berlin\ncatch_up: once\nconcurrency: queue\n",
    )])
    .unwrap();
    let nightly = &desired.schedules["nightly"];
    assert_eq!(
        (nightly.cron.as_str(), nightly.zone.as_str()),
        ("30 2 * * *", "Europe/Berlin")
    );
    assert_eq!(nightly.resolved["keep"], ParamValue::Int(7));
    assert_eq!(nightly.catch_up, crate::schedule::CatchUp::Once);
    assert_eq!(nightly.targets.tags, ["db"]);

    let problems = load_with(&[
        ("schedules/a.yaml", "name: b\nscript: backup\ntargets: {tags: [db]}\ncron: \"0 3 * * *\"\n"),
        ("schedules/c.yaml", "name: c\nscript: backup\ntargets: {tags: [db]}\ncron: \"0 25 * * *\"\nzone: \"Europe/Berlin; rm\"\n"),
        ("schedules/d.yaml", "name: d\nscript: nope\ncron: \"@daily\"\nuntil: tomorrow\n"),
        ("schedules/e.yaml", "name: e\nscript: backup\ntargets: {tags: [db]}\ncron: \"0 3 * * *\"\ncatch_up: always\n"),
    ])
    .unwrap_err();
    assert_eq!(problems.len(), 6, "{problems:#?}");
    assert!(
        problems[0].starts_with("schedules/a.yaml:1:7: schedule \"b\" must be in schedules/b.yaml"),
        "{problems:#?}"
    );
    assert!(
        problems[1].starts_with("schedules/c.yaml:4:7: \"0 25 * * *\" is not a cron expression"),
        "{problems:#?}"
    );
    assert!(
        problems[2]
            .starts_with("schedules/c.yaml:5:7: \"Europe/Berlin; rm\" is not a time zone's name"),
        "{problems:#?}"
    );
    assert!(
        problems[3].starts_with("schedules/d.yaml:2:9: unknown script \"nope\""),
        "{problems:#?}"
    );
    assert!(
        problems[4].starts_with("schedules/d.yaml:4:8: until must be an RFC 3339 time"),
        "{problems:#?}"
    );
    assert!(
        problems[5].starts_with("schedules/e.yaml:5:11: unknown variant `always`"),
        "{problems:#?}"
    );
}

#[test]
fn a_schedule_applies_a_reporting_state_with_its_script_targets_and_parameters() {
    let load_with = |schedule: &str| {
        let files: RepoFiles = [
            (
                "links.yaml",
                "machines:\n  - {id: web1, name: Web, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, tags: [web]}\n",
            ),
            (
                "scripts.yaml",
                "scripts:\n  - {id: motd, name: Motd, body: 'echo $TEXT > /etc/motd', check: 'true', params: [{name: text, type: string, default: hi}]}\n",
            ),
            ("states/motd.yaml", "id: motd\nscript: motd\ntargets: {tags: [web]}\nmode: report\nrollout: {canary: 1}\n"),
            ("states/enforced.yaml", "id: enforced\nscript: motd\ntargets: {tags: [web]}\n"),
            ("schedules/weekly.yaml", schedule),
        ]
        .into_iter()
        .map(|(path, text)| (path.to_owned(), text.as_bytes().to_vec()))
        .collect();
        load("r1", &files)
            .map_err(|problems| problems.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    let desired = load_with("name: weekly\nstate: motd\ncron: \"0 3 * * 0\"\n").unwrap();
    let weekly = &desired.schedules["weekly"];
    let motd = &desired.states["motd"];
    assert_eq!(weekly.state.as_deref(), Some("motd"));
    assert_eq!(
        (
            &weekly.script,
            &weekly.targets,
            &weekly.resolved,
            weekly.rollout
        ),
        (
            &motd.script,
            &motd.targets,
            &motd.params,
            Some(motd.rollout)
        )
    );
    for (schedule, problem) in [
        (
            "name: weekly\nstate: enforced\ncron: \"@daily\"\n",
            "schedules/weekly.yaml:2:8: state \"enforced\" enforces",
        ),
        (
            "name: weekly\nstate: nope\ncron: \"@daily\"\n",
            "schedules/weekly.yaml:2:8: no declared state \"nope\" (states/*.yaml declares: enforced, motd)",
        ),
        (
            "name: weekly\nstate: motd\ntargets: {tags: [web]}\ncron: \"@daily\"\n",
            "schedules/weekly.yaml:2:8: a schedule that applies a state takes the state's targets",
        ),
        (
            "name: weekly\nstate: motd\nscript: motd\ncron: \"@daily\"\n",
            "schedules/weekly.yaml:3:9: a schedule runs a script or applies a state, not both",
        ),
        (
            "name: weekly\ncron: \"@daily\"\n",
            "schedules/weekly.yaml:1:7: a schedule needs what it runs",
        ),
    ] {
        let problems = load_with(schedule).unwrap_err();
        assert!(
            problems.len() == 1 && problems[0].starts_with(problem),
            "{schedule}: {problems:#?}"
        );
    }
}

#[test]
fn a_state_s_windows_are_read_in_its_zone() {
    let files = |zone: &str| -> RepoFiles {
        [
            (
                "links.yaml",
                "machines:\n  - {id: web1, name: Web, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, tags: [web]}\n".to_owned(),
            ),
            (
                "scripts.yaml",
                "scripts:\n  - {id: motd, name: Motd, body: 'true', check: 'true'}\n".to_owned(),
            ),
            (
                "states/motd.yaml",
                format!("id: motd\nscript: motd\ntargets: {{tags: [web]}}\nwindows: [{{from: \"02:00\", to: \"04:00\"}}]\n{zone}"),
            ),
        ]
        .into_iter()
        .map(|(path, text)| (path.to_owned(), text.into_bytes()))
        .collect()
    };
    assert_eq!(load("r1", &files("")).unwrap().states["motd"].zone, "UTC");
    let berlin = load("r1", &files("zone: Europe/Berlin\n")).unwrap();
    assert_eq!(berlin.states["motd"].zone, "Europe/Berlin");
    let problems = load("r1", &files("zone: \"../../etc/passwd\"\n")).unwrap_err();
    assert!(
        problems[0]
            .to_string()
            .starts_with("states/motd.yaml:5:7: \"../../etc/passwd\" is not a time zone's name"),
        "{problems:?}"
    );
}

#[test]
fn a_trigger_maps_paths_to_its_script_s_parameters_but_never_to_a_secret() {
    let load_with = |trigger: &str| {
        let files: RepoFiles = [
            (
                "links.yaml",
                "machines:\n  - {id: web1, name: Web, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, tags: [web]}\n",
            ),
            (
                "scripts.yaml",
                "scripts:\n  - id: cleanup\n    name: Cleanup\n    body: du -sh $MOUNT\n    params:\n      - {name: mountpoint, type: string, required: true}\n      - {name: keep, type: int, default: 7}\n      - {name: token, type: secret}\n",
            ),
            ("triggers/disk-full.yaml", trigger),
        ]
        .into_iter()
        .map(|(path, text)| (path.to_owned(), text.as_bytes().to_vec()))
        .collect();
        load("r1", &files)
            .map_err(|problems| problems.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    let desired = load_with(
        "name: disk-full\nscript: cleanup\nmachines: {tags: [web]}\nmap: {mountpoint: labels.mountpoint}\n",
    )
    .unwrap();
    let trigger = &desired.triggers["disk-full"];
    assert_eq!(trigger.machine, "labels.instance");
    assert_eq!(trigger.dedup, Duration::from_secs(3600));
    assert_eq!(trigger.rate, crate::trigger::Rate::default());
    assert_eq!(trigger.auth, crate::trigger::Auth::Bearer);

    for (trigger, problem) in [
        (
            "name: disk-full\nscript: cleanup\nmachines: {tags: [web]}\nmap: {mountpoint: labels.mountpoint, token: labels.job}\n",
            "triggers/disk-full.yaml:4:45: parameter token is a secret",
        ),
        (
            "name: disk-full\nscript: cleanup\nmachines: {tags: [web]}\nmap: {mountpoint: \"labels..x\"}\n",
            "triggers/disk-full.yaml:4:19: \"labels..x\" is not a dotted path",
        ),
        (
            "name: disk-full\nscript: cleanup\nmachines: {tags: [web]}\n",
            "triggers/disk-full.yaml:2:9: script cleanup requires parameter mountpoint",
        ),
        (
            "name: disk-full\nscript: cleanup\nmachines: {tags: [web]}\nmap: {mountpoint: labels.m}\nparams: {keep: seven}\n",
            "triggers/disk-full.yaml:5:16: ",
        ),
        (
            "name: disk-full\nscript: cleanup\nmachines: {tags: [web]}\nmap: {mountpoint: labels.m}\nrate: {runs: 0, per: 1h}\n",
            "triggers/disk-full.yaml:5:7: rate.runs is 0",
        ),
        (
            "name: other\nscript: cleanup\nmachines: {tags: [web]}\nmap: {mountpoint: labels.m}\n",
            "triggers/disk-full.yaml:1:7: trigger \"other\" must be in triggers/other.yaml",
        ),
    ] {
        let problems = load_with(trigger).unwrap_err();
        assert!(
            problems.len() == 1 && problems[0].starts_with(problem),
            "{trigger}: {problems:#?}"
        );
    }
}
