//! What a trigger's requests ask for, read from Alertmanager's documented
//! webhook payloads (version 4), and when a run may start.

use super::*;
use crate::fixtures::{machine, script};
use crate::script::ParamSpec;

const DISK_FULL: &str = include_str!("../../../tests/fixtures/alertmanager/disk-full-host3.json");
const GROUPED: &str = include_str!("../../../tests/fixtures/alertmanager/grouped.json");

fn fleet() -> Vec<Machine> {
    let mut machines: Vec<Machine> = ["host1", "host2", "host3"]
        .iter()
        .map(|id| machine(id, &["web"]))
        .collect();
    machines.push(machine("host4", &["db"]));
    machines[1].host = "127.0.0.12".into();
    machines
}

fn param(name: &str, kind: ParamType, default: Option<ParamValue>) -> ParamSpec {
    ParamSpec {
        name: name.into(),
        kind,
        description: String::new(),
        required: default.is_none(),
        default,
        values: vec![],
        pattern: None,
    }
}

fn scripts() -> BTreeMap<String, Script> {
    let mut cleanup = script("disk-cleanup", "journalctl --vacuum-size=100M");
    cleanup.params = vec![
        param("mountpoint", ParamType::String, None),
        param("keep_days", ParamType::Int, Some(ParamValue::Int(7))),
        ParamSpec {
            required: false,
            ..param("token", ParamType::Secret, None)
        },
    ];
    BTreeMap::from([("disk-cleanup".to_owned(), cleanup)])
}

fn trigger() -> Trigger {
    Trigger {
        name: "disk-full".into(),
        description: String::new(),
        file: "triggers/disk-full.yaml".into(),
        script: "disk-cleanup".into(),
        machines: Targets {
            tags: vec!["web".into()],
            ..Targets::default()
        },
        format: Format::Alertmanager,
        machine: "labels.instance".into(),
        map: BTreeMap::from([("mountpoint".to_owned(), "labels.mountpoint".to_owned())]),
        params: BTreeMap::new(),
        auth: Auth::Bearer,
        secret: None,
        dedup: Duration::from_secs(3600),
        rate: Rate::default(),
        dry_run: false,
    }
}

fn asked(trigger: &Trigger, body: &str) -> Result<Vec<Asked>, String> {
    let (scripts, machines) = (scripts(), fleet());
    let catalog = Catalog {
        scripts: &scripts,
        machines: &machines,
        secrets: &BTreeMap::new(),
    };
    asks(trigger, &serde_json::from_str(body).unwrap(), &catalog)
}

/// Each ask in a line: `run host3 {…}`, `ignored: …`, `refused: …`.
fn lines(asks: &[Asked]) -> Vec<String> {
    asks.iter()
        .map(|ask| match ask {
            Asked::Run {
                machine, params, ..
            } => {
                format!("run {machine} {}", serde_json::to_string(params).unwrap())
            }
            Asked::Ignored { reason, .. } => format!("ignored: {reason}"),
            Asked::Refused { reason, .. } => format!("refused: {reason}"),
        })
        .collect()
}

#[test]
fn a_firing_alert_runs_on_the_machine_its_instance_names_with_its_mountpoint() {
    let asks = asked(&trigger(), DISK_FULL).unwrap();
    assert_eq!(
        lines(&asks),
        [r#"run host3 {"keep_days":7,"mountpoint":"/var"}"#]
    );
    let Asked::Run { alert, key, .. } = &asks[0] else {
        unreachable!()
    };
    assert_eq!(alert.as_deref(), Some("b4c1f3e2a9d07c55"));
    // The same asked again is recognised; another mountpoint is another run.
    assert_eq!(
        *key,
        super::key(
            "disk-full",
            "host3",
            match &asks[0] {
                Asked::Run { params, .. } => params,
                _ => unreachable!(),
            }
        )
    );
    let other = DISK_FULL.replace("\"/var\"", "\"/home\"");
    let Asked::Run { key: other_key, .. } = &asked(&trigger(), &other).unwrap()[0] else {
        panic!()
    };
    assert_ne!(key, other_key);
}

#[test]
fn a_group_runs_each_firing_alert_ignores_resolved_ones_and_refuses_strangers() {
    assert_eq!(
        lines(&asked(&trigger(), GROUPED).unwrap()),
        [
            r#"run host3 {"keep_days":7,"mountpoint":"/var"}"#,
            // Named by its host, not its id.
            r#"run host2 {"keep_days":7,"mountpoint":"/srv"}"#,
            r#"ignored: the alert is "resolved", not firing"#,
            r#"refused: "db9.example:9100" (at "labels.instance") is no machine of the inventory"#,
        ]
    );
}

#[test]
fn a_machine_outside_the_trigger_s_machines_or_a_value_the_script_refuses_is_refused() {
    let host4 = DISK_FULL.replace("host3:9100", "host4:9100");
    assert_eq!(
        lines(&asked(&trigger(), &host4).unwrap()),
        ["refused: machine host4 is not one trigger disk-full may run on"]
    );
    // A parameter taken from the request is checked as the script declares it.
    let mut days = trigger();
    days.map.insert("keep_days".into(), "labels.device".into());
    let refused = lines(&asked(&days, DISK_FULL).unwrap());
    assert!(
        refused[0].starts_with("refused: ") && refused[0].contains("keep_days"),
        "{refused:?}"
    );
    // A caller never names the secret a script is given.
    let mut secret = trigger();
    secret.map.insert("token".into(), "labels.job".into());
    assert_eq!(
        lines(&asked(&secret, DISK_FULL).unwrap()),
        ["refused: parameter token is a secret: a request never names one"]
    );
    let missing = DISK_FULL.replace("\"mountpoint\": \"/var\",", "");
    assert_eq!(
        lines(&asked(&trigger(), &missing).unwrap()),
        [r#"refused: no value at "labels.mountpoint" for parameter mountpoint"#]
    );
}

#[test]
fn a_body_not_in_the_trigger_s_format_or_too_big_a_group_is_refused_whole() {
    let old = DISK_FULL.replace("\"version\": \"4\"", "\"version\": \"3\"");
    assert!(asked(&trigger(), &old).unwrap_err().contains("version 4"));
    let alert: serde_json::Value =
        serde_json::from_str::<serde_json::Value>(DISK_FULL).unwrap()["alerts"][0].clone();
    let many = serde_json::json!({"version": "4", "alerts": vec![alert; MAX_ASKS + 1]});
    let refused = asked(&trigger(), &many.to_string()).unwrap_err();
    assert!(refused.contains("at most 64"), "{refused}");
    // A plain JSON body is one run; an integer given as text is the integer.
    let json = Trigger {
        format: Format::Json,
        machine: "host".into(),
        map: BTreeMap::from([
            ("mountpoint".to_owned(), "disk.mount".to_owned()),
            ("keep_days".to_owned(), "days".to_owned()),
        ]),
        ..trigger()
    };
    let body = r#"{"host": "host1", "disk": {"mount": "/srv"}, "days": "3"}"#;
    assert_eq!(
        lines(&asked(&json, body).unwrap()),
        [r#"run host1 {"keep_days":3,"mountpoint":"/srv"}"#]
    );
}

#[test]
fn a_resend_within_the_window_and_a_run_past_the_rate_are_refused() {
    let trigger = Trigger {
        rate: Rate {
            runs: 2,
            per: Duration::from_secs(600),
        },
        ..trigger()
    };
    let now = 10_000_000;
    assert_eq!(admit(&trigger, "a", &[], now), Ok(()));
    let ran = [(now - 60_000, "a")];
    assert_eq!(
        admit(&trigger, "a", &ran, now),
        Err(Refusal::Duplicate {
            at_ms: now - 60_000
        })
    );
    assert_eq!(admit(&trigger, "b", &ran, now), Ok(()));
    // An hour later the same run may start again.
    assert_eq!(admit(&trigger, "a", &[(now - 3_600_000, "a")], now), Ok(()));
    let busy = [(now - 60_000, "a"), (now - 120_000, "b")];
    assert_eq!(
        admit(&trigger, "c", &busy, now),
        Err(Refusal::Rate {
            runs: 2,
            per: Duration::from_secs(600)
        })
    );
    assert_eq!(
        admit(
            &trigger,
            "c",
            &[(now - 700_000, "a"), (now - 120_000, "b")],
            now
        ),
        Ok(())
    );
}
