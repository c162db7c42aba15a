//! Where a native NATS client (the relay, `spoor-relay migrate`, the `spoor`
//! CLI) connects and how it proves who it is: TLS first against a CA the
//! operator names, and an nkey user whose seed signs the server's nonce.
//!
//! One connect function and one set of flags ([`NatsArgs`]) for every
//! native client, so the relay and the CLI cannot drift apart on security
//! settings. Every error names the flag and the environment variable that
//! fix it, and never contains the seed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::ConnectErrorKind;

/// The flags (and environment variables) that configure a NATS connection,
/// for error messages.
pub const URL_FLAG: &str = "--nats-url / SPOOR_NATS_URL";
pub const CA_FLAG: &str = "--nats-ca / SPOOR_NATS_CA";
pub const NKEY_FLAG: &str = "--nats-nkey-file / SPOOR_NATS_NKEY_FILE (or SPOOR_NATS_NKEY_SEED)";

/// A NATS server and the credentials to use on it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsEndpoint {
    /// `nats://host:port` or `tls://host:port`, or several servers of one
    /// cluster separated by commas (`tls://a:4222,tls://b:4222`): the client
    /// connects to any of them and fails over among them (and the servers
    /// the cluster advertises). With TLS the certificate is checked against
    /// the host name of the server it reached.
    pub url: String,
    /// CA certificate (PEM) that signed the server's certificate. Setting it
    /// turns on TLS first (no plain-text byte before the handshake), which
    /// is how Spoor's nats-server is configured (`handshake_first`).
    pub ca_file: Option<PathBuf>,
    /// An nkey user's seed (`SU...`): the client signs the server's nonce
    /// with it; the seed itself never goes on the wire.
    pub nkey_seed: Option<String>,
}

/// The seed stays out of logs.
impl std::fmt::Debug for NatsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsEndpoint")
            .field("url", &self.url)
            .field("ca_file", &self.ca_file)
            .field("nkey_seed", &self.nkey_seed.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl From<String> for NatsEndpoint {
    fn from(url: String) -> Self {
        NatsEndpoint::new(url)
    }
}

impl From<&str> for NatsEndpoint {
    fn from(url: &str) -> Self {
        NatsEndpoint::new(url)
    }
}

/// Why a NATS connection could not be set up or opened.
#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    #[error("cannot read the NATS CA certificate {path} (set {CA_FLAG}): {source}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the NATS nkey seed file {path} (set {NKEY_FLAG}): {source}")]
    SeedFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the NATS nkey seed is not a valid nkey seed (from {NKEY_FLAG}; `nk -gen user` or nsc makes one): {reason}")]
    BadSeed { reason: String },
    #[error("no NATS server URL given (set {URL_FLAG})")]
    NoUrl,
    #[error("cannot reach NATS at {url}: {source}; {hint}")]
    Connect {
        url: String,
        hint: &'static str,
        #[source]
        source: async_nats::ConnectError,
    },
}

impl NatsEndpoint {
    /// A server without TLS or credentials (a development server).
    pub fn new(url: impl Into<String>) -> Self {
        NatsEndpoint {
            url: url.into(),
            ca_file: None,
            nkey_seed: None,
        }
    }

    /// Verify the server against this CA, TLS first.
    pub fn with_ca(mut self, ca_file: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(ca_file.into());
        self
    }

    /// Authenticate as the nkey user whose seed this is.
    pub fn with_nkey_seed(mut self, seed: impl Into<String>) -> Self {
        self.nkey_seed = Some(seed.into());
        self
    }

    /// Reads the seed from a file holding only the seed (surrounding
    /// whitespace ignored), as `--nats-nkey-file` does.
    pub fn with_nkey_file(self, path: &Path) -> Result<Self, NatsConnectError> {
        let seed = std::fs::read_to_string(path).map_err(|source| NatsConnectError::SeedFile {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(self.with_nkey_seed(seed.trim().to_string()))
    }

    /// The servers `url` names: its comma-separated entries, trimmed, empty
    /// ones left out.
    pub fn servers(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// True when the connection will use TLS: a CA was given or a URL says
    /// `tls://`.
    pub fn uses_tls(&self) -> bool {
        self.ca_file.is_some() || self.servers().iter().any(|s| s.starts_with("tls://"))
    }

    /// async-nats options for this endpoint, after checking what can be
    /// checked locally (the CA file is readable, the seed is a seed), so
    /// those mistakes fail with their flag named rather than as a handshake
    /// error.
    pub fn options(&self, name: &str) -> Result<async_nats::ConnectOptions, NatsConnectError> {
        let mut options = async_nats::ConnectOptions::new().name(name);
        if let Some(ca) = &self.ca_file {
            std::fs::metadata(ca)
                .and_then(|m| {
                    if m.is_file() {
                        Ok(())
                    } else {
                        Err(std::io::Error::other("not a file"))
                    }
                })
                .map_err(|source| NatsConnectError::CaFile {
                    path: ca.clone(),
                    source,
                })?;
            options = options.add_root_certificates(ca.clone());
        }
        if self.uses_tls() {
            options = options.require_tls(true).tls_first();
        }
        if let Some(seed) = &self.nkey_seed {
            let seed = seed.trim();
            nkeys::KeyPair::from_seed(seed).map_err(|e| NatsConnectError::BadSeed {
                reason: e.to_string(),
            })?;
            options = options.nkey(seed.to_string());
        }
        Ok(options)
    }

    /// Connects once with `options` (from [`NatsEndpoint::options`], plus
    /// whatever the caller added), trying each listed server (in random
    /// order) until one answers; a failure names what to fix.
    pub async fn connect_with(
        &self,
        options: async_nats::ConnectOptions,
    ) -> Result<async_nats::Client, NatsConnectError> {
        let servers = self.servers();
        if servers.is_empty() {
            return Err(NatsConnectError::NoUrl);
        }
        options
            .connect(servers)
            .await
            .map_err(|source| NatsConnectError::Connect {
                url: self.url.clone(),
                hint: self.hint(&source),
                source,
            })
    }

    /// [`NatsEndpoint::options`] then [`NatsEndpoint::connect_with`], with a
    /// bound on the first connection when `timeout` is given.
    pub async fn connect(
        &self,
        name: &str,
        timeout: Option<Duration>,
    ) -> Result<async_nats::Client, NatsConnectError> {
        let mut options = self.options(name)?;
        if let Some(timeout) = timeout {
            options = options.connection_timeout(timeout);
        }
        self.connect_with(options).await
    }

    fn hint(&self, error: &async_nats::ConnectError) -> &'static str {
        // async-nats reports a failed certificate check as an I/O error
        // ("invalid peer certificate: ..."), so look at the text too.
        let text = error.to_string().to_ascii_lowercase();
        let kind = match error.kind() {
            ConnectErrorKind::Io if self.uses_tls() && text.contains("certificate") => {
                ConnectErrorKind::Tls
            }
            kind => kind,
        };
        match kind {
            ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                if self.nkey_seed.is_some() {
                    "the server refused this nkey: check --nats-nkey-file / SPOOR_NATS_NKEY_FILE \
                     (or SPOOR_NATS_NKEY_SEED) and that its public key is in the server's config"
                } else {
                    "the server requires credentials: set --nats-nkey-file / SPOOR_NATS_NKEY_FILE \
                     (or SPOOR_NATS_NKEY_SEED)"
                }
            }
            ConnectErrorKind::Tls => {
                "TLS failed: check --nats-ca / SPOOR_NATS_CA (the CA that signed the server's \
                 certificate) and that the host in --nats-url / SPOOR_NATS_URL is a name in that \
                 certificate"
            }
            ConnectErrorKind::ServerParse | ConnectErrorKind::Dns => {
                "check --nats-url / SPOOR_NATS_URL"
            }
            _ if !self.uses_tls() => {
                "is nats-server running at --nats-url / SPOOR_NATS_URL? Spoor's server speaks TLS \
                 first: set --nats-ca / SPOOR_NATS_CA"
            }
            _ => "is nats-server running at --nats-url / SPOOR_NATS_URL?",
        }
    }
}

/// Where NATS is and how to prove who we are to it: the flags every native
/// client takes (`spoor-relay run` and `migrate`, the `spoor` CLI).
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL (`nats://` or `tls://`; with TLS the host must be a
    /// name in the server's certificate). Several servers of one cluster
    /// are separated by commas; the client connects to any and fails over.
    #[arg(long, env = "SPOOR_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// CA certificate (PEM) that signed nats-server's certificate. Turns on
    /// TLS first, as Spoor's server config requires.
    #[arg(long, env = "SPOOR_NATS_CA")]
    pub nats_ca: Option<std::path::PathBuf>,
    /// File holding this client's nkey seed (`SU...`): the relay role's for
    /// `run`, the admin's for `migrate`, the ops role's for the CLI.
    #[arg(long, env = "SPOOR_NATS_NKEY_FILE", conflicts_with = "nats_nkey_seed")]
    pub nats_nkey_file: Option<std::path::PathBuf>,
    /// The nkey seed itself, for platforms that hand secrets over as
    /// environment variables (a flag would show in `ps`; prefer the env var
    /// or the file).
    #[arg(long, env = "SPOOR_NATS_NKEY_SEED", hide_env_values = true)]
    pub nats_nkey_seed: Option<String>,
}

impl NatsArgs {
    /// The endpoint, with the seed read from its file.
    pub fn endpoint(&self) -> Result<NatsEndpoint, NatsConnectError> {
        let mut endpoint = NatsEndpoint::new(self.nats_url.clone());
        endpoint.ca_file = self.nats_ca.clone();
        if let Some(path) = &self.nats_nkey_file {
            endpoint = endpoint.with_nkey_file(path)?;
        } else if let Some(seed) = &self.nats_nkey_seed {
            endpoint = endpoint.with_nkey_seed(seed.trim().to_string());
        }
        Ok(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_mistakes_name_their_flag_and_never_the_seed() {
        let missing = NatsEndpoint::new("tls://127.0.0.1:1")
            .with_ca("/no/such/ca.pem")
            .options("t")
            .err()
            .unwrap()
            .to_string();
        assert!(
            missing.contains("--nats-ca") && missing.contains("SPOOR_NATS_CA"),
            "{missing}"
        );

        let seed = "SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU-not";
        let endpoint = NatsEndpoint::new("nats://127.0.0.1:1").with_nkey_seed(seed);
        let bad = endpoint.options("t").err().unwrap().to_string();
        assert!(bad.contains("SPOOR_NATS_NKEY_FILE"), "{bad}");
        assert!(!bad.contains(seed) && !format!("{endpoint:?}").contains(seed));

        let file = NatsEndpoint::new("x")
            .with_nkey_file(Path::new("/no/such/seed.nk"))
            .err()
            .unwrap()
            .to_string();
        assert!(file.contains("--nats-nkey-file"), "{file}");
    }

    #[test]
    fn tls_is_on_with_a_ca_or_a_tls_url() {
        assert!(!NatsEndpoint::new("nats://h:1").uses_tls());
        assert!(NatsEndpoint::new("tls://h:1").uses_tls());
        assert!(NatsEndpoint::new("nats://h:1").with_ca("ca.pem").uses_tls());
        assert!(NatsEndpoint::new("nats://h:1, tls://h:2").uses_tls());
    }

    #[test]
    fn a_url_may_list_several_servers() {
        let e = NatsEndpoint::new(" tls://a:1,tls://b:2 ,, tls://c:3,");
        assert_eq!(e.servers(), vec!["tls://a:1", "tls://b:2", "tls://c:3"]);
        assert_eq!(
            NatsEndpoint::new("nats://h:1").servers(),
            vec!["nats://h:1"]
        );
        assert!(NatsEndpoint::new(" , ").servers().is_empty());
    }

    #[tokio::test]
    async fn an_empty_url_names_the_flag() {
        let err = NatsEndpoint::new(" ,")
            .connect("t", None)
            .await
            .unwrap_err();
        assert!(matches!(err, NatsConnectError::NoUrl), "{err}");
        assert!(err.to_string().contains("--nats-url"), "{err}");
    }
}
