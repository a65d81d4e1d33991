//! Single sign-on with OpenID Connect: the providers of `[[auth.oidc]]`, the
//! authorization-code flow with PKCE (state and nonce checked), and the ID
//! token verified against the provider's published keys — fetched at the
//! first sign-in, fetched again when a token names a key they lack (at most
//! once a minute). Every request to a provider is bounded in time and size.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken,
    EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, StandardErrorResponse,
    StandardTokenResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::config::OidcConfig;

/// The most a provider's answer may hold (discovery, keys, a token): a
/// provider serving more is refused, not read.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// A sign-in must come back from the provider within this.
pub const SIGN_IN_WINDOW: Duration = Duration::from_secs(10 * 60);

/// How far an ID token's issue time may be from this daemon's clock.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The ID token signatures accepted.
const SIGNATURES: [CoreJwsSigningAlgorithm; 9] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// Keys are fetched again for an unknown key id at most this often.
const KEYS_REFRESH: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no identity provider {0:?} in [[auth.oidc]]")]
    UnknownProvider(String),
    #[error("[[auth.oidc]] {name:?}: {problem}")]
    Config { name: String, problem: String },
    #[error(transparent)]
    Secret(#[from] crate::secrets::Error),
    #[error("identity provider {provider} could not be asked: {reason}")]
    Unreachable { provider: String, reason: String },
    #[error(
        "this sign-in was not started here, or is older than {} minutes: start it again",
        SIGN_IN_WINDOW.as_secs() / 60
    )]
    StateMismatch,
    #[error("identity provider {provider} refused the sign-in: {reason}")]
    Refused { provider: String, reason: String },
    #[error("identity provider {provider} sent an ID token that does not hold: {reason}")]
    IdToken { provider: String, reason: String },
    #[error(
        "identity provider {provider} sent no usable {claim:?} claim ({what}); set [[auth.oidc]] {setting} to the claim it sends"
    )]
    Claim {
        provider: String,
        claim: String,
        what: String,
        setting: &'static str,
    },
}

/// Every claim of an ID token beyond the standard ones (the groups, a user
/// name claim of the provider's own).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct OtherClaims {
    #[serde(flatten)]
    claims: serde_json::Map<String, serde_json::Value>,
}

impl AdditionalClaims for OtherClaims {}

type Fields = IdTokenFields<
    OtherClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

type OidcClient = Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    StandardTokenResponse<Fields, CoreTokenType>,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Where a finished sign-in takes the person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Back {
    /// The console, the session in its address's fragment.
    Console,
    /// `linkops login --sso` waiting on this loopback port, with the state it chose.
    Cli { port: u16, state: String },
}

/// What the browser carries from the start of a sign-in to its callback
/// (sealed by the daemon, so neither forged nor read for another sign-in).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub provider: String,
    state: String,
    nonce: String,
    verifier: String,
    pub back: Back,
    /// A step-up: the provider must sign the person in again now.
    #[serde(default)]
    pub step_up: bool,
    /// When it started, ms: a step-up's sign-in must be later.
    #[serde(default)]
    started_at_ms: i64,
}

/// A person as a provider vouched for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub provider: String,
    pub subject: String,
    pub username: String,
    pub groups: Vec<String>,
    /// Asked as a step-up: when the provider signed them in again.
    pub signed_in_again_at_ms: Option<i64>,
}

/// The identity providers; cheap to clone. None by default.
#[derive(Clone, Default)]
pub struct Sso {
    providers: Arc<[Provider]>,
}

struct Provider {
    config: OidcConfig,
    issuer: IssuerUrl,
    redirect: RedirectUrl,
    secret: ClientSecret,
    http: reqwest::Client,
    /// Discovery and keys, with when they were fetched.
    discovered: Mutex<Option<(CoreProviderMetadata, Instant)>>,
}

impl Sso {
    /// The providers of `configs`, their secrets read from `keys_dir` (or an
    /// absolute path) and checked to be 0600; nothing is asked of them yet.
    pub fn new(configs: &[OidcConfig], keys_dir: &Path) -> Result<Sso, Error> {
        let mut providers = Vec::new();
        for config in configs {
            let problem = |problem: String| Error::Config {
                name: config.name.clone(),
                problem,
            };
            let name_ok = (1..=32).contains(&config.name.len())
                && (config.name.bytes())
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !name_ok {
                return Err(problem("name: use 1-32 of a-z, 0-9 and '-'".into()));
            }
            if providers
                .iter()
                .any(|p: &Provider| p.config.name == config.name)
            {
                return Err(problem("two providers have this name".into()));
            }
            let issuer = IssuerUrl::new(config.issuer.clone())
                .map_err(|error| problem(format!("issuer: {error}")))?;
            let loopback = issuer.url().host_str().is_some_and(|host| {
                host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
            if issuer.url().scheme() != "https" && !loopback {
                return Err(problem(format!(
                    "issuer {}: use https (plain http only on loopback)",
                    config.issuer
                )));
            }
            let callback = format!("/api/auth/sso/{}/callback", config.name);
            if !config.redirect_url.ends_with(&callback) {
                return Err(problem(format!(
                    "redirect_url must end in {callback}: the daemon's address as browsers reach it, then that path"
                )));
            }
            let redirect = RedirectUrl::new(config.redirect_url.clone())
                .map_err(|error| problem(format!("redirect_url: {error}")))?;
            let secret_path = keys_dir.join(&config.client_secret_file);
            let secret = ClientSecret::new(crate::secrets::read_private(&secret_path)?);
            let http = reqwest::Client::builder()
                // Following redirects would let a provider point the daemon anywhere.
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(config.timeout)
                .timeout(config.timeout)
                .build()
                .map_err(|error| problem(format!("HTTP client: {error}")))?;
            providers.push(Provider {
                config: config.clone(),
                issuer,
                redirect,
                secret,
                http,
                discovered: Mutex::new(None),
            });
        }
        Ok(Sso {
            providers: providers.into(),
        })
    }

    /// Each provider's name and what the console's button says.
    pub fn providers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.providers.iter().map(|provider| {
            let config = &provider.config;
            (
                config.name.as_str(),
                config.display_name.as_deref().unwrap_or(&config.name),
            )
        })
    }

    /// How long a session signed in at `provider` may last.
    pub fn session_lifetime(&self, provider: &str) -> Result<Duration, Error> {
        Ok(self.provider(provider)?.config.session_lifetime)
    }

    fn provider(&self, name: &str) -> Result<&Provider, Error> {
        (self.providers.iter())
            .find(|provider| provider.config.name == name)
            .ok_or_else(|| Error::UnknownProvider(name.to_owned()))
    }

    /// Starts a sign-in at `provider`: where to send the browser, and what it
    /// must bring back.
    pub async fn start(
        &self,
        provider: &str,
        back: Back,
        step_up: bool,
    ) -> Result<(String, Pending), Error> {
        let provider = self.provider(provider)?;
        let client = provider.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in &provider.config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        if step_up {
            // A sign-in again, not a session the provider still holds.
            request = request.add_extra_param("max_age", "0");
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        let pending = Pending {
            provider: provider.config.name.clone(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
            back,
            step_up,
            started_at_ms: jiff::Timestamp::now().as_millisecond(),
        };
        Ok((url.to_string(), pending))
    }

    /// Finishes a sign-in the provider sent back with `code` and `state`:
    /// the state must be the pending one's; the code is exchanged (with the
    /// PKCE verifier) and the ID token verified — signature by the
    /// provider's keys, issuer, audience, expiry, issue time, nonce.
    pub async fn finish(
        &self,
        pending: Pending,
        code: &str,
        state: &str,
    ) -> Result<Identity, Error> {
        let provider = self.provider(&pending.provider)?;
        if state != pending.state {
            return Err(Error::StateMismatch);
        }
        let client = provider.client().await?;
        let http = provider.bounded_http();
        let exchanged = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|error| provider.unreachable(error))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()))
            .request_async(&http)
            .await
            .map_err(|error| provider.refused_exchange(error))?;
        let id_token = exchanged.id_token().ok_or_else(|| Error::IdToken {
            provider: provider.config.name.clone(),
            reason: "the answer holds no ID token: is `openid` among [[auth.oidc]] scopes?".into(),
        })?;
        let nonce = Nonce::new(pending.nonce.clone());
        let verified = {
            let verifier = provider.verifier(&client);
            id_token.claims(&verifier, &nonce).cloned()
        };
        let claims = match verified {
            Ok(claims) => claims,
            // Keys rotated at the provider: fetched again, once, then asked again.
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            )) if provider.refresh_keys().await? => {
                let client = provider.client().await?;
                let verifier = provider.verifier(&client);
                id_token
                    .claims(&verifier, &nonce)
                    .cloned()
                    .map_err(|error| provider.bad_token(error))?
            }
            Err(error) => return Err(provider.bad_token(error)),
        };
        let mut identity = provider.identity(&claims)?;
        if pending.step_up {
            // Signed in after this step-up began (a clock's skew allowed), not a session the provider kept.
            let again = claims.auth_time().map(|at| at.timestamp_millis());
            let skew = CLOCK_SKEW.as_millis() as i64;
            match again {
                Some(at) if at >= pending.started_at_ms - skew => {
                    identity.signed_in_again_at_ms = Some(at)
                }
                _ => {
                    return Err(Error::IdToken {
                        provider: provider.config.name.clone(),
                        reason: "asked to sign in again (max_age=0), it sent no fresh auth_time"
                            .into(),
                    });
                }
            }
        }
        Ok(identity)
    }
}

impl Provider {
    /// The client for this provider, discovering it first if need be.
    async fn client(&self) -> Result<OidcClient, Error> {
        let mut discovered = self.discovered.lock().await;
        if discovered.is_none() {
            *discovered = Some((self.discover().await?, Instant::now()));
        }
        let (metadata, _) = discovered.as_ref().expect("just discovered");
        Ok(OidcClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(self.config.client_id.clone()),
            Some(self.secret.clone()),
        )
        .set_redirect_uri(self.redirect.clone()))
    }

    async fn discover(&self) -> Result<CoreProviderMetadata, Error> {
        let http = self.bounded_http();
        CoreProviderMetadata::discover_async(self.issuer.clone(), &http)
            .await
            .map_err(|error| self.unreachable(error))
    }

    /// Fetches discovery and keys again unless they are younger than
    /// [`KEYS_REFRESH`]; whether it did.
    async fn refresh_keys(&self) -> Result<bool, Error> {
        let mut discovered = self.discovered.lock().await;
        if discovered
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < KEYS_REFRESH)
        {
            return Ok(false);
        }
        *discovered = Some((self.discover().await?, Instant::now()));
        Ok(true)
    }

    fn verifier<'c>(
        &self,
        client: &'c OidcClient,
    ) -> openidconnect::IdTokenVerifier<'c, CoreJsonWebKey> {
        client
            .id_token_verifier()
            // Public-key signatures alone, whatever the discovery document
            // offers: never `none`, never an HMAC keyed with the client secret.
            .set_allowed_algs(SIGNATURES)
            .set_issue_time_verifier_fn(|issued| {
                let issued = issued.timestamp();
                let now = jiff::Timestamp::now().as_second();
                let skew = CLOCK_SKEW.as_secs() as i64;
                match issued {
                    _ if issued > now + skew => Err(format!(
                        "issued {}s in the future (more than the {skew}s of clock skew allowed)",
                        issued - now
                    )),
                    _ if issued < now - SIGN_IN_WINDOW.as_secs() as i64 => Err(format!(
                        "issued {}s ago, before any sign-in still open",
                        now - issued
                    )),
                    _ => Ok(()),
                }
            })
    }

    /// The person the claims name: their subject, user name and groups.
    fn identity(
        &self,
        claims: &openidconnect::IdTokenClaims<OtherClaims, CoreGenderClaim>,
    ) -> Result<Identity, Error> {
        let config = &self.config;
        let missing = |claim: &str, what: &str, setting| Error::Claim {
            provider: config.name.clone(),
            claim: claim.to_owned(),
            what: what.to_owned(),
            setting,
        };
        let other = &claims.additional_claims().claims;
        let username = match config.username_claim.as_str() {
            "preferred_username" => claims.preferred_username().map(|name| name.to_string()),
            "email" => claims.email().map(|email| email.to_string()),
            "sub" => Some(claims.subject().to_string()),
            claim => other.get(claim).and_then(|v| v.as_str()).map(str::to_owned),
        };
        let username = username
            .filter(|name| super::valid_user_name(name))
            .ok_or_else(|| {
                missing(
                    &config.username_claim,
                    "absent, or not a user name of 1-64 letters, digits, '.', '_', '-'",
                    "username_claim",
                )
            })?;
        let groups = match other.get(&config.groups_claim) {
            None => Vec::new(),
            Some(serde_json::Value::Array(groups)) => groups
                .iter()
                .map(|group| group.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| {
                    missing(&config.groups_claim, "not a list of names", "groups_claim")
                })?,
            Some(_) => {
                return Err(missing(
                    &config.groups_claim,
                    "not a list of names",
                    "groups_claim",
                ));
            }
        };
        Ok(Identity {
            provider: config.name.clone(),
            subject: claims.subject().to_string(),
            username,
            groups,
            signed_in_again_at_ms: None,
        })
    }

    /// The HTTP client openidconnect asks through: no redirects, the
    /// provider's timeout, and answers read up to [`MAX_ANSWER_BYTES`].
    fn bounded_http(
        &self,
    ) -> impl Fn(
        openidconnect::HttpRequest,
    ) -> futures::future::BoxFuture<
        'static,
        Result<openidconnect::HttpResponse, HttpError>,
    > + use<> {
        let http = self.http.clone();
        move |request| {
            let http = http.clone();
            Box::pin(async move {
                let request = reqwest::Request::try_from(request)?;
                let answer = http.execute(request).await?;
                let mut response = openidconnect::http::Response::builder().status(answer.status());
                for (name, value) in answer.headers() {
                    response = response.header(name, value);
                }
                let mut body = Vec::new();
                let mut chunks = answer.bytes_stream();
                while let Some(chunk) = chunks.next().await {
                    let chunk = chunk?;
                    if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                        return Err(HttpError::TooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(response.body(body)?)
            })
        }
    }

    fn unreachable(&self, error: impl std::error::Error) -> Error {
        Error::Unreachable {
            provider: self.config.name.clone(),
            reason: chain(&error),
        }
    }

    fn refused_exchange<E: std::error::Error + 'static>(
        &self,
        error: openidconnect::RequestTokenError<E, StandardErrorResponse<CoreErrorResponseType>>,
    ) -> Error {
        match error {
            openidconnect::RequestTokenError::ServerResponse(answer) => Error::Refused {
                provider: self.config.name.clone(),
                reason: answer.to_string(),
            },
            other => self.unreachable(other),
        }
    }

    fn bad_token(&self, error: impl std::error::Error) -> Error {
        Error::IdToken {
            provider: self.config.name.clone(),
            reason: chain(&error),
        }
    }
}

/// An error and its causes, as one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What asking a provider can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Request(#[from] reqwest::Error),
    #[error(transparent)]
    Http(#[from] openidconnect::http::Error),
    #[error(
        "the answer is larger than {} KiB, more than any provider's needs",
        MAX_ANSWER_BYTES / 1024
    )]
    TooLarge,
}
