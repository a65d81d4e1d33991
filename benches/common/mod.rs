//! What the benchmarks share: a config repository for a test fleet, and the
//! daemon as its own process (so that its memory and CPU are its own).
#![allow(
    dead_code,
    reason = "compiled into each benchmark, which uses a part of it"
)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use linkops::auth::password;
use linkops::contract::MachineView;
use linkops::store::Store;
use linkops_reconcilers::role::Role;
use serde_json::Value;
use testbed::{ServeProcess, TestFleet, WorkRepo, until_machines};

pub const ADMIN_PASSWORD: &str = "bench-password-1";

/// A config repository for the fleet: every host tagged `bench`, checked hourly.
pub fn config_repo(fleet: &TestFleet, scripts: &str) -> WorkRepo {
    let repo = WorkRepo::new(&fleet.dir().join("config"), None);
    repo.write(
        "links.yaml",
        &fleet.inventory("bench", &[], "health_interval: 1h"),
    );
    repo.write("scripts.yaml", scripts);
    repo.commit("bench");
    repo
}

/// The CA every benchmark daemon shares (`fleet.dir()/bench-ca`, made once).
pub fn shared_ca(fleet: &TestFleet) -> std::path::PathBuf {
    let dir = fleet.dir().join("bench-ca");
    linkops::ssh::ca::Authority::open(&dir).unwrap();
    dir
}

/// A config repository for the fleet logging in with certificates of
/// [`shared_ca`] alone: every host trusts it, and no key opens them.
pub fn certificate_repo(fleet: &TestFleet, scripts: &str) -> WorkRepo {
    let authority = linkops::ssh::ca::Authority::open(&shared_ca(fleet)).unwrap();
    fleet
        .trust_user_ca(&authority.user_public().to_openssh().unwrap())
        .unwrap();
    let repo = WorkRepo::new(&fleet.dir().join("config-certificates"), None);
    let links = fleet.inventory("bench", &[], "health_interval: 1h");
    repo.write(
        "links.yaml",
        &links.replace("    key: fleet_key\n", "    auth: certificate\n"),
    );
    repo.write("scripts.yaml", scripts);
    repo.commit("bench, certificates");
    repo
}

/// A data dir as the daemon wants it (0700), with the client key, the
/// known_hosts and the admin user (password [`ADMIN_PASSWORD`]).
pub fn private_data_dir(data: &Path, key: &Path, known_hosts: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(data.join("keys")).unwrap();
    std::fs::create_dir_all(data.join("ssh")).unwrap();
    // The daemon refuses a data dir that others can read.
    std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let copy = data.join("keys/fleet_key");
    std::fs::copy(key, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(data.join("ssh/known_hosts"), known_hosts).unwrap();
    create_admin(&Store::open(&data.join("linkops.redb")).unwrap());
}

/// The benchmarks' admin (password [`ADMIN_PASSWORD`]), unless it exists.
pub fn create_admin(store: &Store) {
    let hash = password::hash(ADMIN_PASSWORD).unwrap();
    store
        .create_user(
            "admin",
            Some(Role::Admin),
            &hash,
            &linkops::store::Actor::Cli,
        )
        .ok();
}

/// The daemon as its own process (so its memory is its own).
pub struct Daemon {
    process: ServeProcess,
    pub url: String,
    pub token: String,
    pub client: reqwest::Client,
    hosts: usize,
}

impl Daemon {
    pub async fn start(fleet: &TestFleet, repo: &Path, name: &str, idle: &str) -> Daemon {
        Daemon::start_on(fleet, repo, name, idle, None).await
    }

    /// [`Daemon::start`], its store in the PostgreSQL database `postgres` when given.
    pub async fn start_on(
        fleet: &TestFleet,
        repo: &Path,
        name: &str,
        idle: &str,
        postgres: Option<&testbed::postgres::Database>,
    ) -> Daemon {
        Daemon::launch(fleet, repo, name, idle, postgres, "").await
    }

    /// [`Daemon::start`] with more `[ssh]` settings (`key = value` lines).
    pub async fn start_with_ssh(
        fleet: &TestFleet,
        repo: &Path,
        name: &str,
        idle: &str,
        ssh: &str,
    ) -> Daemon {
        Daemon::launch(fleet, repo, name, idle, None, ssh).await
    }

    async fn launch(
        fleet: &TestFleet,
        repo: &Path,
        name: &str,
        idle: &str,
        postgres: Option<&testbed::postgres::Database>,
        ssh: &str,
    ) -> Daemon {
        let data = fleet.dir().join(format!("data-{name}"));
        let known_hosts = std::fs::read_to_string(fleet.known_hosts()).unwrap();
        private_data_dir(&data, fleet.client_key(), &known_hosts);
        // Every daemon signs with one CA: replicas refuse to start beside
        // another's, and the fleet trusts it for `auth: certificate`.
        testbed::copy_private(&shared_ca(fleet), &data.join("ca"));
        let store = match postgres {
            None => String::new(),
            Some(database) => {
                use std::os::unix::fs::PermissionsExt;
                let password = data.join("keys/postgres_password");
                std::fs::write(&password, &database.password).unwrap();
                std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600))
                    .unwrap();
                // Replicas sign tokens with one key (each refuses to start beside others otherwise).
                let signing_key = data.join("jwt_secret");
                std::fs::write(&signing_key, "bench-replicas-share-this-signing-key").unwrap();
                std::fs::set_permissions(&signing_key, std::fs::Permissions::from_mode(0o600))
                    .unwrap();
                let (url, password) = (database.url.clone(), database.password.clone());
                let options =
                    linkops::store::engine::postgres::Options::with_password(url, password);
                create_admin(&linkops::store::Store::connect(&options).unwrap());
                format!(
                    "[store]\nbackend = \"postgres\"\nurl = {:?}\n",
                    database.url
                )
            }
        };
        let config = data.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {data:?}\n[git]\nurl = {repo:?}\n[ssh]\nidle_timeout = {idle:?}\nconcurrency = 64\n{ssh}\n[reconcile]\nconcurrency = 64\n[operations]\noutput_cap = 16777216\n[auth]\nstep_up = false\n{store}"
            ),
        )
        .unwrap();
        let mut binary = Command::new(env!("CARGO_BIN_EXE_linkops"));
        binary.env("LINKOPS_LOG", "warn,linkops::server=info");
        let (mut process, _) =
            ServeProcess::spawn(binary, ["--config".as_ref(), config.as_os_str()])
                .expect("the daemon serves");
        process.drain_log();
        let token = process.login("admin", ADMIN_PASSWORD).await.unwrap();
        Daemon {
            url: process.url.clone(),
            process,
            token,
            client: reqwest::Client::new(),
            hosts: fleet.hosts().len(),
        }
    }

    /// An API call as the admin; the JSON answer.
    pub async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    /// Starts an operation; its id.
    pub async fn start_operation(&self, body: Value) -> u64 {
        let operation = self
            .api(reqwest::Method::POST, "/api/operations/run", Some(body))
            .await;
        operation["id"].as_u64().expect("an operation")
    }

    /// Waits until every machine has been checked and is enrolled.
    pub async fn wait_enrolled(&self) {
        let hosts = self.hosts;
        until_machines(
            &self.url,
            &self.token,
            "every machine enrolled",
            |m: &MachineView| &m.spec.id,
            |machines| {
                machines.len() == hosts && machines.iter().all(|m| m.enrollment.is_enrolled())
            },
        )
        .await
        .unwrap();
    }

    /// Runs an operation and reads its events to `end`; the elapsed time and the events.
    pub async fn run_to_end(&self, body: Value) -> (Duration, Vec<eventsource_stream::Event>) {
        let started = Instant::now();
        let id = self.start_operation(body).await;
        let events = read_to_end(&self.client, &self.url, &self.token, id).await;
        let elapsed = started.elapsed();
        let end: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
        assert_eq!(end["state"], "succeeded", "operation {id}");
        (elapsed, events)
    }

    /// Sends `signal` to the daemon (a pause, a resume).
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("a live daemon");
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Kills it at once, as a crash would.
    pub fn kill_9(self) {
        self.process.kill_9();
    }

    /// Waits for it to exit by itself.
    pub fn exited(self) -> std::process::ExitStatus {
        self.process.exited().0
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The most memory the daemon held so far.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// The memory the daemon holds now.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        testbed::measure::status_kib(self.pid(), field)
    }
}

/// `GET url` as `token`'s user, its JSON answer.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> T {
    client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn read_to_end(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    id: u64,
) -> Vec<eventsource_stream::Event> {
    let response = client
        .get(format!(
            "{url}/api/operations/{id}/events?access_token={token}"
        ))
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream().eventsource();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        let event = event.unwrap();
        let end = event.event == "end";
        events.push(event);
        if end {
            break;
        }
    }
    events
}
