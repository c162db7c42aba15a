//! The aggregator's HTTP API on a real clickhouse-server (18.16), served
//! in-process on a free port with the harness's read-only ClickHouse user:
//! tokens per project, hostile parameters answered with 400s, lanes that
//! keep the dashboard answering while ad-hoc queries pile up, timeouts and
//! row limits, freshness on every answer.

use std::time::Duration;

use spoor_aggregator::config::{ClickHouseRead, Config, Tokens};
use spoor_tests::clickhouse::{ClickHouseServer, READONLY_USER};
use tokio::sync::oneshot;

/// Read tokens used by these tests and the dashboard test.
pub(crate) const SHOP_TOKEN: &str = "shop-read-token-0123456789";
pub(crate) const OTHER_TOKEN: &str = "other-read-token-0123456789";

/// An aggregator served in-process until dropped.
pub(crate) struct Served {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A config reading `database` as the harness's read-only user, with
/// tokens for `shop` and `other`.
pub(crate) fn config(ch: &ClickHouseServer, database: &str) -> Config {
    Config::new(
        ClickHouseRead {
            url: ch.http_url(),
            database: database.to_string(),
            user: Some(READONLY_USER.to_string()),
            password: None,
            allow_writable_user: false,
        },
        Tokens::parse(&format!("shop={SHOP_TOKEN},other={OTHER_TOKEN}")).unwrap(),
    )
}

/// Starts the service on a free port and waits until /healthz answers.
pub(crate) async fn serve(config: Config) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        spoor_aggregator::service::run(config, listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("aggregator failed to start");
    });
    let client = reqwest_client();
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("{url}/healthz")).send().await {
            if r.status().is_success() {
                return Served {
                    url,
                    stop: Some(stop),
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the aggregator at {url} never became healthy");
}

pub(crate) fn reqwest_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}
