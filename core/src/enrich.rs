//! Enrichment rules: geo from the edge runtime's request metadata, device from
//! the User-Agent, and IP truncation. Pure functions; the edge supplies the
//! raw inputs.
//!
//! Why the IP is truncated (IPv4 to its /24, IPv6 to its /48) and not hashed:
//! there is no key to manage or leak, and the prefix keeps coarse network
//! information. The raw client IP never leaves the edge.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Geo data as Cloudflare's `request.cf` reports it. Unknown fields are
/// ignored and missing ones stay empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Geo {
    pub country: String,
    pub region: String,
    pub city: String,
    pub timezone: String,
    pub continent: String,
    pub colo: String,
    #[serde(rename = "asn", deserialize_with = "lenient_u32")]
    pub asn: u32,
}

impl Geo {
    /// Reads the `cf` object's JSON. Bad JSON yields empty geo rather than an
    /// error: geo is best-effort and must never cost the client its events.
    pub fn from_cf_json(text: &str) -> Geo {
        let mut geo: Geo = serde_json::from_str(text).unwrap_or_default();
        for s in [
            &mut geo.country,
            &mut geo.region,
            &mut geo.city,
            &mut geo.timezone,
            &mut geo.continent,
            &mut geo.colo,
        ] {
            truncate_utf8(s, 128);
        }
        geo
    }
}

fn lenient_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    })
}

/// What the User-Agent says about the client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub browser: String,
    pub browser_version: String,
    pub os: String,
    pub os_version: String,
    /// `desktop`, `mobile`, `tablet`, `tv`, `bot` or `unknown`.
    pub device_type: String,
    pub is_bot: bool,
}

impl Device {
    /// Classifies a User-Agent with woothee, the maintained rule set shared by
    /// woothee's implementations in several languages and tested against its
    /// common corpus. The only rule added here splits tablets from phones,
    /// which woothee files together as "smartphone".
    pub fn from_user_agent(ua: &str) -> Device {
        let ua = ua.trim();
        if ua.is_empty() {
            return Device {
                device_type: "unknown".into(),
                ..Device::default()
            };
        }
        // woothee is linear in the input; long headers are bot noise anyway.
        let ua = &ua[..floor_char_boundary(ua, 1024)];
        let Some(r) = woothee::parser::Parser::new().parse(ua) else {
            return Device {
                device_type: "unknown".into(),
                ..Device::default()
            };
        };
        let known = |s: &str| {
            if s == "UNKNOWN" {
                String::new()
            } else {
                s.to_string()
            }
        };
        let is_bot = r.category == "crawler";
        let device_type = match r.category {
            "pc" => "desktop",
            "smartphone" if is_tablet(ua, r.os) => "tablet",
            "smartphone" | "mobilephone" => "mobile",
            "appliance" => "tv",
            "crawler" => "bot",
            _ => "unknown",
        };
        Device {
            browser: if is_bot {
                r.name.to_string()
            } else {
                known(r.name)
            },
            browser_version: known(r.version),
            os: known(r.os),
            os_version: known(&r.os_version),
            device_type: device_type.to_string(),
            is_bot,
        }
    }
}

fn is_tablet(ua: &str, os: &str) -> bool {
    os == "iPad"
        || ua.contains("iPad")
        || ua.contains("Tablet")
        || (os == "Android" && !ua.contains("Mobile"))
}

/// Truncates an IP to its network: IPv4 to /24 (`203.0.113.0`), IPv6 to /48.
/// Returns an empty string for anything that does not parse.
///
/// Truncation, not a keyed hash, is Spoor's choice: the prefix still answers
/// coarse questions (which network, which ISP) and there is no key to rotate
/// or leak, while the host part that identifies a person is never stored.
pub fn truncate_ip(ip: &str) -> String {
    match ip.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => {
            let o = v4.octets();
            format!("{}.{}.{}.0", o[0], o[1], o[2])
        }
        Ok(IpAddr::V6(v6)) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return truncate_ip(&v4.to_string());
            }
            let s = v6.segments();
            std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string()
        }
        Err(_) => String::new(),
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

pub(crate) fn truncate_utf8(s: &mut String, max: usize) {
    let end = floor_char_boundary(s, max);
    s.truncate(end);
}

#[cfg(test)]
mod tests;
