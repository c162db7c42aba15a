//! The edge's configuration, read from wrangler vars and secrets on each
//! request (an isolate's env never changes, and parsing it is microseconds).

use spoor_core::auth::WriteKeys;
use spoor_core::route::valid_region;
use spoor_core::Limits;
use worker::Env;

pub struct EdgeConfig {
    pub write_keys: WriteKeys,
    pub nats_host: String,
    pub nats_port: u16,
    pub nats_token: Option<String>,
    pub region: String,
    pub partitions: u32,
    pub allow_test_cf: bool,
    pub publish_timeout_ms: u64,
    pub limits: Limits,
}

fn get(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .ok()
        .map(|s| s.to_string())
        .or_else(|| env.var(name).ok().map(|v| v.to_string()))
        .filter(|s| !s.trim().is_empty())
}

impl EdgeConfig {
    pub fn from_env(env: &Env) -> Result<EdgeConfig, String> {
        let keys = get(env, "WRITE_KEYS").ok_or("WRITE_KEYS is not set")?;
        let write_keys = WriteKeys::from_json(&keys).map_err(|e| e.to_string())?;
        let nats = get(env, "NATS_URL").ok_or("NATS_URL is not set")?;
        let (nats_host, nats_port) = parse_host_port(&nats)?;
        let region = get(env, "REGION").unwrap_or_else(|| "local".into());
        if !valid_region(&region) {
            return Err(format!("REGION {region:?} must be 1-32 letters, digits, '-' or '_'"));
        }
        let partitions = match get(env, "PARTITIONS") {
            None => 16,
            Some(p) => p
                .parse::<u32>()
                .ok()
                .filter(|p| (1..=1024).contains(p))
                .ok_or(format!("PARTITIONS {p:?} must be a number from 1 to 1024"))?,
        };
        let publish_timeout_ms = match get(env, "PUBLISH_TIMEOUT_MS") {
            None => 5_000,
            Some(t) => t.parse().map_err(|_| format!("PUBLISH_TIMEOUT_MS {t:?} is not a number"))?,
        };
        Ok(EdgeConfig {
            write_keys,
            nats_host,
            nats_port,
            nats_token: get(env, "NATS_TOKEN"),
            region,
            partitions,
            allow_test_cf: get(env, "ALLOW_TEST_CF").as_deref() == Some("true"),
            publish_timeout_ms,
            limits: Limits::default(),
        })
    }
}

/// Accepts `host:port` or `nats://host:port`.
fn parse_host_port(url: &str) -> Result<(String, u16), String> {
    let s = url.trim().trim_start_matches("nats://").trim_end_matches('/');
    let (host, port) = s.rsplit_once(':').ok_or(format!("NATS_URL {url:?} must be host:port"))?;
    let port = port.parse().map_err(|_| format!("NATS_URL {url:?} has a bad port"))?;
    Ok((host.to_string(), port))
}
