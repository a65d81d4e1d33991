//! The daemon: opens the store, prepares secrets and the first admin, serves the API.

use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::auth::{self, Auth, LockoutPolicy};
use crate::config::Config;
use crate::{secrets, store};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("JWT secret: {0}")]
    Secret(#[from] secrets::Error),
    #[error("creating the first admin failed: {0}")]
    Bootstrap(#[from] auth::Error),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("a start-up task panicked: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Runs the daemon on `listener` until `shutdown` completes, then stops
/// accepting connections and lets in-flight requests finish.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let config = Arc::new(config);
    let state = tokio::task::spawn_blocking({
        let config = config.clone();
        move || prepare(config)
    })
    .await??;

    let address = listener.local_addr().map_err(Error::Serve)?;
    tracing::info!(%address, data_dir = %config.data_dir.display(), "linkops serving");
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)?;
    tracing::info!("linkops stopped");
    Ok(())
}

/// The blocking part of start-up: directories, store, secrets, first admin.
fn prepare(config: Arc<Config>) -> Result<AppState, Error> {
    // Private by default: the data dir holds keys, secrets and the audit log.
    for dir in [config.data_dir.clone(), config.keys_dir()] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| Error::DataDir { path: dir, source })?;
    }
    let store = store::Store::open(&config.store_path())?;
    let secret: SecretString = match &config.auth.jwt_secret {
        Some(secret) => secret.clone(),
        None => secrets::load_or_generate(&config.jwt_secret_path())?.into(),
    };
    if let Some(generated) = auth::bootstrap_admin(&store)? {
        announce_generated_password(&generated);
    }
    let lockout = LockoutPolicy {
        attempts: config.auth.lockout_attempts,
        duration: config.auth.lockout_duration,
    };
    let auth = Auth::new(store.clone(), &secret, config.auth.token_lifetime, lockout);
    Ok(AppState {
        config,
        store,
        auth,
    })
}

/// Shows the generated admin password, once, on stderr — never in the log.
fn announce_generated_password(generated: &auth::GeneratedPassword) {
    eprintln!(
        "\n==================== LINKOPS FIRST START ====================\n\
         Created user '{user}' with a generated password:\n\n    {password}\n\n\
         It is shown only this once and only its hash is stored.\n\
         Change it with: linkops user passwd {user}\n\
         =============================================================\n",
        user = generated.user,
        password = generated.password.expose_secret(),
    );
}
