//! The edge's TLS to NATS fails closed. Against a server whose certificate
//! the edge must not trust (signed by another CA, made out to another host
//! name, or expired), no connection gets past the handshake: durable acks
//! answer 503, and fast acks end on the spill queue (under `wrangler dev`,
//! which runs Queues), never on a connection that was not verified.

use serde_json::{json, Value};
use spoor_tests::edge::{Edge, EdgeConfig};
use spoor_tests::nats::{NatsRole, NatsServer};
use spoor_tests::pki::Pki;

use crate::e2e::{send, uuid, Answer};
use crate::edge_link::post_batch;
use crate::support::{eventually, sample_value};

const WRITE_KEY: &str = "wk_tls";

fn vars(config: EdgeConfig) -> EdgeConfig {
    config
        .var("WRITE_KEYS", json!({ WRITE_KEY: "tls" }).to_string())
        .var("REGION", "tls")
        .var("PUBLISH_TIMEOUT_MS", "2000")
        .var("PUBLISH_ATTEMPTS", "1")
}

/// The edge configured for `nats` (its address, TLS, the edge's seed) but
/// trusting `ca` instead of the server's own CA.
fn trusting(nats: &NatsServer, ca: &std::path::Path) -> EdgeConfig {
    vars(
        EdgeConfig::new(nats.host_port())
            .var("NATS_TLS", "on")
            .var("NATS_NKEY_SEED", nats.seed(NatsRole::Edge))
            .trust_ca(ca),
    )
}

fn post(edge: &Edge, durable: bool) -> Answer {
    let body =
        json!({"batch": [{"event": "page_view", "event_id": uuid(), "anonymous_id": "d-tls"}]});
    let extra: &[(&str, &str)] = if durable {
        &[("X-Spoor-Ack", "durable")]
    } else {
        &[]
    };
    post_batch(edge, WRITE_KEY, &body.to_string(), extra)
}

/// Clients the server has authenticated since it started.
fn authenticated_clients(nats: &NatsServer) -> u64 {
    authenticated_named(nats, "")
}

/// Clients the server has authenticated since it started whose
/// connection name starts with `prefix`.
fn authenticated_named(nats: &NatsServer, prefix: &str) -> u64 {
    let url = format!(
        "http://127.0.0.1:{}/connz?state=all&auth=true",
        nats.monitor_port()
    );
    let v: Value =
        serde_json::from_str(&ureq::get(&url).call().unwrap().into_string().unwrap()).unwrap();
    v["connections"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter(|c| c["authorized_user"].is_string() || c["nkey"].is_string())
                .filter(|c| c["name"].as_str().unwrap_or_default().starts_with(prefix))
                .count() as u64
        })
        .unwrap_or(0)
}

#[test]
fn an_untrusted_certificate_gets_durable_acks_503_in_workerd() {
    // The control: a trusted server counts the edge among its clients.
    let trusted = NatsServer::start().unwrap();
    let edge = Edge::start(&vars(EdgeConfig::for_nats(&trusted))).unwrap();
    // No stream on this server: JetStream has no responder, so 503, but
    // only after the link connected and authenticated.
    assert_eq!(post(&edge, true).status, 503);
    // The link's connection, and the ones /healthz opened to ask for the
    // stream's fullness (the harness waits for /healthz).
    assert_eq!(
        authenticated_named(&trusted, "spoor-edge-link-"),
        1,
        "the control's link connected"
    );
    assert!(
        authenticated_named(&trusted, "spoor-edge-health-") >= 1,
        "the control's /healthz connected"
    );
    assert_eq!(
        authenticated_clients(&trusted),
        authenticated_named(&trusted, "spoor-edge-"),
        "only the edge connected"
    );
    drop(edge);

    let other_ca_dir = tempfile::tempdir().unwrap();
    let other = Pki::generate(other_ca_dir.path(), &Pki::LOCAL_NAMES).unwrap();
    let signed_by_another_ca = NatsServer::start().unwrap();
    let other_name = NatsServer::start_with_cert_names(&["nats.example.com"]).unwrap();
    let expired = NatsServer::start_with_expired_cert().unwrap();
    let cases = [
        (
            "signed by another CA",
            &signed_by_another_ca,
            trusting(&signed_by_another_ca, other.ca_path()),
        ),
        (
            "made out to another host name",
            &other_name,
            vars(EdgeConfig::for_nats(&other_name)),
        ),
        ("expired", &expired, vars(EdgeConfig::for_nats(&expired))),
    ];
    for (what, nats, config) in cases {
        let edge = Edge::start(&config).unwrap();
        let a = post(&edge, true);
        assert_eq!(a.status, 503, "certificate {what}: {}", a.body);
        assert_eq!(a.error(), "unavailable");
        let health = send("GET", &format!("{}/healthz", edge.url()), &[], None).json();
        let errors: Vec<&str> = health["links"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["last_error"].as_str())
            .collect();
        assert!(
            errors.iter().any(|e| e.contains("handshake")),
            "certificate {what}: the link names the failed handshake: {health}"
        );
        assert_eq!(
            authenticated_clients(nats),
            0,
            "certificate {what}: no edge connection got past TLS"
        );
        assert!(
            nats.log_tail(200).contains("TLS handshake error"),
            "certificate {what}: the server saw the handshake refused:\n{}",
            nats.log_tail(20)
        );
    }
}

#[test]
fn an_untrusted_certificate_sends_fast_acks_to_the_spill_queue() {
    let other_ca_dir = tempfile::tempdir().unwrap();
    let other = Pki::generate(other_ca_dir.path(), &Pki::LOCAL_NAMES).unwrap();
    let nats = NatsServer::start().unwrap();
    let edge = Edge::start_wrangler(&trusting(&nats, other.ca_path())).unwrap();
    let a = post(&edge, false);
    assert_eq!(
        (a.status, a.header("x-spoor-ack")),
        (202, Some("fast")),
        "{}",
        a.body
    );
    let spilled = "spoor_edge_events_spilled_total{region=\"tls\"}";
    let metrics = || send("GET", &format!("{}/metrics", edge.url()), &[], None).body;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(eventually("the fast-acked event spilled", || async {
        (sample_value(&metrics(), spilled) == 1.0).then_some(())
    }));
    assert_eq!(
        sample_value(
            &metrics(),
            "spoor_edge_events_published_total{region=\"tls\",target=\"home\"}"
        ),
        0.0
    );
    let d = post(&edge, true);
    assert_eq!(d.status, 503, "{}", d.body);
    assert_eq!(authenticated_clients(&nats), 0);
}
