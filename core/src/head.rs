//! The request head as the edge reads it: one string from the runtime's
//! JS side instead of a boundary crossing per header (each crossing copies
//! strings in and out of wasm memory). Pure parsing, so it is tested here.

/// The headers the edge reads, in the order the JS side sends them.
pub const HEADERS: [&str; 11] = [
    "Origin",
    "X-Spoor-Write-Key",
    "Authorization",
    "Content-Length",
    "Content-Type",
    "Content-Encoding",
    "User-Agent",
    "X-Spoor-Ack",
    "CF-Connecting-IP",
    "X-Spoor-Test-Cf",
    "X-Spoor-Test-Ip",
];

/// The request headers a page may send cross-origin, as a preflight's
/// `Access-Control-Allow-Headers`: Spoor's own, and those Segment's
/// analytics.js sends (`Authorization` with the write key, and
/// `X-Retry-Count` on every retry: without it a retried event's preflight
/// fails and the browser never sends it).
pub const CORS_ALLOW_HEADERS: &str =
    "Content-Type, Content-Encoding, X-Spoor-Write-Key, X-Spoor-Ack, Authorization, X-Retry-Count";

/// What the edge reads of a request besides its body.
#[derive(Debug, Default)]
pub struct RequestHead {
    pub method: String,
    /// The path, e.g. `/v1/batch`.
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    pub origin: Option<String>,
    pub write_key: Option<String>,
    pub authorization: Option<String>,
    pub content_length: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub user_agent: Option<String>,
    pub ack: Option<String>,
    pub cf_connecting_ip: Option<String>,
    pub test_cf: Option<String>,
    pub test_ip: Option<String>,
    /// `request.cf` as JSON, when the runtime supplies it.
    pub cf_json: Option<String>,
}

impl RequestHead {
    /// Reads the fields from the edge's JS side: method, URL, then the
    /// headers in `HEADERS` order, then `request.cf` as JSON, joined by NUL
    /// (which no URL or header value holds); an absent value is the lone
    /// byte 0x01 (which none holds either).
    pub fn parse(text: &str) -> RequestHead {
        let mut f = text.split('\0');
        let mut next = || match f.next() {
            None | Some("\u{1}") => None,
            Some(v) => Some(v.to_string()),
        };
        let method = next().unwrap_or_default();
        let url = next().unwrap_or_default();
        let (path, query) = split_url(&url);
        RequestHead {
            method,
            path,
            query,
            origin: next(),
            write_key: next(),
            authorization: next(),
            content_length: next(),
            content_type: next(),
            content_encoding: next(),
            user_agent: next(),
            ack: next(),
            cf_connecting_ip: next(),
            test_cf: next(),
            test_ip: next(),
            cf_json: next(),
        }
    }
}

/// The path and query of an absolute URL as the runtime serialises it
/// (`scheme://host[:port]/path[?query][#fragment]`).
fn split_url(url: &str) -> (String, Option<String>) {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let from_path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
    let without_fragment = from_path.split('#').next().unwrap_or("/");
    match without_fragment.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (without_fragment.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_path_and_query() {
        assert_eq!(
            split_url("https://e.test/v1/batch"),
            ("/v1/batch".into(), None)
        );
        assert_eq!(
            split_url("http://127.0.0.1:8787/v1/batch?ack=durable#x"),
            ("/v1/batch".into(), Some("ack=durable".into()))
        );
        assert_eq!(split_url("https://e.test"), ("/".into(), None));
    }

    #[test]
    fn absent_and_empty_headers_differ() {
        let h = RequestHead::parse("POST\0https://e.test/v1/track?a=1\0\u{1}\0\0Basic x");
        assert_eq!(h.method, "POST");
        assert_eq!(h.path, "/v1/track");
        assert_eq!(h.query.as_deref(), Some("a=1"));
        assert_eq!(h.origin, None);
        assert_eq!(h.write_key.as_deref(), Some(""));
        assert_eq!(h.authorization.as_deref(), Some("Basic x"));
        assert_eq!(h.cf_json, None);
    }

    #[test]
    fn cors_allows_every_header_a_browser_client_sends() {
        let allowed: Vec<String> = CORS_ALLOW_HEADERS
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        // The web SDK's and analytics.js's requests, retries included
        // (analytics-next adds X-Retry-Count from its second attempt on).
        for sent in [
            "Content-Type",
            "Content-Encoding",
            "X-Spoor-Write-Key",
            "X-Spoor-Ack",
            "Authorization",
            "X-Retry-Count",
        ] {
            assert!(
                allowed.contains(&sent.to_ascii_lowercase()),
                "{sent} is not in {CORS_ALLOW_HEADERS:?}"
            );
        }
        assert!(allowed.iter().all(|h| !h.is_empty() && !h.contains(' ')));
    }
}
