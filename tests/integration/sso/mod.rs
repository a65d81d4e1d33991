//! Single sign-on against a real, certified OpenID provider (npm's
//! `oidc-provider`, started with the tests' people and groups), driven by a
//! browser that keeps cookies and follows each redirect: signing in through
//! the console's path and the CLI's, groups giving grants through
//! `access.yaml` and taking them at the next sign-in, a disabled person shut
//! out, and what an attacker could send back refused.

mod hostile;

use std::time::Duration;

use linkops::config::{Config, OidcConfig};
use linkops::contract::{MachineView, Me, SignInOptions};
use linkops_reconcilers::operation::OperationState;
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};
use testbed::oidc::{OidcAccount, OidcClient, OidcProvider};

use crate::support::{ADMIN, FleetSetup, TestDaemon, answer, run_to_end};

const SCRIPTS: &str = "scripts:\n  - {id: whoami, name: Who am I, body: id -un}\n";
const PROVIDER: &str = "test";
const CLIENT_SECRET: &str = "a-client-secret-for-the-tests";

/// Someone the provider signs in.
fn account(id: &str, groups: &[&str]) -> OidcAccount {
    OidcAccount {
        id: id.into(),
        username: id.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

/// A browser: cookies kept per site, every redirect seen.
struct Browser {
    http: reqwest::Client,
    cookies: std::sync::Arc<reqwest::cookie::Jar>,
    /// How often the provider's sign-in form was filled in.
    forms: std::sync::atomic::AtomicUsize,
}

/// Where a sign-in passed through the daemon's callback: the URL the
/// provider sent, and the cookie the browser brought to it.
struct Callback {
    url: Url,
    cookie: String,
}

impl Browser {
    fn new() -> Browser {
        let cookies = std::sync::Arc::new(reqwest::cookie::Jar::default());
        let http = reqwest::Client::builder()
            .cookie_provider(cookies.clone())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Browser {
            http,
            cookies,
            forms: Default::default(),
        }
    }

    /// Goes to `start`, follows redirects and signs in as `login` at the
    /// provider's form, until a redirect leaves for the console's page or
    /// for a loopback listener other than the daemon and the provider:
    /// where the daemon sent the browser in the end, and the callback it
    /// passed through on the way.
    async fn sign_in(&self, start: &str, login: &str, sites: &[&str]) -> (Url, Callback) {
        use reqwest::cookie::CookieStore;
        let mut url = Url::parse(start).unwrap();
        let mut callback = None;
        for _ in 0..20 {
            if url.path().ends_with("/callback") {
                let cookie = self
                    .cookies
                    .cookies(&url)
                    .expect("a cookie for the callback");
                callback = Some(Callback {
                    url: url.clone(),
                    cookie: cookie.to_str().unwrap().to_owned(),
                });
            }
            let answer = self.http.get(url.clone()).send().await.unwrap();
            let status = answer.status();
            if status.is_redirection() {
                let location = answer.headers()["location"].to_str().unwrap().to_owned();
                let next = url.join(&location).unwrap();
                let ours = sites.iter().any(|site| next.as_str().starts_with(site));
                if next.fragment().is_some() || !ours {
                    return (next, callback.expect("the sign-in passed the callback"));
                }
                url = next;
                continue;
            }
            let page = answer.text().await.unwrap();
            assert_eq!(status, StatusCode::OK, "{url}: {page}");
            // The provider's sign-in form.
            let action = page
                .split("action=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_else(|| panic!("{url} shows no form: {page}"));
            (self.forms).fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let posted = self
                .http
                .post(url.join(action).unwrap())
                .form(&[("login", login)])
                .send()
                .await
                .unwrap();
            assert!(posted.status().is_redirection(), "{}", posted.status());
            let location = posted.headers()["location"].to_str().unwrap().to_owned();
            url = url.join(&location).unwrap();
        }
        panic!("the sign-in never ended");
    }
}

/// The query of a URL's fragment (`/#/signed-in?token=…`), or of the URL.
fn said(url: &Url) -> std::collections::HashMap<String, String> {
    let query = match url.fragment() {
        Some(fragment) => fragment.split_once('?').map_or("", |(_, q)| q).to_owned(),
        None => url.query().unwrap_or_default().to_owned(),
    };
    serde_urlencoded::from_str(&query).unwrap()
}

/// A fleet whose daemon signs people in at a real provider; web-team
/// operates the machines tagged web (host1), host2 is not.
struct SsoSetup {
    setup: FleetSetup,
    provider: OidcProvider,
    daemon: TestDaemon,
}

impl SsoSetup {
    async fn start(accounts: &[OidcAccount]) -> SsoSetup {
        SsoSetup::start_asking(accounts, false).await
    }

    /// With `step_up`, terminals and admin actions ask for a fresh sign-in.
    async fn start_asking(accounts: &[OidcAccount], step_up: bool) -> SsoSetup {
        let setup = FleetSetup::new(2, &[], SCRIPTS);
        let links = setup.fleet.inventory("test", &[], "");
        let links = links.replacen("    tags: [test]\n", "    tags: [test, web]\n", 1);
        setup.work.write("links.yaml", &links);
        setup.work.write(
            "access.yaml",
            "grants:\n  - to: {group: web-team}\n    role: operator\n    tags: [web]\n",
        );
        setup.work.commit("web-team operates the web machines");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let redirect_url = format!("{url}/api/auth/sso/{PROVIDER}/callback");
        let client = OidcClient {
            client_id: "linkops".into(),
            client_secret: CLIENT_SECRET.into(),
            redirect_uri: redirect_url.clone(),
        };
        let provider = OidcProvider::start(&[client], accounts).unwrap();
        let mut config = sso_config(&setup, &provider.issuer, &redirect_url);
        config.auth.step_up = step_up;
        let daemon = setup.start_on(config, listener).await;
        SsoSetup {
            setup,
            provider,
            daemon,
        }
    }

    /// Stops the daemon; the provider and the fleet go with the rest.
    async fn stop(self) {
        self.daemon.stop().await;
        drop((self.provider, self.setup));
    }

    /// Signs `login` in through the console's path: the token the console gets.
    async fn console_sign_in(&self, login: &str) -> Result<String, String> {
        self.sign_in_through(&Browser::new(), login, "").await
    }

    /// Signs `login` in through the console's path in `browser`, the start's
    /// query `query`: the token the console gets.
    async fn sign_in_through(
        &self,
        browser: &Browser,
        login: &str,
        query: &str,
    ) -> Result<String, String> {
        let start = format!("{}/api/auth/sso/{PROVIDER}/start{query}", self.daemon.url);
        let sites = [self.daemon.url.as_str(), self.provider.issuer.as_str()];
        let (back, _) = browser.sign_in(&start, login, &sites).await;
        let mut said = said(&back);
        match back.fragment().unwrap_or_default() {
            page if page.starts_with("/signed-in") => {
                assert_eq!(said["user"], login);
                Ok(said.remove("token").unwrap())
            }
            page if page.starts_with("/login") => Err(said.remove("error").unwrap()),
            page => panic!("the sign-in ended at {page}"),
        }
    }
}

fn sso_config(setup: &FleetSetup, issuer: &str, redirect_url: &str) -> Config {
    let mut config = setup.config();
    testbed::write_private(&config.keys_dir().join("oidc-test"), CLIENT_SECRET);
    config.auth.oidc = vec![OidcConfig {
        name: PROVIDER.into(),
        display_name: Some("the test provider".into()),
        issuer: issuer.into(),
        client_id: "linkops".into(),
        client_secret_file: "oidc-test".into(),
        redirect_url: redirect_url.into(),
        scopes: ["openid", "profile", "groups"].map(String::from).to_vec(),
        groups_claim: "groups".into(),
        username_claim: "preferred_username".into(),
        session_lifetime: Duration::from_secs(3600),
        timeout: Duration::from_secs(10),
    }];
    config
}

/// `POST /api/operations/run` of whoami on `machine`: the status.
async fn run_on(daemon: &TestDaemon, token: &str, machine: &str) -> StatusCode {
    let body = json!({"script": "whoami", "targets": {"machines": [machine]}});
    (daemon
        .request(
            reqwest::Method::POST,
            "/api/operations/run",
            token,
            Some(body),
        )
        .await)
        .0
}

#[tokio::test]
async fn a_person_signs_in_at_the_provider_and_their_groups_decide_at_every_sign_in() {
    let sso = SsoSetup::start(&[account("alice", &["web-team"])]).await;
    let daemon = &sso.daemon;
    let options: SignInOptions = answer(
        &daemon
            .get("/api/auth/providers", None)
            .await
            .json()
            .await
            .unwrap(),
    );
    assert_eq!(options.providers.len(), 1);
    assert_eq!(options.providers[0].display_name, "the test provider");

    // Signed in, web-team's grant: run on web, refused elsewhere, see web alone.
    let alice = sso.console_sign_in("alice").await.unwrap();
    let me: Me = daemon.read("/api/auth/me", &alice).await;
    assert_eq!((me.username.as_str(), me.role), ("alice", None));
    assert_eq!(me.grants.len(), 1, "{:?}", me.grants);
    let (id, ended) = run_to_end(daemon, &alice, "whoami", &["host1"]).await;
    assert_eq!(ended, OperationState::Succeeded, "operation {id}");
    assert_eq!(run_on(daemon, &alice, "host2").await, StatusCode::FORBIDDEN);
    let machines: Vec<MachineView> = daemon.read("/api/links", &alice).await;
    assert_eq!(
        machines
            .iter()
            .map(|m| m.spec.id.as_str())
            .collect::<Vec<_>>(),
        ["host1"]
    );

    // The audit log names the provider and the subject.
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;
    let query = json!({"table": "audit_log", "filter": [{"column": "action", "op": "eq", "value": "auth.sso"}]});
    let (status, page) = daemon
        .request(
            reqwest::Method::POST,
            "/api/tables/query",
            &admin,
            Some(query),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let detail = page["rows"][0]["detail"].as_str().unwrap();
    assert_eq!(detail, "provider test, subject alice, groups [web-team]");

    // The group removed at the provider: gone at the next sign-in.
    sso.provider.set_accounts(&[account("alice", &[])]).unwrap();
    let again = sso.console_sign_in("alice").await.unwrap();
    assert_eq!(run_on(daemon, &again, "host1").await, StatusCode::FORBIDDEN);
    let machines: Vec<MachineView> = daemon.read("/api/links", &again).await;
    assert!(machines.is_empty(), "{machines:?}");

    // Disabled by an admin: every session ends, and no sign-in opens one.
    let path = "/api/users/alice/disabled";
    let (status, user) = daemon
        .request(
            reqwest::Method::PUT,
            path,
            &admin,
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    for token in [&alice, &again] {
        assert_eq!(
            daemon.get("/api/auth/me", Some(token)).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let refused = sso.console_sign_in("alice").await.unwrap_err();
    assert!(refused.contains("user \"alice\" is disabled"), "{refused}");
    sso.stop().await;
}

#[tokio::test]
async fn the_cli_signs_in_through_the_browser_and_keeps_its_session() {
    let sso = SsoSetup::start(&[account("bob", &["web-team"])]).await;
    let daemon = &sso.daemon;
    let home = testbed::private_dir();
    let mut cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_linkops"))
        .args(["login", "--server", &daemon.url, "--sso", "--no-browser"])
        .env("XDG_CONFIG_HOME", home.path())
        .env("HOME", home.path())
        .env_remove("LINKOPS_SERVER")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The link it prints is where the browser goes.
    use tokio::io::AsyncBufReadExt;
    let mut said_by_cli = tokio::io::BufReader::new(cli.stderr.take().unwrap()).lines();
    let mut link = None;
    while let Some(line) = said_by_cli.next_line().await.unwrap() {
        if let Some(url) = line.trim().strip_prefix(&daemon.url) {
            link = Some(format!("{}{url}", daemon.url));
            break;
        }
    }
    let link = link.expect("the CLI printed the sign-in link");
    let sites = [daemon.url.as_str(), sso.provider.issuer.as_str()];
    let browser = Browser::new();
    let (back, _) = browser.sign_in(&link, "bob", &sites).await;
    // The daemon sent the browser to the CLI's loopback listener.
    assert_eq!(back.host_str(), Some("127.0.0.1"));
    let shown = browser
        .http
        .get(back)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(shown.contains("Signed in to LinkOps"), "{shown}");
    let status = tokio::time::timeout(Duration::from_secs(30), cli.wait())
        .await
        .unwrap()
        .unwrap();
    let mut rest = String::new();
    while let Some(line) = said_by_cli.next_line().await.unwrap() {
        rest.push_str(&line);
    }
    assert!(status.success(), "{rest}");
    assert!(
        rest.contains("logged in to") && rest.contains("as bob"),
        "{rest}"
    );
    // The saved session runs on the web machine, and is refused elsewhere.
    let run = |target: &'static str| {
        let (home, url) = (home.path().to_owned(), daemon.url.clone());
        async move {
            let args = [
                "--server",
                url.as_str(),
                "run",
                "whoami",
                "--target",
                target,
            ];
            crate::cli::linkops_with(&home, &args, None, &[]).await
        }
    };
    let ran = run("host1").await;
    assert!(ran.status.success(), "{}", crate::cli::stderr(&ran));
    let refused = run("host2").await;
    assert!(!refused.status.success());
    let said = crate::cli::stderr(&refused);
    assert!(
        said.contains("this needs operator on machine host2 for script whoami"),
        "{said}"
    );
    // The saved session works: bob sees the web machine.
    let machines = crate::cli::linkops_with(
        home.path(),
        &["--server", &daemon.url, "machines", "--json"],
        None,
        &[],
    )
    .await;
    assert!(
        machines.status.success(),
        "{}",
        crate::cli::stderr(&machines)
    );
    let machines: Value = serde_json::from_slice(&machines.stdout).unwrap();
    let ids: Vec<&str> = machines
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["host1"]);
    sso.stop().await;
}

#[tokio::test]
async fn a_replayed_code_a_foreign_state_and_a_forged_cookie_are_refused() {
    let sso = SsoSetup::start(&[account("carol", &["web-team"])]).await;
    let daemon = &sso.daemon;
    let start = format!("{}/api/auth/sso/{PROVIDER}/start", daemon.url);
    let sites = [daemon.url.as_str(), sso.provider.issuer.as_str()];
    let (back, callback) = Browser::new().sign_in(&start, "carol", &sites).await;
    assert!(back.fragment().unwrap().starts_with("/signed-in"), "{back}");
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // What the callback answers `cookie` (none: no header): the status and
    // the console page's error.
    let call = |cookie: Option<String>| {
        let (plain, url) = (plain.clone(), callback.url.clone());
        async move {
            let mut request = plain.get(url.clone());
            if let Some(cookie) = cookie {
                request = request.header("cookie", cookie);
            }
            let answer = request.send().await.unwrap();
            let status = answer.status();
            let error = match answer.headers().get("location") {
                Some(location) => said(&url.join(location.to_str().unwrap()).unwrap())
                    .remove("error")
                    .unwrap_or_default(),
                None => answer.json::<Value>().await.unwrap()["error"]["message"].to_string(),
            };
            (status, error)
        }
    };

    // The code and the cookie of that sign-in, again: the provider refuses the code.
    let (status, error) = call(Some(callback.cookie.clone())).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        error.starts_with("identity provider test refused the sign-in"),
        "{error}"
    );
    assert!(error.contains("invalid_grant"), "{error}");

    // The code with another sign-in's cookie: its state is not this one.
    let other = plain.get(&start).send().await.unwrap();
    let other = other.headers()["set-cookie"].to_str().unwrap();
    let other = other.split(';').next().unwrap().to_owned();
    let (status, error) = call(Some(other.clone())).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        error.starts_with("this sign-in was not started here"),
        "{error}"
    );

    // No cookie of ours, or a forged one: refused before the provider is asked.
    let (status, error) = call(None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{error}");
    let (status, error) = call(Some(format!("{other}x"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{error}");
    assert!(
        error.contains("this sign-in was not started here"),
        "{error}"
    );
    sso.stop().await;
}

#[tokio::test]
async fn a_terminal_asks_a_signed_in_person_to_sign_in_again_at_the_provider() {
    let sso = SsoSetup::start_asking(&[account("dana", &["web-team"])], true).await;
    let daemon = &sso.daemon;
    let browser = Browser::new();
    let dana = sso.sign_in_through(&browser, "dana", "").await.unwrap();
    let (status, workspace) = daemon
        .request(
            reqwest::Method::POST,
            "/api/terminal/workspaces",
            &dana,
            Some(json!({"layout": "single"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{workspace}");
    let panes = format!(
        "/api/terminal/workspaces/{}/panes",
        workspace["id"].as_str().unwrap()
    );
    let host1 = Some(json!({"panes": ["host1"]}));
    let (status, said) = daemon
        .request(reqwest::Method::PUT, &panes, &dana, host1.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{said}");
    assert_eq!(said["error"]["details"]["how"], "sso:test", "{said}");

    // A sign-in without a step-up: the provider's session answers, no form, no second factor.
    let forms = || browser.forms.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(forms(), 1);
    let kept = sso.sign_in_through(&browser, "dana", "").await.unwrap();
    assert_eq!(forms(), 1, "the provider asked again without a step-up");
    let (status, _) = daemon
        .request(reqwest::Method::PUT, &panes, &kept, host1.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Signed in again: the provider asked for the form once more (max_age=0).
    let again = sso
        .sign_in_through(&browser, "dana", "?step_up=true")
        .await
        .unwrap();
    assert_eq!(forms(), 2, "the provider did not ask again");
    let me: Me = daemon.read("/api/auth/me", &again).await;
    assert!(me.second_factor_at.is_some(), "{me:?}");
    let (status, said) = daemon
        .request(reqwest::Method::PUT, &panes, &again, host1)
        .await;
    assert_eq!(status, StatusCode::OK, "{said}");
    sso.stop().await;
}
