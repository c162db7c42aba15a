//! Helpers shared by the integration tests: an in-process relay handle,
//! `/metrics` sampling and polling with a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use spoor_aggregator::query::Sql;
use spoor_aggregator::store::{cell_u64, fetch_rows};
use spoor_relay::sink::clickhouse::EventRow;
use spoor_relay::{RelayConfig, RelayError};
use spoor_tests::clickhouse::ClickHouseServer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(30);

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A relay running in this process, stopped through its shutdown future.
pub struct Relay {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), RelayError>>,
}

impl Relay {
    pub async fn start(config: RelayConfig) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(spoor_relay::run(config, listener, async {
            let _ = stopped.await;
        }));
        let relay = Relay {
            addr,
            stop: Some(stop),
            task,
        };
        // Ready once setup (stream, consumer, schema) is done.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if relay.task.is_finished() {
                let outcome = relay.task.await.expect("relay task panicked");
                panic!("relay exited during setup: {outcome:?}");
            }
            if relay.get("/healthz").await.0 == 200 {
                return relay;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "relay not healthy after {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GET a path on the relay's HTTP server: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.addr);
        tokio::task::spawn_blocking(move || {
            match ureq::get(&url).timeout(Duration::from_secs(5)).call() {
                Ok(r) => (r.status(), r.into_string().unwrap()),
                Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
                Err(e) => (0, e.to_string()),
            }
        })
        .await
        .unwrap()
    }

    /// One sample from `/metrics`, e.g. `spoor_relay_rows_inserted_total` or
    /// `spoor_relay_errors_total{stage="decode",error_type="bad_magic"}`; 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        sample_value(&body, sample)
    }

    /// Triggers shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("relay did not stop in time")
            .expect("relay task panicked")
            .expect("relay returned an error");
    }
}

pub use spoor_tests::metrics::sample_value;

/// Polls `check` until it yields a value, panicking after `WAIT`.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(what, WAIT, check).await
}

/// As [`eventually`], with its own deadline.
pub async fn eventually_within<T, F, Fut>(what: &str, wait: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A fresh database with Spoor's schema applied, for read-path tests: the
/// relay's sink writes rows as the default user, `client` reads them the
/// way the aggregator does (no validation, uncompressed answers, which
/// 18.16 needs).
pub struct SchemaDb {
    pub name: String,
    pub write: spoor_store::ClickHouseConfig,
    pub sink: spoor_relay::sink::clickhouse::ClickHouseSink,
    pub client: clickhouse::Client,
}

pub async fn schema_database(
    ch: &spoor_tests::clickhouse::ClickHouseServer,
    prefix: &str,
) -> SchemaDb {
    let name = ch.fresh_database(prefix);
    let write = spoor_store::ClickHouseConfig {
        url: ch.http_url(),
        database: name.clone(),
        user: None,
        password: None,
    };
    spoor_store::schema::apply(&write).await.unwrap();
    let sink = spoor_relay::sink::clickhouse::ClickHouseSink::new(&write, Duration::from_secs(60));
    let client = write.client();
    SchemaDb {
        name,
        write,
        sink,
        client,
    }
}

/// A relay of `project` only for the end-to-end tests: the relay role on
/// `nats`, database `db` on `ch`, flushing every 200 ms and polling the
/// consumers' lag as often, so what the edge accepted is stored quickly.
pub fn project_relay_config(
    nats: &spoor_tests::nats::NatsServer,
    ch: &ClickHouseServer,
    db: &str,
    project: &str,
) -> RelayConfig {
    let mut config = RelayConfig::new(
        nats_endpoint(nats, spoor_tests::nats::NatsRole::Relay),
        spoor_relay::ClickHouseConfig {
            url: ch.http_url(),
            database: db.to_string(),
            user: None,
            password: None,
        },
    );
    config.batch.flush_interval_ms = 200;
    config.lag_poll_interval = Duration::from_millis(200);
    // The edge's one project (its WRITE_KEYS), as a deployment would list it.
    config.projects = spoor_relay::config::Projects::Only([project.to_string()].into());
    config
}

/// The NATS endpoint (URL, CA, `role`'s seed) of a harness server, as the
/// relay and the CLI take it.
pub fn nats_endpoint(
    nats: &spoor_tests::nats::NatsServer,
    role: spoor_tests::nats::NatsRole,
) -> spoor_runtime::NatsEndpoint {
    spoor_runtime::NatsEndpoint::new(nats.url())
        .with_ca(nats.ca_pem_path())
        .with_nkey_seed(nats.seed(role))
}

/// A rustls client config that trusts only `ca_pem`.
pub fn tls_client_config(ca_pem: &str) -> std::sync::Arc<tokio_rustls::rustls::ClientConfig> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// A TLS-first connection to `nats`, as workerd's `connect(addr,
/// { secureTransport: "on" })` opens it: TCP to the server's port, then a
/// TLS handshake verifying the certificate against `server_name` and the
/// server's CA. The edge's NATS client then runs over it.
pub async fn tls_socket(
    nats: &spoor_tests::nats::NatsServer,
    server_name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", nats.port())).await?;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(tls_client_config(&nats.ca_pem()))
        .connect(name, tcp)
        .await
}

/// A fresh database with the schema and `rows` (inserted in `parts`
/// inserts, so the server aggregates over several parts), and a client for
/// the aggregator's queries.
pub(crate) async fn store_with(
    prefix: &str,
    rows: &[EventRow],
    parts: usize,
) -> clickhouse::Client {
    let ch = ClickHouseServer::shared();
    let SchemaDb { sink, client, .. } = schema_database(ch, prefix).await;
    for chunk in rows.chunks(rows.len().div_ceil(parts.max(1)).max(1)) {
        sink.insert(chunk).await.unwrap();
    }
    client
}

/// `count()` of a table in the client's database.
pub(crate) async fn count_rows(client: &clickhouse::Client, table: &str) -> u64 {
    let sql = Sql {
        text: format!("SELECT count() FROM {table}"),
        params: vec![],
    };
    cell_u64(&fetch_rows(client, &sql).await.unwrap()[0][0]).unwrap()
}
