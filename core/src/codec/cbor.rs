//! The frame body's CBOR, written directly: a batch is a handful of maps
//! with fixed text keys, strings, integers and one array, so a writer that
//! knows the shape does in one pass what a generic serializer does through
//! a call per header byte. The output is byte-for-byte what
//! `ciborium::into_writer` makes of the equivalent `WireBatch` (definite
//! lengths, shortest integer heads, struct fields as a text-keyed map in
//! declaration order, a UUID as a 16-byte string, `None` as null); the
//! tests hold it to that, and the relay decodes it with ciborium.

use crate::enrich::{Device, Geo};
use crate::event::{BatchRef, ContextRef, EventRef};

const UINT: u8 = 0;
const NINT: u8 = 1;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;
const FALSE: u8 = 0xf4;
const TRUE: u8 = 0xf5;
const NULL: u8 = 0xf6;

/// Appends a batch's CBOR to `out`.
pub fn write_batch(out: &mut Vec<u8>, b: &BatchRef<'_>) {
    let mut w = Writer(out);
    w.head(MAP, 9);
    w.field_text("batch_id", b.batch_id);
    w.field_text("project_id", b.project_id);
    w.field_text("region", b.region);
    w.key("received_at_ms");
    w.int(b.received_at_ms);
    w.key("sent_at_ms");
    w.opt_int(b.sent_at_ms);
    w.key("geo");
    w.geo(b.geo);
    w.key("device");
    w.device(b.device);
    w.field_text("ip_prefix", b.ip_prefix);
    w.key("events");
    w.head(ARRAY, b.events.len() as u64);
    for e in b.events {
        w.event(e);
    }
}

struct Writer<'o>(&'o mut Vec<u8>);

impl Writer<'_> {
    fn head(&mut self, major: u8, n: u64) {
        let m = major << 5;
        if n < 24 {
            self.0.push(m | n as u8);
        } else if n <= u8::MAX as u64 {
            self.0.extend_from_slice(&[m | 24, n as u8]);
        } else if n <= u16::MAX as u64 {
            self.0.push(m | 25);
            self.0.extend_from_slice(&(n as u16).to_be_bytes());
        } else if n <= u32::MAX as u64 {
            self.0.push(m | 26);
            self.0.extend_from_slice(&(n as u32).to_be_bytes());
        } else {
            self.0.push(m | 27);
            self.0.extend_from_slice(&n.to_be_bytes());
        }
    }

    fn text(&mut self, s: &str) {
        self.head(TEXT, s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }

    fn key(&mut self, k: &str) {
        self.text(k);
    }

    fn field_text(&mut self, k: &str, v: &str) {
        self.text(k);
        self.text(v);
    }

    fn int(&mut self, v: i64) {
        if v < 0 {
            self.head(NINT, !(v as u64));
        } else {
            self.head(UINT, v as u64);
        }
    }

    fn opt_int(&mut self, v: Option<i64>) {
        match v {
            Some(v) => self.int(v),
            None => self.0.push(NULL),
        }
    }

    fn bool(&mut self, v: bool) {
        self.0.push(if v { TRUE } else { FALSE });
    }

    fn geo(&mut self, g: &Geo) {
        self.head(MAP, 7);
        self.field_text("country", &g.country);
        self.field_text("region", &g.region);
        self.field_text("city", &g.city);
        self.field_text("timezone", &g.timezone);
        self.field_text("continent", &g.continent);
        self.field_text("colo", &g.colo);
        self.key("asn");
        self.head(UINT, g.asn.into());
    }

    fn device(&mut self, d: &Device) {
        self.head(MAP, 6);
        self.field_text("browser", &d.browser);
        self.field_text("browser_version", &d.browser_version);
        self.field_text("os", &d.os);
        self.field_text("os_version", &d.os_version);
        self.field_text("device_type", &d.device_type);
        self.key("is_bot");
        self.bool(d.is_bot);
    }

    fn event(&mut self, e: &EventRef<'_>) {
        self.head(MAP, 10);
        self.key("event_id");
        self.head(BYTES, 16);
        self.0.extend_from_slice(e.event_id.as_bytes());
        self.key("event_id_derived");
        self.bool(e.event_id_derived);
        self.field_text("event", &e.event);
        self.field_text("user_id", &e.user_id);
        self.field_text("anonymous_id", &e.anonymous_id);
        self.field_text("session_id", &e.session_id);
        self.key("client_ts_ms");
        self.opt_int(e.client_ts_ms);
        self.key("ts_ms");
        self.int(e.ts_ms);
        self.field_text("properties", &e.properties);
        self.key("context");
        self.context(&e.context);
    }

    fn context(&mut self, c: &ContextRef<'_>) {
        self.head(MAP, 11);
        self.field_text("page_url", &c.page_url);
        self.field_text("page_path", &c.page_path);
        self.field_text("page_referrer", &c.page_referrer);
        self.field_text("page_title", &c.page_title);
        self.field_text("app_name", &c.app_name);
        self.field_text("app_version", &c.app_version);
        self.field_text("library_name", &c.library_name);
        self.field_text("library_version", &c.library_version);
        self.field_text("locale", &c.locale);
        self.key("screen_width");
        self.head(UINT, c.screen_width.into());
        self.key("screen_height");
        self.head(UINT, c.screen_height.into());
    }
}
