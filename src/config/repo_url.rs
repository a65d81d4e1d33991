//! The config repository's URL, parsed once: its credentials (an https
//! password or token) are kept out of every `Display`, `Debug`, log line,
//! API answer and audit entry, and [`RepoUrl::scrub`] removes them from the
//! messages of errors that quote the URL (gix's do).

use std::fmt;

/// A repository URL whose credentials never show.
#[derive(Clone, PartialEq, Eq)]
pub struct RepoUrl {
    raw: String,
    /// The part of the URL that is secret: an https password, or a token
    /// given as the user name.
    secret: Option<String>,
}

/// What stands in for a credential.
const MASK: &str = "***";

impl RepoUrl {
    pub fn parse(raw: &str) -> RepoUrl {
        RepoUrl {
            raw: raw.to_owned(),
            secret: secret_of(raw).map(str::to_owned),
        }
    }

    /// The URL with its credentials, for the Git transport only.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The forge host and the `owner/repo` of a remote URL (`git@host:o/r.git`,
    /// `ssh://git@host:2222/o/r.git`, `https://host/o/r`); `None` for a local path.
    pub fn forge_repository(&self) -> Option<(String, String)> {
        let raw = self.raw.as_str();
        let (host, path) = match raw.split_once("://") {
            Some((scheme, rest)) if scheme != "file" => {
                let (authority, path) = rest.split_once('/')?;
                let host = authority.rsplit('@').next()?;
                (host.split(':').next()?.to_owned(), path)
            }
            Some(_) => return None,
            None => {
                // scp-like: [user@]host:path, never a path with a slash before the colon.
                let (authority, path) = raw.split_once(':')?;
                if authority.contains('/') {
                    return None;
                }
                (authority.rsplit('@').next()?.to_owned(), path)
            }
        };
        let path = path.trim_matches('/');
        let path = path.strip_suffix(".git").unwrap_or(path);
        (!host.is_empty() && path.split('/').count() == 2).then(|| (host, path.to_owned()))
    }

    /// The credentials, as written and percent-decoded (for the daemon's
    /// [`crate::secrets::Redactor`]).
    pub fn credentials(&self) -> Vec<String> {
        let Some(secret) = &self.secret else {
            return Vec::new();
        };
        let decoded = percent_decode(secret);
        let mut forms = vec![secret.clone()];
        if decoded != *secret && !decoded.is_empty() {
            forms.push(decoded);
        }
        forms
    }

    /// `text` with every occurrence of the credentials (as written, or
    /// percent-decoded) replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let Some(secret) = &self.secret else {
            return text.to_owned();
        };
        let mut scrubbed = text.replace(secret.as_str(), MASK);
        let decoded = percent_decode(secret);
        if decoded != *secret && !decoded.is_empty() {
            scrubbed = scrubbed.replace(decoded.as_str(), MASK);
        }
        scrubbed
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.scrub(&self.raw))
    }
}

impl fmt::Debug for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoUrl({self})")
    }
}

impl<'de> serde::Deserialize<'de> for RepoUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|raw| RepoUrl::parse(&raw))
    }
}

/// The secret part of a URL's user info: `scheme://user:SECRET@host/…`, or
/// `http(s)://SECRET@host/…` (a token as the user name). SSH user names
/// (`ssh://git@host`, `git@host:repo`) are not secret.
fn secret_of(raw: &str) -> Option<&str> {
    let (scheme, rest) = raw.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _host) = authority.rsplit_once('@')?;
    match userinfo.split_once(':') {
        Some((_, password)) if !password.is_empty() => Some(password),
        Some(_) => None,
        None if matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") => {
            Some(userinfo).filter(|user| !user.is_empty())
        }
        None => None,
    }
}

/// `%XX` escapes decoded (lossily); what a transport may print instead.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            decoded.push(byte);
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forge_repository_is_read_from_the_url() {
        let of = |raw: &str| RepoUrl::parse(raw).forge_repository();
        let expected = Some(("forgejo.example".to_owned(), "ops/config".to_owned()));
        assert_eq!(of("git@forgejo.example:ops/config.git"), expected);
        assert_eq!(
            of("ssh://git@forgejo.example:2222/ops/config.git"),
            expected
        );
        assert_eq!(of("https://bot:token@forgejo.example/ops/config"), expected);
        assert_eq!(of("/srv/git/config"), None);
        assert_eq!(of("file:///srv/git/config"), None);
        assert_eq!(of("https://forgejo.example/config"), None);
    }

    #[test]
    fn credentials_never_show_and_are_scrubbed_from_messages() {
        let cases = [
            (
                "https://bot:tok3n@git.example/ops/fleet.git",
                "https://bot:***@git.example/ops/fleet.git",
            ),
            (
                "https://ghp_secret@github.example/ops/fleet.git",
                "https://***@github.example/ops/fleet.git",
            ),
            ("git@forgejo:ops/fleet.git", "git@forgejo:ops/fleet.git"),
            (
                "ssh://git@forgejo:2222/ops/fleet.git",
                "ssh://git@forgejo:2222/ops/fleet.git",
            ),
            ("/srv/fleet-config", "/srv/fleet-config"),
        ];
        for (raw, shown) in cases {
            let url = RepoUrl::parse(raw);
            assert_eq!(url.to_string(), shown);
            assert_eq!(format!("{url:?}"), format!("RepoUrl({shown})"));
            assert_eq!(url.expose(), raw);
        }
        let url = RepoUrl::parse("https://bot:p%40ss@git.example/x.git");
        let message =
            "could not connect to https://bot:p%40ss@git.example/x.git (user bot, password p@ss)";
        let scrubbed = url.scrub(message);
        assert!(
            !scrubbed.contains("p%40ss") && !scrubbed.contains("p@ss"),
            "{scrubbed}"
        );
    }
}
