//! The edge's configuration, read from wrangler vars and secrets on each
//! request (an isolate's env never changes, and parsing it is microseconds).
//! It only parses: every rule the values feed lives in spoor-core.

use spoor_core::auth::WriteKeys;
use spoor_core::contract::DEFAULT_EVENTS_STREAM;
use spoor_core::delivery::{CriticalEvents, RetrySchedule};
use spoor_core::fullness::{parse_threshold, DEFAULT_DEGRADED_AT};
use spoor_core::link::Coalesce;
use spoor_core::ratelimit::RateLimits;
use spoor_core::route::valid_region;
use spoor_core::spill::DEFAULT_SPILL_MAX_BYTES;
use spoor_core::Limits;
use spoor_edge_nats::Auth;
use std::rc::Rc;

use worker::Env;

/// The edge role's reply-inbox prefix: its NATS permissions let it
/// subscribe there and nowhere else.
pub const INBOX_PREFIX: &str = "_INBOX_EDGE";

/// Links per (region, colo) unless `SHARDS` says otherwise.
pub const DEFAULT_SHARDS: u32 = 2;

/// One nats-server the edge publishes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsTarget {
    pub host: String,
    pub port: u16,
}

pub struct EdgeConfig {
    pub write_keys: WriteKeys,
    /// The home region's nats-server (`NATS_URL`).
    pub home: NatsTarget,
    /// Where publishing fails over to (`NATS_URL_SECONDARY`, optional).
    pub secondary: Option<NatsTarget>,
    pub nats_token: Option<String>,
    /// The edge role's nkey seed (`NATS_NKEY_SEED`, a secret): CONNECT
    /// carries its public key and a signature of the server's nonce.
    pub nats_nkey_seed: Option<String>,
    /// TLS to every nats-server (`NATS_TLS`, on unless "off"): the socket
    /// opens with TLS first, which nats-server's `handshake_first` expects.
    pub nats_tls: bool,
    pub region: String,
    /// Links per (region, colo) (`SHARDS`).
    pub shards: u32,
    /// `LINKS=off` publishes every request over sockets of its own (the
    /// fallback path) without asking a link: an operator's switch, and the
    /// baseline the link is benchmarked against.
    pub links: bool,
    /// `DISCARD_FRAMES_FOR_BENCHMARKS` (honoured only with
    /// `ALLOW_TEST_CF=true`, which production never sets): `true` drops
    /// accepted frames in the isolate, to measure its own work; `link`
    /// hands them to the link, which answers without publishing, to
    /// measure the hand-off.
    pub discard_frames: bool,
    pub discard_at_link: bool,
    /// How links coalesce frames (`COALESCE_MS`, `COALESCE_MAX_BYTES`).
    pub coalesce: Coalesce,
    pub partitions: u32,
    pub allow_test_cf: bool,
    /// Bound on each NATS handshake and on each wait for PubAcks.
    pub publish_timeout_ms: u64,
    /// Fast-ack publishing after the answer (`PUBLISH_ATTEMPTS`,
    /// `PUBLISH_RETRY_BASE_MS`, `PUBLISH_BUDGET_MS`).
    pub fast_retry: RetrySchedule,
    pub critical: CriticalEvents,
    pub rate_limits: RateLimits,
    /// Largest spill queue message (`SPILL_MAX_BYTES`).
    pub spill_max_bytes: usize,
    /// Delay before a spilled message whose republish failed is tried again
    /// (`SPILL_RETRY_DELAY_S`).
    pub spill_retry_delay_s: u32,
    /// When set, `GET /metrics` needs `Authorization: Bearer <token>`.
    pub metrics_token: Option<String>,
    pub limits: Limits,
    /// The home region's events stream (`STREAM`), whose fullness
    /// `/healthz` reports.
    pub stream: String,
    /// Fullness at which `/healthz` degrades (`STREAM_FULLNESS_DEGRADED`).
    pub stream_degraded_at: f64,
    /// How long an isolate keeps the stream's info (`STREAM_INFO_TTL_MS`).
    pub stream_info_ttl_ms: u64,
}

fn get(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .ok()
        .map(|s| s.to_string())
        .or_else(|| env.var(name).ok().map(|v| v.to_string()))
        .filter(|s| !s.trim().is_empty())
}

fn number<T: std::str::FromStr>(env: &Env, name: &str, default: T) -> Result<T, String> {
    match get(env, name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{name} {v:?} is not a valid number")),
    }
}

thread_local! {
    static CACHED: std::cell::RefCell<Option<Rc<EdgeConfig>>> = const { std::cell::RefCell::new(None) };
}

impl EdgeConfig {
    /// The isolate's config, read from `env` on first use and kept: a
    /// Worker's bindings are fixed for the life of its isolate (a new
    /// deployment or secret starts new isolates), and reading some thirty
    /// bindings across the JS boundary and parsing the key maps on every
    /// request cost more than the rest of the request's bookkeeping. A
    /// config that does not parse is not kept, so every request reports it.
    pub fn cached(env: &Env) -> Result<Rc<EdgeConfig>, String> {
        if let Some(c) = CACHED.with(|c| c.borrow().clone()) {
            return Ok(c);
        }
        let c = Rc::new(EdgeConfig::from_env(env)?);
        CACHED.with(|slot| *slot.borrow_mut() = Some(c.clone()));
        Ok(c)
    }

    pub fn from_env(env: &Env) -> Result<EdgeConfig, String> {
        let keys = get(env, "WRITE_KEYS").ok_or("WRITE_KEYS is not set")?;
        let write_keys = WriteKeys::from_json(&keys).map_err(|e| e.to_string())?;
        let home = parse_target(
            "NATS_URL",
            &get(env, "NATS_URL").ok_or("NATS_URL is not set")?,
        )?;
        let secondary = match get(env, "NATS_URL_SECONDARY") {
            None => None,
            Some(url) => Some(parse_target("NATS_URL_SECONDARY", &url)?),
        };
        let region = get(env, "REGION").unwrap_or_else(|| "local".into());
        if !valid_region(&region) {
            return Err(format!(
                "REGION {region:?} must be 1-32 letters, digits, '-' or '_'"
            ));
        }
        let partitions = match get(env, "PARTITIONS") {
            None => spoor_core::contract::DEFAULT_PARTITIONS,
            Some(p) => p
                .parse::<u32>()
                .ok()
                .filter(|p| (1..=1024).contains(p))
                .ok_or(format!("PARTITIONS {p:?} must be a number from 1 to 1024"))?,
        };
        let shards = match get(env, "SHARDS") {
            None => DEFAULT_SHARDS,
            Some(p) => p
                .parse::<u32>()
                .ok()
                .filter(|p| (1..=64).contains(p))
                .ok_or(format!("SHARDS {p:?} must be a number from 1 to 64"))?,
        };
        let links = match get(env, "LINKS").as_deref().map(str::trim) {
            None | Some("on") => true,
            Some("off") => false,
            Some(other) => return Err(format!("LINKS {other:?} must be \"on\" or \"off\"")),
        };
        let allow_test_cf = get(env, "ALLOW_TEST_CF").as_deref() == Some("true");
        let discard = get(env, "DISCARD_FRAMES_FOR_BENCHMARKS").filter(|_| allow_test_cf);
        let discard_frames = discard.as_deref() == Some("true");
        let discard_at_link = discard.as_deref() == Some("link");
        let dc = Coalesce::default();
        let coalesce = Coalesce {
            window_ms: number(env, "COALESCE_MS", dc.window_ms)?,
            max_bytes: number(env, "COALESCE_MAX_BYTES", dc.max_bytes)?,
        };
        if coalesce.window_ms > 1_000 {
            return Err(format!(
                "COALESCE_MS {} is over 1000: a window that long holds every ack back",
                coalesce.window_ms
            ));
        }
        let nats_tls = match get(env, "NATS_TLS").as_deref().map(str::trim) {
            None | Some("on") | Some("true") => true,
            Some("off") | Some("false") => false,
            Some(other) => return Err(format!("NATS_TLS {other:?} must be \"on\" or \"off\"")),
        };
        let d = RetrySchedule::default();
        let fast_retry = RetrySchedule {
            attempts: number(env, "PUBLISH_ATTEMPTS", d.attempts)?,
            base_delay_ms: number(env, "PUBLISH_RETRY_BASE_MS", d.base_delay_ms)?,
            max_delay_ms: d.max_delay_ms,
            budget_ms: number(env, "PUBLISH_BUDGET_MS", d.budget_ms)?,
        };
        let critical = match get(env, "CRITICAL_EVENTS") {
            None => CriticalEvents::default(),
            Some(text) => CriticalEvents::from_json(&text).map_err(|e| e.to_string())?,
        };
        let rate_limits = RateLimits::from_vars(
            get(env, "RATE_LIMIT_EVENTS_PER_SEC").as_deref(),
            get(env, "RATE_LIMIT_BURST").as_deref(),
            get(env, "RATE_LIMIT_OVERRIDES").as_deref(),
        )
        .map_err(|e| e.to_string())?;
        let stream = get(env, "STREAM")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| DEFAULT_EVENTS_STREAM.to_string());
        if stream.is_empty()
            || stream
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>'))
        {
            return Err(format!(
                "STREAM {stream:?} must be a JetStream stream name (no spaces, '.', '*' or '>')"
            ));
        }
        let stream_degraded_at = match get(env, "STREAM_FULLNESS_DEGRADED") {
            None => DEFAULT_DEGRADED_AT,
            Some(v) => parse_threshold(&v).map_err(|e| format!("STREAM_FULLNESS_DEGRADED {e}"))?,
        };
        Ok(EdgeConfig {
            write_keys,
            home,
            secondary,
            nats_token: get(env, "NATS_TOKEN"),
            nats_nkey_seed: get(env, "NATS_NKEY_SEED"),
            nats_tls,
            region,
            shards,
            links,
            discard_frames,
            discard_at_link,
            coalesce,
            partitions,
            allow_test_cf,
            publish_timeout_ms: number(env, "PUBLISH_TIMEOUT_MS", 5_000)?,
            fast_retry,
            critical,
            rate_limits,
            spill_max_bytes: number(env, "SPILL_MAX_BYTES", DEFAULT_SPILL_MAX_BYTES)?,
            spill_retry_delay_s: number(env, "SPILL_RETRY_DELAY_S", 10)?,
            metrics_token: get(env, "METRICS_TOKEN"),
            limits: Limits::default(),
            stream,
            stream_degraded_at,
            stream_info_ttl_ms: number(env, "STREAM_INFO_TTL_MS", 5_000)?,
        })
    }

    /// The credentials sent in CONNECT: the nkey when there is one, else the
    /// token, else none.
    pub fn nats_auth(&self) -> Auth {
        match (&self.nats_nkey_seed, &self.nats_token) {
            (Some(seed), _) => Auth::NKey { seed: seed.clone() },
            (None, Some(token)) => Auth::Token(token.clone()),
            (None, None) => Auth::None,
        }
    }

    /// The targets in failover order: home, then the secondary if any.
    pub fn targets(&self) -> Vec<(spoor_core::counters::Target, NatsTarget)> {
        use spoor_core::counters::Target;
        let mut t = vec![(Target::Home, self.home.clone())];
        if let Some(s) = &self.secondary {
            t.push((Target::Secondary, s.clone()));
        }
        t
    }
}

/// Accepts `host:port` or `nats://host:port`.
fn parse_target(name: &str, url: &str) -> Result<NatsTarget, String> {
    let s = url
        .trim()
        .trim_start_matches("nats://")
        .trim_end_matches('/');
    let (host, port) = s
        .rsplit_once(':')
        .ok_or(format!("{name} {url:?} must be host:port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{name} {url:?} has a bad port"))?;
    Ok(NatsTarget {
        host: host.to_string(),
        port,
    })
}
