//! Commit statuses on Forgejo, Gitea and GitHub:
//! `POST {api}/repos/{owner}/{repo}/statuses/{sha}`.

use linkops_reconcilers::outbox::CommitStatus;
use secrecy::{ExposeSecret, SecretString};

use super::Error;
use crate::config::{Config, ForgeKind};

/// The forge of the config repository, and the token that may post on it.
pub struct Forge {
    kind: ForgeKind,
    /// `https://forgejo.example/api/v1`, no trailing slash.
    api_url: String,
    /// `owner/repo`.
    repository: String,
    token: SecretString,
}

impl Forge {
    /// `None` when `[forge] kind` is unset. Reads the token file (blocking).
    pub fn from_config(config: &Config) -> Result<Option<Forge>, Error> {
        let Some(kind) = config.forge.kind else {
            return Ok(None);
        };
        let remote = config
            .git
            .url
            .as_ref()
            .and_then(|url| url.forge_repository());
        let repository = match (&config.forge.repository, &remote) {
            (Some(repository), _) => repository.clone(),
            (None, Some((_, repository))) => repository.clone(),
            (None, None) => {
                return Err(Error::Forge(
                    "cannot tell owner/repo from [git] url: set [forge] repository".into(),
                ));
            }
        };
        if repository.split('/').count() != 2 || repository.contains(char::is_whitespace) {
            return Err(Error::Forge(format!(
                "repository {repository:?} is not owner/repo"
            )));
        }
        let api_url = match (&config.forge.api_url, kind, &remote) {
            (Some(url), _, _) => url.trim_end_matches('/').to_owned(),
            (None, ForgeKind::Github, _) => "https://api.github.com".to_owned(),
            (None, _, Some((host, _))) => format!("https://{host}/api/v1"),
            (None, _, None) => {
                return Err(Error::Forge(
                    "cannot tell the API's address from [git] url: set [forge] api_url".into(),
                ));
            }
        };
        let allowed = config.forge.allow_plain_http;
        super::check_transport(&api_url, allowed, "[forge] allow_plain_http")
            .map_err(|problem| Error::Forge(format!("api_url {api_url:?}: {problem}")))?;
        let token =
            crate::secrets::read_private(&config.keys_dir().join(&config.forge.token_file))?;
        Ok(Some(Forge {
            kind,
            api_url,
            repository,
            token: token.into(),
        }))
    }

    /// `redactor` with the token added.
    pub fn redacted_from(&self, redactor: crate::secrets::Redactor) -> crate::secrets::Redactor {
        redactor.secret(self.token.expose_secret())
    }

    /// Posts one status; the error is what to record and retry on (redacted
    /// by the caller: it may echo the token).
    pub async fn post(
        &self,
        client: &reqwest::Client,
        status: &CommitStatus,
    ) -> Result<(), String> {
        let url = format!(
            "{}/repos/{}/statuses/{}",
            self.api_url, self.repository, status.sha
        );
        let authorization = match self.kind {
            // Forgejo and Gitea take `token <t>`; GitHub `Bearer <t>`.
            ForgeKind::Forgejo | ForgeKind::Gitea => {
                format!("token {}", self.token.expose_secret())
            }
            ForgeKind::Github => format!("Bearer {}", self.token.expose_secret()),
        };
        let mut request = client
            .post(&url)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .json(&serde_json::json!({
                "state": status.state,
                "target_url": status.target_url.as_deref().unwrap_or_default(),
                "description": status.description,
                "context": status.context,
            }));
        if self.kind == ForgeKind::Github {
            request = request.header(reqwest::header::ACCEPT, "application/vnd.github+json");
        }
        let answer = request
            .send()
            .await
            .map_err(|error| super::request_error(&error))?;
        if answer.status().is_success() {
            return Ok(());
        }
        let code = answer.status();
        Err(format!(
            "the forge answered {code}: {}",
            super::answer_excerpt(answer).await
        ))
    }
}
