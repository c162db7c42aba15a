use super::*;

#[test]
fn ip_truncation() {
    assert_eq!(truncate_ip("203.0.113.77"), "203.0.113.0");
    assert_eq!(truncate_ip("2001:db8:abcd:12::1"), "2001:db8:abcd::");
    assert_eq!(truncate_ip("::ffff:198.51.100.9"), "198.51.100.0");
    assert_eq!(truncate_ip("not an ip"), "");
    assert_eq!(truncate_ip(""), "");
}

#[test]
fn geo_from_cf() {
    let g = Geo::from_cf_json(
        r#"{"country":"DE","region":"Berlin","city":"Berlin","timezone":"Europe/Berlin",
            "continent":"EU","colo":"TXL","asn":3320,"latitude":"52.5","tlsVersion":"TLSv1.3"}"#,
    );
    assert_eq!(g.country, "DE");
    assert_eq!(g.colo, "TXL");
    assert_eq!(g.asn, 3320);
    assert_eq!(Geo::from_cf_json(r#"{"asn":"13335"}"#).asn, 13335);
    assert_eq!(Geo::from_cf_json("garbage"), Geo::default());
}

#[test]
fn empty_and_unknown_agents() {
    assert_eq!(Device::from_user_agent("").device_type, "unknown");
    let d = Device::from_user_agent("totally-made-up/1.0");
    assert!(!d.is_bot);
}

/// Checks the parser against the real User-Agent corpus in
/// `tests/fixtures/user_agents.tsv`: each line holds an agent and the
/// classification we expect (browser, os, device type, bot flag).
#[test]
fn real_user_agents_snapshot() {
    let corpus = include_str!("../../../tests/fixtures/user_agents.tsv");
    let mut checked = 0;
    let mut failures = Vec::new();
    for (n, line) in corpus.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            cols.len(),
            5,
            "line {}: expected 5 tab-separated columns",
            n + 1
        );
        let d = Device::from_user_agent(cols[4]);
        let got = [
            d.browser.as_str(),
            d.os.as_str(),
            d.device_type.as_str(),
            if d.is_bot { "bot" } else { "human" },
        ];
        if got != [cols[0], cols[1], cols[2], cols[3]] {
            failures.push(format!(
                "line {}: {:?} → {:?}, expected {:?}",
                n + 1,
                cols[4],
                got,
                &cols[..4]
            ));
        }
        checked += 1;
    }
    assert!(checked >= 200, "corpus holds only {checked} agents");
    assert!(
        failures.is_empty(),
        "{} of {checked} agents differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
