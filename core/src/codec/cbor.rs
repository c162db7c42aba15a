//! The frame body's CBOR, written directly: a batch is a handful of maps
//! with fixed text keys, strings, integers and one array, so a writer that
//! knows the shape does in one pass what a generic serializer does through
//! a call per header byte. The output is byte-for-byte what
//! `ciborium::into_writer` makes of the equivalent `WireBatch` (definite
//! lengths, shortest integer heads, struct fields as a text-keyed map in
//! declaration order, a UUID as a 16-byte string, `None` as null); the
//! tests hold it to that.
//!
//! [`read_batch`] is the writer's mirror for the relay: it reads exactly
//! that shape (the same keys in the same order, definite lengths) straight
//! into a `WireBatch`, each string allocated once at its size, and answers
//! `None` for anything else, which the caller then hands to ciborium, the
//! reference decoder. Whatever it accepts, ciborium decodes to the same
//! batch: the tests and the `decode_frame` fuzz target hold it to that.
//!
//! A context has 11 fields, or 12 when it carries a campaign: `campaign`
//! comes last and is left out when empty (`skip_serializing_if`, which
//! ciborium counts into the map's length the same way). Both readers take
//! both shapes, so frames written before the campaign existed decode with
//! it empty.

use crate::enrich::{Device, Geo};
use crate::event::{
    BatchRef, Campaign, CampaignRef, Context, ContextRef, Event, EventRef, WireBatch,
};

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
        let with_campaign = !c.campaign.is_empty();
        self.head(MAP, if with_campaign { 12 } else { 11 });
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
        if with_campaign {
            self.key("campaign");
            self.campaign(&c.campaign);
        }
    }

    fn campaign(&mut self, c: &CampaignRef<'_>) {
        self.head(MAP, 5);
        self.field_text("source", &c.source);
        self.field_text("medium", &c.medium);
        self.field_text("name", &c.name);
        self.field_text("term", &c.term);
        self.field_text("content", &c.content);
    }
}

/// Reads a batch in exactly the shape [`write_batch`] writes, or `None`
/// (the caller falls back to ciborium). All of `bytes` must be the batch.
pub fn read_batch(bytes: &[u8]) -> Option<WireBatch> {
    let mut r = Reader { bytes, pos: 0 };
    let batch = r.batch()?;
    (r.pos == bytes.len()).then_some(batch)
}

struct Reader<'b> {
    bytes: &'b [u8],
    pos: usize,
}

impl<'b> Reader<'b> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        let end = self.pos.checked_add(n)?;
        let slice = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(slice)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// A head of `major` with a definite argument.
    fn head(&mut self, major: u8) -> Option<u64> {
        let initial = self.byte()?;
        if initial >> 5 != major {
            return None;
        }
        let n = match initial & 0x1f {
            n @ 0..=23 => u64::from(n),
            24 => u64::from(self.byte()?),
            25 => u64::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?)),
            26 => u64::from(u32::from_be_bytes(self.take(4)?.try_into().ok()?)),
            27 => u64::from_be_bytes(self.take(8)?.try_into().ok()?),
            _ => return None,
        };
        Some(n)
    }

    fn str(&mut self) -> Option<&'b str> {
        let len = usize::try_from(self.head(TEXT)?).ok()?;
        std::str::from_utf8(self.take(len)?).ok()
    }

    fn key(&mut self, k: &str) -> Option<()> {
        (self.str()? == k).then_some(())
    }

    fn text(&mut self, k: &str) -> Option<String> {
        self.key(k)?;
        self.str().map(str::to_owned)
    }

    fn map(&mut self, fields: u64) -> Option<()> {
        (self.head(MAP)? == fields).then_some(())
    }

    fn int(&mut self) -> Option<i64> {
        match self.peek()? >> 5 {
            UINT => i64::try_from(self.head(UINT)?).ok(),
            NINT => Some(-1 - i64::try_from(self.head(NINT)?).ok()?),
            _ => None,
        }
    }

    fn opt_int(&mut self) -> Option<Option<i64>> {
        if self.peek()? == NULL {
            self.pos += 1;
            return Some(None);
        }
        self.int().map(Some)
    }

    fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.head(UINT)?).ok()
    }

    fn bool(&mut self) -> Option<bool> {
        match self.byte()? {
            TRUE => Some(true),
            FALSE => Some(false),
            _ => None,
        }
    }

    fn batch(&mut self) -> Option<WireBatch> {
        self.map(9)?;
        let batch_id = self.text("batch_id")?;
        let project_id = self.text("project_id")?;
        let region = self.text("region")?;
        self.key("received_at_ms")?;
        let received_at_ms = self.int()?;
        self.key("sent_at_ms")?;
        let sent_at_ms = self.opt_int()?;
        self.key("geo")?;
        let geo = self.geo()?;
        self.key("device")?;
        let device = self.device()?;
        let ip_prefix = self.text("ip_prefix")?;
        self.key("events")?;
        let count = usize::try_from(self.head(ARRAY)?).ok()?;
        // Each event takes well over 64 bytes: a count the bytes cannot
        // hold is refused before anything is reserved for it.
        if count > self.bytes.len() / 64 + 1 {
            return None;
        }
        let mut events = Vec::with_capacity(count);
        for _ in 0..count {
            events.push(self.event()?);
        }
        Some(WireBatch {
            batch_id,
            project_id,
            region,
            received_at_ms,
            sent_at_ms,
            geo,
            device,
            ip_prefix,
            events,
        })
    }

    fn geo(&mut self) -> Option<Geo> {
        self.map(7)?;
        Some(Geo {
            country: self.text("country")?,
            region: self.text("region")?,
            city: self.text("city")?,
            timezone: self.text("timezone")?,
            continent: self.text("continent")?,
            colo: self.text("colo")?,
            asn: {
                self.key("asn")?;
                self.u32()?
            },
        })
    }

    fn device(&mut self) -> Option<Device> {
        self.map(6)?;
        Some(Device {
            browser: self.text("browser")?,
            browser_version: self.text("browser_version")?,
            os: self.text("os")?,
            os_version: self.text("os_version")?,
            device_type: self.text("device_type")?,
            is_bot: {
                self.key("is_bot")?;
                self.bool()?
            },
        })
    }

    fn event(&mut self) -> Option<Event> {
        self.map(10)?;
        self.key("event_id")?;
        if self.head(BYTES)? != 16 {
            return None;
        }
        let event_id = uuid::Uuid::from_slice(self.take(16)?).ok()?;
        self.key("event_id_derived")?;
        let event_id_derived = self.bool()?;
        let event = self.text("event")?;
        let user_id = self.text("user_id")?;
        let anonymous_id = self.text("anonymous_id")?;
        let session_id = self.text("session_id")?;
        self.key("client_ts_ms")?;
        let client_ts_ms = self.opt_int()?;
        self.key("ts_ms")?;
        let ts_ms = self.int()?;
        let properties = self.text("properties")?;
        self.key("context")?;
        let context = self.context()?;
        Some(Event {
            event_id,
            event_id_derived,
            event,
            user_id,
            anonymous_id,
            session_id,
            client_ts_ms,
            ts_ms,
            properties,
            context,
        })
    }

    fn context(&mut self) -> Option<Context> {
        let with_campaign = match self.head(MAP)? {
            11 => false,
            12 => true,
            _ => return None,
        };
        Some(Context {
            page_url: self.text("page_url")?,
            page_path: self.text("page_path")?,
            page_referrer: self.text("page_referrer")?,
            page_title: self.text("page_title")?,
            app_name: self.text("app_name")?,
            app_version: self.text("app_version")?,
            library_name: self.text("library_name")?,
            library_version: self.text("library_version")?,
            locale: self.text("locale")?,
            screen_width: {
                self.key("screen_width")?;
                self.u32()?
            },
            screen_height: {
                self.key("screen_height")?;
                self.u32()?
            },
            campaign: if with_campaign {
                self.key("campaign")?;
                self.campaign()?
            } else {
                Campaign::default()
            },
        })
    }

    /// A campaign as the writer writes it: all five fields, at least one
    /// set (an empty one is never written, so reading it here would decode
    /// what ciborium decodes, but only the writer's shape is taken).
    fn campaign(&mut self) -> Option<Campaign> {
        self.map(5)?;
        let c = Campaign {
            source: self.text("source")?,
            medium: self.text("medium")?,
            name: self.text("name")?,
            term: self.text("term")?,
            content: self.text("content")?,
        };
        (!c.is_empty()).then_some(c)
    }
}
