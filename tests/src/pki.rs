//! A throwaway PKI for a secured nats-server: a CA, a server certificate
//! signed by it, and one nkey user per role. Tests and `cargo xtask demo`
//! generate a fresh one for every server; nothing here is for production
//! (see deploy/README.md for real keys).
//!
//! This file depends only on `std`, `anyhow`, `rcgen` and `nkeys`, because
//! xtask compiles it too (`#[path]` include), without pulling in the rest of
//! the harness (async-nats, tokio).

use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};

/// Who connects to NATS, each with its own nkey and permissions
/// (deploy/nats/nats-server.conf explains each role).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatsRole {
    /// The edge worker: publish events, read its own PubAcks.
    Edge,
    /// `spoor-relay run`.
    Relay,
    /// The `spoor` CLI.
    Ops,
    /// Unrestricted: `spoor-relay migrate`, test set-up.
    Admin,
}

impl NatsRole {
    pub const ALL: [NatsRole; 4] = [
        NatsRole::Edge,
        NatsRole::Relay,
        NatsRole::Ops,
        NatsRole::Admin,
    ];

    /// Lower-case name, used for file names.
    pub fn name(self) -> &'static str {
        match self {
            NatsRole::Edge => "edge",
            NatsRole::Relay => "relay",
            NatsRole::Ops => "ops",
            NatsRole::Admin => "admin",
        }
    }

    /// The variable nats-server.conf reads the role's public key from.
    pub fn public_key_env(self) -> &'static str {
        match self {
            NatsRole::Edge => "SPOOR_NATS_EDGE_NKEY",
            NatsRole::Relay => "SPOOR_NATS_RELAY_NKEY",
            NatsRole::Ops => "SPOOR_NATS_OPS_NKEY",
            NatsRole::Admin => "SPOOR_NATS_ADMIN_NKEY",
        }
    }

    /// The reply-inbox prefix the role may subscribe below.
    pub fn inbox_prefix(self) -> &'static str {
        match self {
            NatsRole::Edge => "_INBOX_EDGE",
            _ => "_INBOX",
        }
    }
}

/// The files and keys of one throwaway PKI, written into a directory.
#[derive(Clone)]
pub struct Pki {
    ca_pem: String,
    ca_path: PathBuf,
    cert_path: PathBuf,
    key_path: PathBuf,
    /// (seed, public key) per role, in `NatsRole::ALL` order.
    users: Vec<(NatsRole, String, String)>,
    dir: PathBuf,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// The names a server certificate covers by default: what the tests and
    /// the demo dial.
    pub const LOCAL_NAMES: [&'static str; 2] = ["localhost", "127.0.0.1"];

    /// Generates a CA, a server certificate for `server_names` (DNS names or
    /// IP addresses) and one nkey user per role, and writes `ca.pem`,
    /// `server-cert.pem`, `server-key.pem` and `<role>.nk` (the seed) into
    /// `dir`. Private keys and seeds are written owner-only.
    pub fn generate(dir: &Path, server_names: &[&str]) -> Result<Pki> {
        Self::generate_valid(dir, server_names, true)
    }

    /// As [`Pki::generate`], but the server certificate expired in 2021:
    /// clients must refuse it.
    pub fn generate_expired(dir: &Path, server_names: &[&str]) -> Result<Pki> {
        Self::generate_valid(dir, server_names, false)
    }

    fn generate_valid(dir: &Path, server_names: &[&str], valid: bool) -> Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (ca_pem, cert_pem, key_pem) = certificates(server_names, valid)?;
        let pki = Pki {
            ca_pem,
            ca_path: dir.join("ca.pem"),
            cert_path: dir.join("server-cert.pem"),
            key_path: dir.join("server-key.pem"),
            users: NatsRole::ALL
                .into_iter()
                .map(|role| {
                    let pair = nkeys::KeyPair::new_user();
                    let seed = pair
                        .seed()
                        .map_err(|e| anyhow::anyhow!("nkey seed for {}: {e}", role.name()))?;
                    Ok((role, seed, pair.public_key()))
                })
                .collect::<Result<_>>()?,
            dir: dir.to_path_buf(),
        };
        write(&pki.ca_path, &pki.ca_pem, false)?;
        write(&pki.cert_path, &cert_pem, false)?;
        write(&pki.key_path, &key_pem, true)?;
        for role in NatsRole::ALL {
            write(&pki.seed_path(role), pki.seed(role), true)?;
        }
        Ok(pki)
    }

    /// The same CA, certificate and keys, written into `dir` too: for a
    /// second server (another region) that must accept the same clients.
    pub fn copy_into(&self, dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let copy = Pki {
            ca_path: dir.join("ca.pem"),
            cert_path: dir.join("server-cert.pem"),
            key_path: dir.join("server-key.pem"),
            dir: dir.to_path_buf(),
            ..self.clone()
        };
        write(&copy.ca_path, &self.ca_pem, false)?;
        write(&copy.cert_path, &read(&self.cert_path)?, false)?;
        write(&copy.key_path, &read(&self.key_path)?, true)?;
        for role in NatsRole::ALL {
            write(&copy.seed_path(role), copy.seed(role), true)?;
        }
        Ok(copy)
    }

    /// The CA certificate (PEM) clients trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The role's nkey seed (`SU...`), its private key.
    pub fn seed(&self, role: NatsRole) -> &str {
        self.user(role).1.as_str()
    }

    /// The role's public nkey (`U...`), what the server config lists.
    pub fn public_key(&self, role: NatsRole) -> &str {
        self.user(role).2.as_str()
    }

    /// `<dir>/<role>.nk`, a file holding only the seed (for
    /// `--nats-nkey-file`).
    pub fn seed_path(&self, role: NatsRole) -> PathBuf {
        self.dir.join(format!("{}.nk", role.name()))
    }

    /// The environment nats-server.conf reads: certificate files and every
    /// role's public key.
    pub fn server_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("SPOOR_NATS_TLS_CERT", self.cert_path.display().to_string()),
            ("SPOOR_NATS_TLS_KEY", self.key_path.display().to_string()),
        ];
        for role in NatsRole::ALL {
            env.push((role.public_key_env(), self.public_key(role).to_string()));
        }
        env
    }

    fn user(&self, role: NatsRole) -> &(NatsRole, String, String) {
        self.users
            .iter()
            .find(|(r, _, _)| *r == role)
            .expect("every role has a user")
    }
}

/// (CA PEM, server certificate PEM, server key PEM).
fn certificates(server_names: &[&str], valid: bool) -> Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Spoor throwaway test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let ca = ca_params
        .self_signed(&ca_key)
        .context("self-signing the CA")?;

    // CertificateParams::new turns "127.0.0.1" into an IP SAN and the rest
    // into DNS SANs.
    let names: Vec<String> = server_names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).context("server certificate names")?;
    params.distinguished_name.push(
        DnType::CommonName,
        server_names.first().copied().unwrap_or("nats"),
    );
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    if !valid {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().context("generating the server key")?;
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .context("signing the server certificate")?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

fn write(path: &Path, text: &str, private: bool) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
