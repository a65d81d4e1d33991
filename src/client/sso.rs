//! `linkops login --sso`: signing in through the browser. The CLI listens on
//! a loopback port, sends the browser to the daemon's start of a sign-in at
//! the provider, and the daemon sends it back here with the session — or
//! why not — and the state this sign-in chose, so no other page can hand
//! the CLI a session.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::Html;
use tokio::sync::mpsc;

use super::{Client, Error, Result, Session};
use crate::contract::{SignInOptions, SignedIn};

/// How long the CLI waits for the browser to come back.
const WAIT: Duration = Duration::from_secs(5 * 60);

/// Signs in at `provider` (the daemon's only one when `None`) through the
/// browser, and saves the session as `linkops login` does.
pub async fn login(server: &str, provider: Option<&str>, open_browser: bool) -> Result<()> {
    let client = Client::new(server, None);
    let options: SignInOptions = client.get("/api/auth/providers").await?;
    let names: Vec<&str> = options.providers.iter().map(|p| p.name.as_str()).collect();
    let chosen = match (provider, names.as_slice()) {
        (_, []) => {
            return Err(Error::Usage(format!(
                "{server} has no identity provider ([[auth.oidc]]): sign in with a password"
            )));
        }
        (Some(asked), _) => (options.providers.iter())
            .find(|p| p.name == asked)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "{server} has no identity provider {asked:?}; it has {}",
                    names.join(", ")
                ))
            })?,
        (None, [_]) => &options.providers[0],
        (None, _) => {
            return Err(Error::Usage(format!(
                "{server} has several identity providers: name one (`--sso {}`)",
                names.join("` or `--sso ")
            )));
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| Error::Usage(format!("cannot listen on loopback: {error}")))?;
    let port = listener
        .local_addr()
        .map_err(|error| Error::Usage(format!("cannot listen on loopback: {error}")))?
        .port();
    let state = crate::auth::password::generate();
    let url = format!(
        "{}{}?cli_port={port}&cli_state={state}",
        client.server(),
        chosen.start
    );
    eprintln!(
        "Sign in with {} in your browser (waiting {} minutes):\n  {url}",
        chosen.display_name,
        WAIT.as_secs() / 60
    );
    if open_browser {
        // Without a desktop the link above is the way.
        let _ = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    let (came_back, mut arrived) = mpsc::channel::<SignedIn>(1);
    let routes = axum::Router::new()
        .route("/", axum::routing::get(answer))
        .with_state((state.clone(), came_back));
    let serving = axum::serve(listener, routes);
    let back = tokio::select! {
        served = serving => {
            return Err(Error::Usage(format!("the loopback listener stopped: {served:?}")));
        }
        back = tokio::time::timeout(WAIT, arrived.recv()) => back,
    };
    let back = back.ok().flatten().ok_or_else(|| {
        Error::Usage("the browser did not come back in time: run it again".into())
    })?;
    if let Some(error) = back.error {
        return Err(Error::Usage(format!("the sign-in was refused: {error}")));
    }
    let (Some(token), Some(user), Some(expires_at)) = (back.token, back.user, back.expires_at)
    else {
        return Err(Error::Usage("the daemon sent back no session".into()));
    };
    let session = Session {
        server: client.server().to_owned(),
        user: user.clone(),
        token,
        expires_at,
    };
    let path = session.save()?;
    eprintln!(
        "logged in to {} as {user} through {}; session saved in {} (mode 0600), valid until {}",
        session.server,
        chosen.display_name,
        path.display(),
        session.expires_at
    );
    Ok(())
}

/// The browser's arrival: taken when it carries this sign-in's state.
async fn answer(
    State((state, came_back)): State<(String, mpsc::Sender<SignedIn>)>,
    Query(back): Query<SignedIn>,
) -> Html<&'static str> {
    if back.state.as_deref() != Some(state.as_str()) {
        return Html("<p>This is not the sign-in the LinkOps CLI is waiting for.</p>");
    }
    let refused = back.error.is_some();
    came_back.send(back).await.ok();
    Html(match refused {
        true => "<p>The sign-in was refused; the LinkOps CLI says why. You may close this tab.</p>",
        false => "<p>Signed in to LinkOps. You may close this tab.</p>",
    })
}
