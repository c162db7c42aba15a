//! Sample traffic for benchmarks: one realistic batch (and the request
//! metadata it is ingested with), the same bytes in
//! the criterion benches, the wasm stage bench and the whole-system edge
//! bench, so their figures describe the same work.
//!
//! Each event is about 600 bytes of JSON as a web SDK sends it: page
//! context, library, locale, screen, a seven-field property bag, a client
//! timestamp and ids. A 50-event batch is about 30 KB.

/// A `/v1/batch` body of `n` events from one device, `sent_at` = `now_ms`.
/// `tag` (8 hex digits) goes into the event ids, the device and the
/// session, so senders make each request unique by changing it; the
/// whole-system bench passes `@@@@@@@@` and wrk substitutes per request.
pub fn batch_body(n: usize, now_ms: i64, tag: &str) -> String {
    const NAMES: [&str; 5] = [
        "page_view",
        "product_view",
        "add_to_cart",
        "checkout_step",
        "page_view",
    ];
    let mut out = String::with_capacity(64 + n * 640);
    out.push_str(r#"{"batch":["#);
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        let name = NAMES[i % NAMES.len()];
        let user = if i % 3 == 0 {
            format!("user-{tag}")
        } else {
            String::new()
        };
        // Keys in the order serde_json writes a json! object (sorted), as
        // the benches have always sent them.
        out.push_str(&format!(
            concat!(
                r#"{{"anonymous_id":"dev-{tag}","context":{{"library":{{"name":"spoor-web","version":"1.4.2"}},"locale":"de-DE","#,
                r#""page":{{"path":"/catalog/shoes/item-{i}","referrer":"https://www.example.org/search?q=running+shoes","#,
                r#""title":"Trail running shoes | Example Shop","url":"https://shop.example.com/catalog/shoes/item-{i}?utm_source=newsletter"}},"#,
                r#""screen":{{"height":1080,"width":1920}}}},"event":"{name}","event_id":"{tag}-0000-4000-8000-{i:012x}","#,
                r#""properties":{{"category":"shoes","currency":"EUR","experiment":"checkout-v2","path":"/catalog/shoes/item-{i}","#,
                r#""price":{price},"quantity":{qty},"sku":"SKU-{sku:05}"}},"session_id":"sess-{tag}","timestamp":{ts},"user_id":"{user}"}}"#
            ),
            tag = tag,
            i = i,
            name = name,
            price = 79.95 + i as f64,
            qty = 1 + i % 3,
            sku = i * 37 % 99_999,
            ts = now_ms - (n - i) as i64 * 1_000,
            user = user,
        ));
    }
    out.push_str(&format!(r#"],"sent_at":{now_ms}}}"#));
    out
}

/// The request metadata the benches ingest the sample with: project
/// `shop`, region `eu`, 16 partitions, received at `now_ms`, the sample
/// User-Agent, a Berlin IP and geo.
pub fn request_meta(now_ms: i64) -> crate::ingest::RequestMeta<'static> {
    crate::ingest::RequestMeta {
        project_id: "shop",
        region: "eu",
        partitions: 16,
        received_at_ms: now_ms,
        content_type: Some("application/json"),
        content_encoding: None,
        user_agent: USER_AGENT,
        ip: "203.0.113.9",
        geo: crate::Geo {
            country: "DE".into(),
            city: "Berlin".into(),
            colo: "TXL".into(),
            asn: 3320,
            ..crate::Geo::default()
        },
    }
}

/// The User-Agent the benches send (desktop Chrome).
pub const USER_AGENT: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_batch_is_valid_json_of_n_events() {
        let body = batch_body(50, 1_763_800_000_000, "0a0b0c0d");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["batch"].as_array().unwrap().len(), 50);
        assert!((28_000..34_000).contains(&body.len()), "{}", body.len());
    }
}
