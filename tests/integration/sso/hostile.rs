//! What a provider that is not what it claims could send, each refused with
//! a message saying what is wrong: ID tokens signed with another key, with
//! `alg: none`, for another audience, expired, or with another sign-in's
//! nonce; 50 MB of keys; a provider that never answers. A real provider
//! sends none of these, so this one — written from the OpenID Connect
//! Discovery and Core specifications — sends them on purpose.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Browser, PROVIDER, said, sso_config};
use crate::support::FleetSetup;

/// What the provider does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrong {
    /// Signs ID tokens with a key it does not publish.
    Key,
    /// Sends an unsigned token (`alg: none`).
    Unsigned,
    /// Names another client as the audience.
    Audience,
    /// Sends a token that expired a minute ago.
    Expired,
    /// Puts another sign-in's nonce in it.
    Nonce,
    /// Publishes 50 MB of keys.
    HugeKeys,
    /// Accepts the connection and never answers.
    Silent,
}

/// The provider's keys: the one it publishes, and another.
struct Keys {
    published: (jsonwebtoken::EncodingKey, Value),
    other: jsonwebtoken::EncodingKey,
}

/// An RSA key made by openssl: for signing, and as a JWK.
fn rsa_key(dir: &std::path::Path, name: &str) -> (jsonwebtoken::EncodingKey, Value) {
    let path = dir.join(name);
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let modulus = std::process::Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    let modulus = String::from_utf8(modulus.stdout).unwrap();
    let modulus = hex::decode(modulus.trim().trim_start_matches("Modulus=")).unwrap();
    let der = std::process::Command::new("openssl")
        .args(["rsa", "-traditional", "-outform", "DER", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(der.status.success(), "{der:?}");
    let jwk = json!({
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": "published",
        "n": URL_SAFE_NO_PAD.encode(modulus), "e": "AQAB",
    });
    (jsonwebtoken::EncodingKey::from_rsa_der(&der.stdout), jwk)
}

#[derive(Clone)]
struct Hostile {
    issuer: String,
    wrong: Wrong,
    keys: Arc<Keys>,
    /// The nonce of the sign-in under way.
    nonce: Arc<Mutex<String>>,
}

async fn discovery(State(provider): State<Hostile>) -> Response {
    if provider.wrong == Wrong::Silent {
        std::future::pending::<()>().await;
    }
    let issuer = &provider.issuer;
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/auth"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        // It even offers `none`: the daemon accepts public-key signatures alone.
        "id_token_signing_alg_values_supported": ["RS256", "none"],
    }))
    .into_response()
}

async fn jwks(State(provider): State<Hostile>) -> Response {
    let key = provider.keys.published.1.clone();
    if provider.wrong == Wrong::HugeKeys {
        // 50 MiB of keys, streamed as they are sent: what is tested is their
        // size, not how long a debug build takes to make them.
        let head = bytes::Bytes::from(format!("{{\"keys\": [{key}], \"padding\": \""));
        let padding = bytes::Bytes::from(vec![b'x'; 64 << 10]);
        let chunks = std::iter::once(head)
            .chain(std::iter::repeat_n(padding, 800))
            .chain(std::iter::once(bytes::Bytes::from_static(b"\"}")));
        let body = futures::stream::iter(chunks.map(Ok::<_, std::convert::Infallible>));
        let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
        return (json, axum::body::Body::from_stream(body)).into_response();
    }
    axum::Json(json!({"keys": [key]})).into_response()
}

async fn authorize(
    State(provider): State<Hostile>,
    Query(asked): Query<std::collections::HashMap<String, String>>,
) -> Redirect {
    *provider.nonce.lock().unwrap() = asked["nonce"].clone();
    let back = format!(
        "{}?{}",
        asked["redirect_uri"],
        serde_urlencoded::to_string([("code", "a-code"), ("state", &asked["state"])]).unwrap()
    );
    Redirect::to(&back)
}

async fn token(State(provider): State<Hostile>) -> Response {
    let now = jiff::Timestamp::now().as_second();
    let nonce = provider.nonce.lock().unwrap().clone();
    let mut claims = json!({
        "iss": provider.issuer, "sub": "mallory", "aud": "linkops",
        "iat": now, "exp": now + 300, "nonce": nonce,
        "preferred_username": "mallory", "groups": ["admins"],
    });
    match provider.wrong {
        Wrong::Audience => claims["aud"] = json!("another-client"),
        Wrong::Expired => {
            claims["iat"] = json!(now - 120);
            claims["exp"] = json!(now - 60);
        }
        Wrong::Nonce => claims["nonce"] = json!("another-sign-in-s-nonce"),
        _ => {}
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("published".into());
    let id_token = match provider.wrong {
        Wrong::Unsigned => {
            let part = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
            format!(
                "{}.{}.",
                part(&json!({"alg": "none", "kid": "published"})),
                part(&claims)
            )
        }
        Wrong::Key => jsonwebtoken::encode(&header, &claims, &provider.keys.other).unwrap(),
        _ => jsonwebtoken::encode(&header, &claims, &provider.keys.published.0).unwrap(),
    };
    axum::Json(json!({"access_token": "an-access-token", "token_type": "Bearer", "expires_in": 300, "id_token": id_token}))
        .into_response()
}

/// Serves the hostile provider on a loopback port: its issuer URL.
async fn serve(wrong: Wrong, keys: Arc<Keys>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let provider = Hostile {
        issuer: issuer.clone(),
        wrong,
        keys,
        nonce: Arc::default(),
    };
    let routes = axum::Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/auth", get(authorize))
        .route("/token", post(token))
        .with_state(provider);
    tokio::spawn(async move { axum::serve(listener, routes).await.ok() });
    issuer
}

#[tokio::test]
async fn what_a_hostile_provider_sends_is_refused_naming_what_is_wrong() {
    let setup = FleetSetup::new(1, &[], super::SCRIPTS);
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(Keys {
        published: rsa_key(keys_dir.path(), "published.pem"),
        other: rsa_key(keys_dir.path(), "other.pem").0,
    });
    // (what is wrong, what the refusal says)
    let cases = [
        (Wrong::Key, "Signature verification failed"),
        (Wrong::Unsigned, "No signature found"),
        (Wrong::Audience, "audience"),
        (Wrong::Expired, "expired"),
        (Wrong::Nonce, "nonce"),
        (Wrong::HugeKeys, "larger than 1024 KiB"),
        (Wrong::Silent, "timed out"),
    ];
    for (wrong, says) in cases {
        let issuer = serve(wrong, keys.clone()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let redirect_url = format!("{url}/api/auth/sso/{PROVIDER}/callback");
        let mut config = sso_config(&setup, &issuer, &redirect_url);
        config.auth.oidc[0].timeout = Duration::from_secs(2);
        let daemon = setup.start_on(config, listener).await;
        let start = format!("{url}/api/auth/sso/{PROVIDER}/start");
        let refusal = match wrong {
            // Nothing to sign in at: the start itself is refused.
            Wrong::HugeKeys | Wrong::Silent => {
                let answer = daemon.get(&start.replace(&url, ""), None).await;
                assert_eq!(
                    answer.status(),
                    StatusCode::SERVICE_UNAVAILABLE,
                    "{wrong:?}"
                );
                let body: Value = answer.json().await.unwrap();
                body["error"]["message"].as_str().unwrap().to_owned()
            }
            _ => {
                let sites = [url.as_str(), issuer.as_str()];
                let (back, _) = Browser::new().sign_in(&start, "mallory", &sites).await;
                assert!(
                    back.fragment().unwrap().starts_with("/login"),
                    "{wrong:?}: {back}"
                );
                said(&back).remove("error").unwrap()
            }
        };
        assert!(refusal.contains(says), "{wrong:?}: {refusal}");
        // Nobody signed in: mallory has no account.
        let admin = daemon
            .token(crate::support::ADMIN.0, crate::support::ADMIN.1)
            .await;
        let users: Vec<linkops::contract::UserView> = daemon.read("/api/users", &admin).await;
        assert!(
            users.iter().all(|user| user.username != "mallory"),
            "{wrong:?}"
        );
        daemon.stop().await;
    }
}
