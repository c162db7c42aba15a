//! Test data shared by the integration tests: event and batch builders
//! with fixed ids and times, a seeded generator (splitmix64, no
//! dependency), event rows as the relay's sink writes them, and the two
//! generated shops the read-path tests query. Everything here is pure and
//! deterministic: the same call builds the same data in every run.

use spoor_core::{Context, Device, Event, Geo, WireBatch};
use spoor_store::EventRow;
use uuid::Uuid;

/// 2024-03-01T12:34:56.789Z
pub const TS_MS: i64 = 1_709_296_496_789;

pub const MINUTE: i64 = 60_000;
pub const HOUR: i64 = 3_600_000;
pub const DAY: i64 = 86_400_000;
/// 2026-11-22T00:00:00Z
pub const T0: i64 = 1_795_305_600_000;

/// splitmix64: a seeded, dependency-free generator for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn uuid(&mut self) -> Uuid {
        Uuid::from_u128((u128::from(self.next()) << 64) | u128::from(self.next()))
    }
}

/// One event row of `project`, with a random event id.
pub fn row(
    rng: &mut Rng,
    project: &str,
    ts_ms: i64,
    name: &str,
    user_id: &str,
    anonymous_id: &str,
) -> EventRow {
    let mut e = event(0);
    e.event_id = rng.uuid();
    e.ts_ms = ts_ms;
    e.event = name.into();
    e.user_id = user_id.into();
    e.anonymous_id = anonymous_id.into();
    let mut b = batch("read-path", vec![]);
    b.project_id = project.into();
    EventRow::new(&b, e)
}

pub fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | n)
}

pub fn event(n: u128) -> Event {
    Event {
        event_id: id(n),
        event_id_derived: false,
        event: "click".into(),
        user_id: String::new(),
        anonymous_id: format!("anon-{n}"),
        session_id: String::new(),
        client_ts_ms: None,
        ts_ms: TS_MS + n as i64,
        properties: "{}".into(),
        context: Context::default(),
    }
}

pub fn batch(batch_id: &str, events: Vec<Event>) -> WireBatch {
    WireBatch {
        batch_id: batch_id.into(),
        project_id: "proj_it".into(),
        region: "eu-west".into(),
        received_at_ms: TS_MS + 100,
        sent_at_ms: None,
        geo: Geo::default(),
        device: Device::default(),
        ip_prefix: String::new(),
        events,
    }
}

pub fn events(range: std::ops::Range<u128>) -> Vec<Event> {
    range.map(event).collect()
}

/// Fisher–Yates, so rows go in out of time order.
pub fn shuffle<T>(rng: &mut Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i as u64 + 1) as usize);
    }
}

const COUNTRIES: [&str; 6] = ["DE", "FR", "US", "BR", "JP", "ES"];

/// 240 people over two days (and a few hours either side): every 4th
/// anonymous, every 7th on two devices (an anonymous one then counts as two
/// users), events mostly walking a shop's funnel with gaps from seconds to two
/// hours, a random country per event. A second project with the same ids
/// must never leak in.
pub fn shop() -> Vec<EventRow> {
    let mut rng = Rng(0x5eed_f04e);
    let names = [
        "view_item",
        "view_item",
        "add_to_cart",
        "add_to_cart",
        "checkout",
        "payment",
        "page_view",
    ];
    let mut rows = Vec::new();
    for p in 0..240u64 {
        let project = if p % 10 == 9 { "other" } else { "shop" };
        let user = if p % 4 == 0 {
            String::new()
        } else {
            format!("u{}", p % 200)
        };
        let devices = if p % 7 == 0 {
            vec![format!("d{p}a"), format!("d{p}b")]
        } else {
            vec![format!("d{p}")]
        };
        let mut stage = 0;
        let mut ts = T0 - 3 * HOUR + rng.below((2 * DAY + 4 * HOUR) as u64) as i64;
        for i in 0..1 + rng.below(14) {
            ts += match rng.below(3) {
                0 => rng.below(5 * MINUTE as u64) as i64,
                1 => 5 * MINUTE + rng.below(35 * MINUTE as u64) as i64,
                _ => 40 * MINUTE + rng.below(80 * MINUTE as u64) as i64,
            } + 1;
            // Mostly the next step of the shop's funnel, sometimes anything.
            let name = if rng.below(5) < 3 {
                stage = (stage + 1) % 4;
                names[[0, 2, 4, 5][stage]]
            } else {
                *rng.pick(&names)
            };
            let device = &devices[i as usize % devices.len()];
            let mut r = row(&mut rng, project, ts, name, &user, device);
            r.country = (*rng.pick(&COUNTRIES)).into();
            r.properties = match name {
                "add_to_cart" => format!("{{\"plan\":\"{}\"}}", rng.pick(&["pro", "free"])),
                "payment" => format!(
                    "{{\"method\":\"{}\",\"amount\":{}}}",
                    rng.pick(&["card", "paypal"]),
                    rng.below(10)
                ),
                _ => "{}".into(),
            };
            rows.push(r);
        }
    }
    shuffle(&mut rng, &mut rows);
    rows
}

/// 700 events of project `shop` over the last 7 days (one every 14.4
/// minutes, newest a minute ago): page views, add_to_cart and purchases by
/// 41 users (every 6th event anonymous, counted by its device), on three
/// device types in two countries.
pub fn shop_rows(now: i64) -> Vec<EventRow> {
    let newest = now - 60_000;
    (0..700u128)
        .map(|n| {
            let mut e = event(1_000_000 + n);
            e.ts_ms = newest - (n as i64) * (7 * DAY / 700);
            e.event = match n % 5 {
                0 => "purchase",
                1 => "add_to_cart",
                _ => "page_view",
            }
            .into();
            e.user_id = if n % 6 == 0 {
                String::new()
            } else {
                format!("u{}", n % 41)
            };
            e.anonymous_id = format!("dev{}", n % 59);
            e.properties = format!("{{\"price\":{}}}", n % 7);
            let mut b = batch(&format!("api-{n}"), vec![]);
            b.project_id = "shop".into();
            b.received_at_ms = e.ts_ms + 500;
            b.geo = Geo {
                country: if n % 2 == 0 { "DE" } else { "FR" }.into(),
                ..Geo::default()
            };
            b.device = Device {
                device_type: ["desktop", "mobile", "tablet"][(n % 3) as usize].into(),
                ..Device::default()
            };
            EventRow::new(&b, e)
        })
        .collect()
}
