//! Values the crate's tests share.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::machine::{Auth, Machine};
use crate::run::RunRequest;
use crate::script::{Script, Targets};

/// A machine with these tags on loopback, checked every minute.
pub fn machine(id: &str, tags: &[&str]) -> Machine {
    Machine {
        id: id.into(),
        name: id.into(),
        host: "127.0.0.1".into(),
        port: 22,
        user: None,
        key: None,
        uuid: "7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        labels: BTreeMap::new(),
        host_key: None,
        health_interval: Some(Duration::from_secs(60)),
        concurrency: None,
        auth: Auth::Key,
        protected: false,
    }
}

/// A run-request of `script` on `targets`, without parameters.
pub fn run_request(id: &str, script: &str, targets: Targets) -> RunRequest {
    RunRequest {
        id: id.into(),
        file: format!("runs/{id}.yaml"),
        script: script.into(),
        targets,
        params: BTreeMap::new(),
        resolved: BTreeMap::new(),
        not_before: None,
        rollout: None,
    }
}

/// A schedule of `script` on `targets` daily at 03:00 in Berlin, by the
/// policies' defaults.
pub fn schedule(name: &str, script: &str, targets: Targets) -> crate::schedule::Schedule {
    crate::schedule::Schedule {
        name: name.into(),
        description: String::new(),
        file: format!("schedules/{name}.yaml"),
        script: script.into(),
        state: None,
        targets,
        params: BTreeMap::new(),
        resolved: BTreeMap::new(),
        rollout: None,
        cron: "0 3 * * *".into(),
        zone: "Europe/Berlin".into(),
        catch_up: Default::default(),
        concurrency: Default::default(),
        until: None,
        suspend: false,
    }
}

/// A script of `body` without parameters, check or targets.
pub fn script(id: &str, body: &str) -> Script {
    Script {
        id: id.into(),
        name: id.into(),
        description: String::new(),
        body: body.into(),
        check: None,
        interpreter: "/bin/sh".into(),
        params: vec![],
        timeout: Duration::from_secs(60),
        max_parallel: None,
        targets: Targets::default(),
    }
}

/// The real tz database's Berlin (Debian's tzdata), read at build time: the
/// core reads no files, and its tests see the zone the daemon would.
pub fn berlin() -> jiff::tz::TimeZone {
    let tzif = include_bytes!("/usr/share/zoneinfo/Europe/Berlin");
    jiff::tz::TimeZone::tzif("Europe/Berlin", tzif).expect("Debian's tzdata")
}
