//! Proxmox VE's API, as the inventory source reads it: the cluster's guests
//! (`GET /api2/json/cluster/resources?type=vm`) and each running guest's
//! addresses — a QEMU guest's from its guest agent, a container's from its
//! interfaces — with an API token (`Authorization: PVEAPIToken=…`), every
//! answer bounded in time and size.

use std::net::IpAddr;
use std::time::Duration;

use linkops_reconcilers::inventory::{Guest, GuestKind, MAX_GUESTS};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::Error;

/// The longest one request may take, and the most one answer may hold.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ANSWER_BYTES: usize = 16 << 20;

pub struct Proxmox {
    http: reqwest::Client,
    base: String,
    /// `PVEAPIToken=USER@REALM!TOKENID=SECRET`: never logged or shown.
    authorization: String,
}

/// Every answer's envelope.
#[derive(Deserialize)]
struct Answer<T> {
    data: T,
}

#[derive(Deserialize)]
struct Resource {
    #[serde(rename = "type")]
    kind: String,
    node: String,
    vmid: u32,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    status: String,
    /// Semicolon-separated.
    #[serde(default)]
    tags: Option<String>,
    /// 1 for a template: never a machine.
    #[serde(default)]
    template: Option<u8>,
}

/// The guest agent's answer.
#[derive(Deserialize)]
struct AgentInterfaces {
    result: Vec<AgentInterface>,
}

#[derive(Deserialize)]
struct AgentInterface {
    #[serde(rename = "ip-addresses", default)]
    addresses: Vec<AgentAddress>,
}

#[derive(Deserialize)]
struct AgentAddress {
    #[serde(rename = "ip-address")]
    address: String,
}

/// A container's interface: `inet` and `inet6` as `address/prefix`.
#[derive(Deserialize)]
struct ContainerInterface {
    #[serde(default)]
    inet: Option<String>,
    #[serde(default)]
    inet6: Option<String>,
}

impl Proxmox {
    /// A client for the API at `url`, trusting only `ca` (the cluster's
    /// `pve-root-ca.pem`) when given, else the system's roots.
    pub fn new(
        url: &str,
        token_id: &str,
        secret: &str,
        ca: Option<&[u8]>,
    ) -> Result<Proxmox, Error> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = ca {
            let certificate = reqwest::Certificate::from_pem(pem).map_err(|error| {
                Error::Proxmox(format!("the CA file is not a PEM certificate: {error}"))
            })?;
            builder = builder.tls_certs_only([certificate]);
        }
        let http = builder
            .build()
            .map_err(|error| Error::Proxmox(format!("cannot make an HTTP client: {error}")))?;
        Ok(Proxmox {
            http,
            base: format!("{}/api2/json", url.trim_end_matches('/')),
            authorization: format!("PVEAPIToken={token_id}={secret}"),
        })
    }

    /// Every guest of the cluster (templates left out), with the addresses
    /// of those `wanted` says to ask for.
    pub async fn guests(&self, wanted: impl Fn(&Guest) -> bool) -> Result<Vec<Guest>, Error> {
        let resources: Vec<Resource> = self.get("/cluster/resources?type=vm").await?;
        if resources.len() > MAX_GUESTS {
            return Err(Error::Proxmox(format!(
                "the cluster lists {} guests; one sync takes at most {MAX_GUESTS}",
                resources.len()
            )));
        }
        let mut guests = Vec::new();
        for resource in resources.into_iter().filter(|r| r.template != Some(1)) {
            let kind = match resource.kind.as_str() {
                "qemu" => GuestKind::Qemu,
                "lxc" => GuestKind::Lxc,
                _ => continue,
            };
            let mut guest = Guest {
                name: resource.name.unwrap_or_else(|| resource.vmid.to_string()),
                node: resource.node,
                vmid: resource.vmid,
                kind,
                running: resource.status == "running",
                tags: (resource.tags.unwrap_or_default().split([';', ',', ' ']))
                    .filter(|tag| !tag.is_empty())
                    .map(str::to_owned)
                    .collect(),
                addresses: Vec::new(),
            };
            if guest.running && wanted(&guest) {
                guest.addresses = self.addresses(&guest).await?;
            }
            guests.push(guest);
        }
        Ok(guests)
    }

    /// A running guest's addresses; none when its agent does not answer.
    async fn addresses(&self, guest: &Guest) -> Result<Vec<IpAddr>, Error> {
        let (node, vmid) = (&guest.node, guest.vmid);
        let texts: Vec<String> = match guest.kind {
            GuestKind::Qemu => {
                let path = format!("/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces");
                // No agent (not installed, not running): Proxmox answers 500; the guest has no address.
                match self.get::<AgentInterfaces>(&path).await {
                    Ok(agent) => (agent.result.into_iter())
                        .flat_map(|i| i.addresses)
                        .map(|a| a.address)
                        .collect(),
                    Err(Error::ProxmoxStatus { status, .. }) if status.is_server_error() => {
                        Vec::new()
                    }
                    Err(error) => return Err(error),
                }
            }
            GuestKind::Lxc => {
                let path = format!("/nodes/{node}/lxc/{vmid}/interfaces");
                let interfaces: Vec<ContainerInterface> = self.get(&path).await?;
                (interfaces.into_iter())
                    .flat_map(|i| [i.inet, i.inet6])
                    .flatten()
                    .collect()
            }
        };
        Ok(texts
            .iter()
            .filter_map(|text| text.split('/').next()?.parse().ok())
            .collect())
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let url = format!("{}{path}", self.base);
        let mut response = (self.http.get(&url))
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .send()
            .await
            .map_err(|error| Error::Proxmox(format!("GET {path}: {}", without_url(&error))))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = (response.chunk().await)
            .map_err(|error| Error::Proxmox(format!("GET {path}: {}", without_url(&error))))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(Error::Proxmox(format!(
                    "GET {path}: the answer passed {MAX_ANSWER_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let said = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(Error::ProxmoxStatus {
                path: path.to_owned(),
                status,
                said,
            });
        }
        let answer: Answer<T> = serde_json::from_slice(&body).map_err(|error| {
            Error::Proxmox(format!("GET {path}: not Proxmox VE's answer: {error}"))
        })?;
        Ok(answer.data)
    }
}

/// A request's error without its URL's query (nothing secret is in it, but
/// the message names the path already).
fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "");
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
