//! The traffic model: a pure, seeded simulation of a web shop's clickstream,
//! turned into the exact request bodies an SDK would post, together with what
//! the edge must answer for each of them.
//!
//! Users own one or two devices (each an `anonymous_id`); about 60% have an
//! account and log in at some session, after which their events carry a
//! `user_id`. A device's sessions are separated by more than the inactivity
//! timeout and walk the funnel page_view → add_to_cart → checkout_started →
//! checkout_step → purchase with realistic drop-off. Each device's events are
//! cut into batches of `batch_size`, like an SDK flushing its queue. Invalid
//! events (one defect each, with the edge's reason code) and verbatim resends
//! are mixed in on request.
//!
//! This module must never do I/O, read a clock or draw OS randomness: the
//! seed, the run id and `now_ms` come in, and the same inputs always give the
//! same plan. Shape (who does what, when) comes from `seed` alone and ids from
//! `seed` + `run_id`, so two runs with one seed differ only in their ids and
//! never collide in storage.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

/// A session ends after this much inactivity; the next event starts a new one.
pub const INACTIVITY_MS: i64 = 30 * 60 * 1000;
/// Share of sessions that add something to the cart.
pub const CART_RATE: f64 = 0.40;
/// Share of carting sessions that end in a purchase.
pub const PURCHASE_RATE_OF_CARTS: f64 = 0.30;
/// Share of users with an account (they log in at some session).
pub const LOGGED_IN_RATE: f64 = 0.60;
/// Share of carting sessions that start checkout, and the step-to-step
/// survival through shipping and payment; the last step's rate is derived so
/// that carts convert at `PURCHASE_RATE_OF_CARTS` overall.
const CHECKOUT_RATE: f64 = 0.55;
const STEP_SURVIVAL: f64 = 0.8;
/// `context.library.name` of every generated event.
pub const LIBRARY_NAME: &str = "spoor-loadtest";
const SITE: &str = "https://shop.example";

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub seed: u64,
    /// Tags every event (`properties.run_id`) and seeds the ids.
    pub run_id: Uuid,
    /// The run's start; the simulated history ends just before it.
    pub now_ms: i64,
    /// Events generated, valid and invalid, before resends.
    pub events: usize,
    pub users: usize,
    /// Most events per request: the SDK's flush size.
    pub batch_size: usize,
    /// Probability that a generated event is an invalid one.
    pub invalid_ratio: f64,
    /// Expected resend requests per original request.
    pub resend_ratio: f64,
}

impl ModelConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.users == 0 {
            return Err("--users must be at least 1".into());
        }
        if self.batch_size == 0 {
            return Err("--batch-size must be at least 1".into());
        }
        for (name, v) in [
            ("--invalid-ratio", self.invalid_ratio),
            ("--resend-ratio", self.resend_ratio),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must lie in [0, 1], got {v}"));
            }
        }
        Ok(())
    }
}

/// Everything a run sends, in sending order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub run_id: Uuid,
    /// Unique batches, ordered by `sent_at`.
    pub batches: Vec<Batch>,
    /// Originals in batch order, with resends of recent batches mixed in.
    pub requests: Vec<PlannedRequest>,
}

/// One request body and what the edge must answer for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The device whose queue this batch flushes.
    pub anonymous_id: String,
    /// The device's `User-Agent`, which the edge enriches from.
    pub user_agent: &'static str,
    /// `{"sent_at": ..., "batch": [...]}`, exactly as sent.
    pub body: String,
    pub sent_at_ms: i64,
    pub events: usize,
    /// Ids of the events the edge must accept, in batch order.
    pub valid_ids: Vec<Uuid>,
    /// The events the edge must reject, by index.
    pub rejections: Vec<ExpectedRejection>,
    /// Headers sent with this batch besides (or instead of) the run's: a
    /// replayed request's recorded headers and its project's write key.
    /// Empty for generated traffic.
    pub headers: Vec<(String, String)>,
}

/// A rejection the edge must report: same index, same reason code, and the
/// `event_id` it echoes when the event had a readable one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedRejection {
    pub index: usize,
    pub event_id: Option<String>,
    pub reason: &'static str,
    pub kind: InvalidKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedRequest {
    pub batch: usize,
    /// A verbatim copy of an earlier request, like an SDK retrying after a
    /// lost response.
    pub resend: bool,
}

impl Plan {
    pub fn events_sent(&self) -> usize {
        self.requests
            .iter()
            .map(|r| self.batches[r.batch].events)
            .sum()
    }

    pub fn resends(&self) -> usize {
        self.requests.iter().filter(|r| r.resend).count()
    }

    pub fn unique_valid(&self) -> usize {
        self.batches.iter().map(|b| b.valid_ids.len()).sum()
    }

    pub fn invalid(&self) -> usize {
        self.batches.iter().map(|b| b.rejections.len()).sum()
    }
}

/// The kinds of invalid event, each with exactly one defect so the edge's
/// reason is unambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InvalidKind {
    BadEventId,
    MissingIdentity,
    BadEventName,
    MissingEventName,
    PropertiesNotObject,
    PropertiesTooDeep,
    TimestampOutOfRange,
    BadTimestamp,
    IdTooLong,
    NotAnObject,
}

impl InvalidKind {
    pub const ALL: [InvalidKind; 10] = [
        InvalidKind::BadEventId,
        InvalidKind::MissingIdentity,
        InvalidKind::BadEventName,
        InvalidKind::MissingEventName,
        InvalidKind::PropertiesNotObject,
        InvalidKind::PropertiesTooDeep,
        InvalidKind::TimestampOutOfRange,
        InvalidKind::BadTimestamp,
        InvalidKind::IdTooLong,
        InvalidKind::NotAnObject,
    ];

    /// The edge's reason code (`spoor_core` validation) for this defect.
    pub fn reason(self) -> &'static str {
        match self {
            InvalidKind::BadEventId => "invalid_event_id",
            InvalidKind::MissingIdentity => "missing_identity",
            InvalidKind::BadEventName => "invalid_event_name",
            InvalidKind::MissingEventName => "missing_event_name",
            InvalidKind::PropertiesNotObject => "invalid_properties",
            InvalidKind::PropertiesTooDeep => "properties_too_deep",
            InvalidKind::TimestampOutOfRange => "timestamp_out_of_range",
            InvalidKind::BadTimestamp => "invalid_timestamp",
            InvalidKind::IdTooLong => "id_too_long",
            InvalidKind::NotAnObject => "invalid_event",
        }
    }
}

/// Generates the whole plan.
pub fn generate(cfg: &ModelConfig) -> Result<Plan, String> {
    cfg.check()?;
    let mut g = Generator::new(cfg);
    g.simulate();
    Ok(g.finish())
}

// ---------------------------------------------------------------------------
// The shop.

const CATEGORIES: [&str; 6] = ["shoes", "jackets", "backpacks", "tents", "lamps", "bottles"];
const ADJECTIVES: [&str; 10] = [
    "Trail", "Summit", "Urban", "Alpine", "Coastal", "Nordic", "Canyon", "Forest", "Harbor",
    "Prairie",
];
const NOUNS: [&str; 6] = [
    "Runner", "Shell", "Pack 30L", "Dome 2P", "Headlamp", "Flask 1L",
];

struct Product {
    id: String,
    name: String,
    category: usize,
    price_cents: u64,
}

fn catalog(rng: &mut StdRng) -> Vec<Product> {
    (0..60)
        .map(|i| {
            let category = i % CATEGORIES.len();
            let adjective = ADJECTIVES[(i / CATEGORIES.len()) % ADJECTIVES.len()];
            Product {
                id: format!("sku_{:04}", 1000 + i),
                name: format!("{adjective} {}", NOUNS[category]),
                category,
                price_cents: rng.gen_range(5..=250) * 100 - 1,
            }
        })
        .collect()
}

/// Locale, currency and the share of devices using it.
const LOCALES: [(&str, &str, u32); 7] = [
    ("en-US", "USD", 40),
    ("en-GB", "GBP", 12),
    ("de-DE", "EUR", 15),
    ("fr-FR", "EUR", 10),
    ("nl-NL", "EUR", 6),
    ("es-ES", "EUR", 7),
    ("pt-BR", "BRL", 10),
];
const DESKTOP_SCREENS: [(u32, u32); 4] = [(1920, 1080), (1440, 900), (1366, 768), (2560, 1440)];
const MOBILE_SCREENS: [(u32, u32); 4] = [(390, 844), (412, 915), (375, 667), (820, 1180)];
const DESKTOP_AGENTS: [&str; 3] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
];
const MOBILE_AGENTS: [&str; 2] = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
];
const APP_AGENTS: [&str; 2] = [
    "SpoorOutdoor/4.2.0 (iPhone; iOS 18.1; Scale/3.00)",
    "Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/AP2A.240905.003)",
];
const APP_VERSIONS: [&str; 3] = ["4.2.0", "4.1.3", "4.0.9"];
const REFERRERS: [&str; 5] = [
    "",
    "https://www.google.com/",
    "https://duckduckgo.com/",
    "https://news.example/outdoor",
    "https://mail.example/",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum DeviceKind {
    Desktop,
    Mobile,
    App,
}

struct User {
    /// Set for users with an account.
    user_id: Option<String>,
    logged_in: bool,
}

struct Device {
    user: usize,
    anonymous_id: String,
    kind: DeviceKind,
    user_agent: &'static str,
    locale: &'static str,
    currency: &'static str,
    screen: (u32, u32),
    app_version: &'static str,
    /// The SDK sends epoch milliseconds instead of RFC 3339 strings.
    epoch_ms: bool,
    /// Simulated clock, ms from the start of the simulated history.
    clock: i64,
    queue: Vec<Pending>,
}

/// An event before its batch's `sent_at` fixes absolute time.
struct Pending {
    ts: i64,
    /// The event without `timestamp` (added at serialization) or, for
    /// `NotAnObject`, the whole non-object value.
    value: Value,
    ts_mode: TsMode,
    outcome: Outcome,
}

enum Outcome {
    Valid(Uuid),
    Invalid {
        kind: InvalidKind,
        event_id: Option<String>,
    },
}

/// How the serialized `timestamp` relates to the simulated time.
#[derive(Clone, Copy)]
enum TsMode {
    Normal,
    /// Left as the generator wrote it (a malformed timestamp).
    Keep,
    /// `sent_at` plus this offset: outside the edge's window after skew correction.
    FromSentAt(i64),
    /// Epoch seconds where milliseconds are expected (lands in January 1970).
    EpochSeconds,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Page {
    Home,
    Category(usize),
    Product(usize),
    Checkout,
}

#[derive(Clone, Copy)]
enum Action {
    View(Page),
    AddToCart { product: usize, quantity: u64 },
    CheckoutStarted,
    CheckoutStep(u8),
    Purchase,
}

struct Generator<'c> {
    cfg: &'c ModelConfig,
    /// Decides the traffic's shape; seeded by `seed` alone.
    shape: StdRng,
    /// Draws ids; seeded by `seed` and `run_id`.
    ids: StdRng,
    products: Vec<Product>,
    users: Vec<User>,
    devices: Vec<Device>,
    generated: usize,
}

impl<'c> Generator<'c> {
    fn new(cfg: &'c ModelConfig) -> Self {
        let mut shape = StdRng::seed_from_u64(cfg.seed);
        let mut id_seed = [0u8; 32];
        id_seed[..16].copy_from_slice(cfg.run_id.as_bytes());
        id_seed[16..24].copy_from_slice(&cfg.seed.to_le_bytes());
        let mut ids = StdRng::from_seed(id_seed);

        let products = catalog(&mut shape);
        let mut users = Vec::with_capacity(cfg.users);
        let mut devices = Vec::new();
        let locale_total: u32 = LOCALES.iter().map(|l| l.2).sum();
        for u in 0..cfg.users {
            let has_account = shape.gen_bool(LOGGED_IN_RATE);
            let user_key = new_uuid(&mut ids).simple().to_string();
            users.push(User {
                user_id: has_account.then(|| format!("user_{}", &user_key[..16])),
                logged_in: false,
            });
            // One locale per person; 30% use a second device.
            let mut pick = shape.gen_range(0..locale_total);
            let mut chosen = LOCALES[0];
            for l in LOCALES {
                if pick < l.2 {
                    chosen = l;
                    break;
                }
                pick -= l.2;
            }
            let (locale, currency, _) = chosen;
            let n_devices = if shape.gen_bool(0.3) { 2 } else { 1 };
            for _ in 0..n_devices {
                let kind = match shape.gen_range(0..10) {
                    0..=4 => DeviceKind::Desktop,
                    5..=7 => DeviceKind::Mobile,
                    _ => DeviceKind::App,
                };
                let screen = match kind {
                    DeviceKind::Desktop => *DESKTOP_SCREENS
                        .choose(&mut shape)
                        .unwrap_or(&DESKTOP_SCREENS[0]),
                    _ => *MOBILE_SCREENS
                        .choose(&mut shape)
                        .unwrap_or(&MOBILE_SCREENS[0]),
                };
                let agents: &[&'static str] = match kind {
                    DeviceKind::Desktop => &DESKTOP_AGENTS,
                    DeviceKind::Mobile => &MOBILE_AGENTS,
                    DeviceKind::App => &APP_AGENTS,
                };
                devices.push(Device {
                    user: u,
                    anonymous_id: new_uuid(&mut ids).to_string(),
                    kind,
                    user_agent: agents
                        .choose(&mut shape)
                        .copied()
                        .unwrap_or(DESKTOP_AGENTS[0]),
                    locale,
                    currency,
                    screen,
                    app_version: APP_VERSIONS
                        .choose(&mut shape)
                        .copied()
                        .unwrap_or(APP_VERSIONS[0]),
                    epoch_ms: shape.gen_bool(0.25),
                    clock: shape.gen_range(0..2 * 3_600_000),
                    queue: Vec::new(),
                });
            }
        }
        Generator {
            cfg,
            shape,
            ids,
            products,
            users,
            devices,
            generated: 0,
        }
    }

    fn simulate(&mut self) {
        while self.generated < self.cfg.events {
            let d = self.shape.gen_range(0..self.devices.len());
            self.session(d);
        }
    }

    /// One session of device `d`, cut short when the event budget runs out.
    fn session(&mut self, d: usize) {
        let script = self.script();
        let session_id = new_uuid(&mut self.ids).to_string();
        let user = self.devices[d].user;
        if self.users[user].user_id.is_some()
            && !self.users[user].logged_in
            && self.shape.gen_bool(0.5)
        {
            self.users[user].logged_in = true;
        }
        // Strictly more than the inactivity timeout since the last event.
        self.devices[d].clock += INACTIVITY_MS + self.shape.gen_range(60_000..4 * 3_600_000);

        let mut cart: Vec<(usize, u64)> = Vec::new();
        let mut page = Page::Home;
        let mut prev_url = REFERRERS
            .choose(&mut self.shape)
            .copied()
            .unwrap_or("")
            .to_string();
        for (i, step) in script.iter().enumerate() {
            if i > 0 {
                self.devices[d].clock += self.shape.gen_range(2_000..120_000);
            }
            if self.generated < self.cfg.events && self.shape.gen_bool(self.cfg.invalid_ratio) {
                self.push_invalid(d, &session_id, page, &prev_url);
                self.devices[d].clock += self.shape.gen_range(100..2_000);
            }
            if self.generated >= self.cfg.events {
                return;
            }
            let (name, props) = match *step {
                Action::View(p) => {
                    if i > 0 {
                        prev_url = self.page_url(d, page);
                    }
                    page = p;
                    ("page_view", self.page_view_props(p))
                }
                Action::AddToCart { product, quantity } => {
                    match cart.iter_mut().find(|(p, _)| *p == product) {
                        Some(line) => line.1 += quantity,
                        None => cart.push((product, quantity)),
                    }
                    (
                        "add_to_cart",
                        self.add_to_cart_props(d, product, quantity, &cart),
                    )
                }
                Action::CheckoutStarted => {
                    prev_url = self.page_url(d, page);
                    page = Page::Checkout;
                    ("checkout_started", self.checkout_props(d, &cart, 1))
                }
                Action::CheckoutStep(n) => ("checkout_step", self.checkout_props(d, &cart, n)),
                Action::Purchase => ("purchase", self.purchase_props(d, &cart)),
            };
            let id = new_uuid(&mut self.ids);
            let value = self.event_value(
                d,
                name,
                &id.to_string(),
                &session_id,
                props,
                page,
                &prev_url,
            );
            let ts = self.devices[d].clock;
            self.devices[d].queue.push(Pending {
                ts,
                value,
                ts_mode: TsMode::Normal,
                outcome: Outcome::Valid(id),
            });
            self.generated += 1;
        }
    }

    /// The funnel walk of one session.
    fn script(&mut self) -> Vec<Action> {
        let rng = &mut self.shape;
        let n_products = self.products.len();
        let mut steps = Vec::new();
        let mut last_product = None;
        let view =
            |rng: &mut StdRng, steps: &mut Vec<Action>, last: &mut Option<usize>, landing: bool| {
                let page = match (landing, rng.gen_range(0..100)) {
                    (true, 0..=39) => Page::Home,
                    (true, 40..=69) | (false, 0..=34) => {
                        Page::Category(rng.gen_range(0..CATEGORIES.len()))
                    }
                    _ => {
                        let p = rng.gen_range(0..n_products);
                        *last = Some(p);
                        Page::Product(p)
                    }
                };
                steps.push(Action::View(page));
            };
        view(rng, &mut steps, &mut last_product, true);
        let mut extra = 0;
        while extra < 8 && rng.gen_bool(0.55) {
            view(rng, &mut steps, &mut last_product, false);
            extra += 1;
        }
        if !rng.gen_bool(CART_RATE) {
            return steps;
        }
        let product = match last_product {
            Some(p) if matches!(steps.last(), Some(Action::View(Page::Product(q))) if *q == p) => p,
            _ => {
                let p = rng.gen_range(0..n_products);
                steps.push(Action::View(Page::Product(p)));
                p
            }
        };
        steps.push(Action::AddToCart {
            product,
            quantity: if rng.gen_bool(0.8) { 1 } else { 2 },
        });
        if rng.gen_bool(0.3) {
            let p = rng.gen_range(0..n_products);
            steps.push(Action::View(Page::Product(p)));
            steps.push(Action::AddToCart {
                product: p,
                quantity: 1,
            });
        }
        if !rng.gen_bool(CHECKOUT_RATE) {
            return steps;
        }
        steps.push(Action::CheckoutStarted);
        if rng.gen_bool(STEP_SURVIVAL) {
            steps.push(Action::CheckoutStep(2));
            if rng.gen_bool(STEP_SURVIVAL) {
                steps.push(Action::CheckoutStep(3));
                let last = PURCHASE_RATE_OF_CARTS / (CHECKOUT_RATE * STEP_SURVIVAL * STEP_SURVIVAL);
                if rng.gen_bool(last) {
                    steps.push(Action::Purchase);
                }
            }
        }
        steps
    }

    fn page_path(&self, page: Page) -> String {
        match page {
            Page::Home => "/".into(),
            Page::Category(c) => format!("/c/{}", CATEGORIES[c]),
            Page::Product(p) => format!("/p/{}", self.products[p].id),
            Page::Checkout => "/checkout".into(),
        }
    }

    fn page_title(&self, page: Page) -> String {
        match page {
            Page::Home => "Spoor Outdoor".into(),
            Page::Category(c) => format!("{} | Spoor Outdoor", capitalize(CATEGORIES[c])),
            Page::Product(p) => format!("{} | Spoor Outdoor", self.products[p].name),
            Page::Checkout => "Checkout | Spoor Outdoor".into(),
        }
    }

    fn page_url(&self, d: usize, page: Page) -> String {
        if self.devices[d].kind == DeviceKind::App {
            String::new()
        } else {
            format!("{SITE}{}", self.page_path(page))
        }
    }

    fn run_props(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("run_id".into(), Value::String(self.cfg.run_id.to_string()));
        m
    }

    fn page_view_props(&self, page: Page) -> Map<String, Value> {
        let mut m = self.run_props();
        m.insert("path".into(), json!(self.page_path(page)));
        match page {
            Page::Home => {
                m.insert("page_type".into(), json!("home"));
            }
            Page::Category(c) => {
                m.insert("page_type".into(), json!("category"));
                m.insert("category".into(), json!(CATEGORIES[c]));
            }
            Page::Product(p) => {
                let prod = &self.products[p];
                m.insert("page_type".into(), json!("product"));
                m.insert("product_id".into(), json!(prod.id));
                m.insert("category".into(), json!(CATEGORIES[prod.category]));
            }
            Page::Checkout => {
                m.insert("page_type".into(), json!("checkout"));
            }
        }
        m
    }

    fn cart_json(&self, cart: &[(usize, u64)]) -> (Value, u64) {
        let mut total = 0;
        let items = cart
            .iter()
            .map(|&(p, q)| {
                let prod = &self.products[p];
                total += prod.price_cents * q;
                json!({ "product_id": prod.id, "name": prod.name, "price": money(prod.price_cents), "quantity": q })
            })
            .collect();
        (Value::Array(items), total)
    }

    fn add_to_cart_props(
        &self,
        d: usize,
        product: usize,
        quantity: u64,
        cart: &[(usize, u64)],
    ) -> Map<String, Value> {
        let prod = &self.products[product];
        let (items, total) = self.cart_json(cart);
        let mut m = self.run_props();
        m.insert("product_id".into(), json!(prod.id));
        m.insert("name".into(), json!(prod.name));
        m.insert("category".into(), json!(CATEGORIES[prod.category]));
        m.insert("price".into(), money(prod.price_cents));
        m.insert("currency".into(), json!(self.devices[d].currency));
        m.insert("quantity".into(), json!(quantity));
        m.insert("cart".into(), items);
        m.insert("cart_value".into(), money(total));
        m
    }

    fn checkout_props(&self, d: usize, cart: &[(usize, u64)], step: u8) -> Map<String, Value> {
        let (items, total) = self.cart_json(cart);
        let mut m = self.run_props();
        m.insert("step".into(), json!(step));
        m.insert(
            "step_name".into(),
            json!(["cart", "shipping", "payment"][usize::from(step.clamp(1, 3)) - 1]),
        );
        m.insert("currency".into(), json!(self.devices[d].currency));
        m.insert("value".into(), money(total));
        match step {
            1 => {
                m.insert("cart".into(), items);
            }
            2 => {
                m.insert(
                    "shipping_method".into(),
                    json!(if total > 10_000 { "free" } else { "standard" }),
                );
            }
            _ => {
                m.insert(
                    "payment_method".into(),
                    json!(if d.is_multiple_of(3) {
                        "paypal"
                    } else {
                        "card"
                    }),
                );
            }
        }
        m
    }

    fn purchase_props(&mut self, d: usize, cart: &[(usize, u64)]) -> Map<String, Value> {
        let (items, total) = self.cart_json(cart);
        let shipping = if total > 10_000 { 0 } else { 495 };
        let order = new_uuid(&mut self.ids).simple().to_string();
        let mut m = self.run_props();
        m.insert("order_id".into(), json!(format!("ord_{}", &order[..12])));
        m.insert("currency".into(), json!(self.devices[d].currency));
        m.insert("items".into(), items);
        m.insert("shipping".into(), money(shipping));
        m.insert("tax".into(), money(total * 19 / 119));
        m.insert("value".into(), money(total + shipping));
        m
    }

    #[allow(clippy::too_many_arguments)] // one call site builds every event; a struct would only rename them
    fn event_value(
        &self,
        d: usize,
        name: &str,
        event_id: &str,
        session_id: &str,
        properties: Map<String, Value>,
        page: Page,
        referrer: &str,
    ) -> Value {
        let dev = &self.devices[d];
        let mut ev = Map::new();
        ev.insert("event".into(), json!(name));
        ev.insert("event_id".into(), json!(event_id));
        ev.insert("anonymous_id".into(), json!(dev.anonymous_id));
        let user = &self.users[dev.user];
        if let (true, Some(uid)) = (user.logged_in, &user.user_id) {
            ev.insert("user_id".into(), json!(uid));
        }
        ev.insert("session_id".into(), json!(session_id));
        ev.insert("properties".into(), Value::Object(properties));
        let mut context = json!({
            "page": {
                "url": self.page_url(d, page),
                "path": self.page_path(page),
                "referrer": referrer,
                "title": self.page_title(page),
            },
            "library": { "name": LIBRARY_NAME, "version": env!("CARGO_PKG_VERSION") },
            "locale": dev.locale,
            "screen": { "width": dev.screen.0, "height": dev.screen.1 },
        });
        if dev.kind == DeviceKind::App {
            context["app"] = json!({ "name": "Spoor Outdoor", "version": dev.app_version });
        }
        ev.insert("context".into(), context);
        Value::Object(ev)
    }

    /// Queues one invalid event on device `d`, built like a page_view on the
    /// current page and then broken in exactly one way.
    fn push_invalid(&mut self, d: usize, session_id: &str, page: Page, referrer: &str) {
        let kind = *InvalidKind::ALL
            .choose(&mut self.shape)
            .unwrap_or(&InvalidKind::BadEventId);
        let id = new_uuid(&mut self.ids).to_string();
        let mut v = self.event_value(
            d,
            "page_view",
            &id,
            session_id,
            self.page_view_props(page),
            page,
            referrer,
        );
        let mut event_id = Some(id);
        let mut ts_mode = TsMode::Normal;
        let rng = &mut self.shape;
        match kind {
            InvalidKind::BadEventId => {
                let bad = match rng.gen_range(0..3) {
                    0 => "not-a-uuid".to_string(),
                    1 => rng.gen_range(1..1_000_000u32).to_string(),
                    _ => {
                        let mut s = event_id.clone().unwrap_or_default();
                        s.pop();
                        s
                    }
                };
                v["event_id"] = json!(bad);
                event_id = Some(bad);
            }
            InvalidKind::MissingIdentity => {
                let obj = v.as_object_mut();
                if let Some(o) = obj {
                    o.remove("user_id");
                    if rng.gen_bool(0.5) {
                        o.remove("anonymous_id");
                    } else {
                        o.insert("anonymous_id".into(), json!(""));
                    }
                }
            }
            InvalidKind::BadEventName => {
                let names = [
                    "9lives",
                    " page_view",
                    "add to cart!",
                    "checkout\tstep",
                    "événement",
                    "page_view ",
                ];
                let name = names.choose(rng).copied().unwrap_or("9lives");
                v["event"] = json!(name);
            }
            InvalidKind::MissingEventName => {
                if rng.gen_bool(0.5) {
                    v["event"] = json!("");
                } else if let Some(o) = v.as_object_mut() {
                    o.remove("event");
                }
            }
            InvalidKind::PropertiesNotObject => {
                let alts = [
                    json!(["path", "/"]),
                    json!("path=/"),
                    json!(42),
                    json!(true),
                ];
                v["properties"] = alts.choose(rng).cloned().unwrap_or(Value::Bool(true));
            }
            InvalidKind::PropertiesTooDeep => {
                let mut deep = json!({ "leaf": 1 });
                for _ in 0..10 {
                    deep = json!({ "level": deep });
                }
                v["properties"]["nested"] = deep;
            }
            InvalidKind::TimestampOutOfRange => {
                ts_mode = match rng.gen_range(0..3) {
                    0 => TsMode::FromSentAt(3 * 86_400_000),
                    1 => TsMode::FromSentAt(-40 * 86_400_000),
                    _ => TsMode::EpochSeconds,
                };
            }
            InvalidKind::BadTimestamp => {
                let alts = [
                    json!("yesterday"),
                    json!("2025-13-45T25:61:00Z"),
                    json!(1.5e12),
                    json!(true),
                ];
                v["timestamp"] = alts.choose(rng).cloned().unwrap_or(Value::Bool(true));
                ts_mode = TsMode::Keep;
            }
            InvalidKind::IdTooLong => {
                v["session_id"] = json!("s".repeat(300));
            }
            InvalidKind::NotAnObject => {
                let alts = [json!("page_view"), json!(["page_view", "/"]), json!(17)];
                v = alts.choose(rng).cloned().unwrap_or(Value::Null);
                event_id = None;
            }
        }
        let ts = self.devices[d].clock;
        self.devices[d].queue.push(Pending {
            ts,
            value: v,
            ts_mode,
            outcome: Outcome::Invalid { kind, event_id },
        });
        self.generated += 1;
    }

    /// Cuts every device's queue into batches, fixes absolute time so that
    /// the last batch is sent just before `now_ms`, and orders the requests.
    fn finish(mut self) -> Plan {
        struct Cut {
            device: usize,
            range: std::ops::Range<usize>,
            sent_at: i64,
        }
        let mut cuts = Vec::new();
        for (d, dev) in self.devices.iter().enumerate() {
            let mut start = 0;
            while start < dev.queue.len() {
                let end = (start + self.cfg.batch_size).min(dev.queue.len());
                let last_ts = dev.queue[end - 1].ts;
                cuts.push(Cut {
                    device: d,
                    range: start..end,
                    sent_at: last_ts + self.shape.gen_range(200..5_000),
                });
                start = end;
            }
        }
        let latest = cuts.iter().map(|c| c.sent_at).max().unwrap_or(0);
        let offset = self.cfg.now_ms - 1_000 - latest;
        // Stable: equal send times keep device order.
        cuts.sort_by_key(|c| c.sent_at);

        let batches: Vec<Batch> = cuts
            .iter()
            .map(|c| {
                let dev = &mut self.devices[c.device];
                let sent_at = c.sent_at + offset;
                let mut events = Vec::with_capacity(c.range.len());
                let mut valid_ids = Vec::new();
                let mut rejections = Vec::new();
                for (index, p) in dev.queue[c.range.clone()].iter_mut().enumerate() {
                    // Each pending event lands in exactly one batch: move it.
                    let mut v = std::mem::take(&mut p.value);
                    if let Some(obj) = v.as_object_mut() {
                        let ts = p.ts + offset;
                        match p.ts_mode {
                            TsMode::Normal => {
                                obj.insert("timestamp".into(), timestamp(ts, dev.epoch_ms));
                            }
                            TsMode::Keep => {}
                            TsMode::FromSentAt(delta) => {
                                obj.insert(
                                    "timestamp".into(),
                                    timestamp(sent_at + delta, dev.epoch_ms),
                                );
                            }
                            TsMode::EpochSeconds => {
                                obj.insert("timestamp".into(), json!(ts / 1000));
                            }
                        }
                    }
                    events.push(v);
                    match &p.outcome {
                        Outcome::Valid(id) => valid_ids.push(*id),
                        Outcome::Invalid { kind, event_id } => rejections.push(ExpectedRejection {
                            index,
                            event_id: event_id.clone(),
                            reason: kind.reason(),
                            kind: *kind,
                        }),
                    }
                }
                let body = json!({ "sent_at": timestamp(sent_at, dev.epoch_ms), "batch": events })
                    .to_string();
                Batch {
                    anonymous_id: dev.anonymous_id.clone(),
                    user_agent: dev.user_agent,
                    body,
                    sent_at_ms: sent_at,
                    events: c.range.len(),
                    valid_ids,
                    rejections,
                    headers: Vec::new(),
                }
            })
            .collect();

        // Resends copy a recent batch (the SDK retries soon after a lost answer).
        let mut requests = Vec::with_capacity(batches.len());
        for i in 0..batches.len() {
            requests.push(PlannedRequest {
                batch: i,
                resend: false,
            });
            if self.shape.gen_bool(self.cfg.resend_ratio) {
                let j = self.shape.gen_range(i.saturating_sub(20)..=i);
                requests.push(PlannedRequest {
                    batch: j,
                    resend: true,
                });
            }
        }
        Plan {
            run_id: self.cfg.run_id,
            batches,
            requests,
        }
    }
}

fn new_uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.gen()).into_uuid()
}

fn money(cents: u64) -> Value {
    // Two decimals, as a JSON number: 19.99, not 19.990000000000002.
    serde_json::Number::from_f64((cents as f64) / 100.0)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// RFC 3339 with milliseconds in UTC, or epoch milliseconds.
fn timestamp(ms: i64, epoch_ms: bool) -> Value {
    if epoch_ms {
        return json!(ms);
    }
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .map(Value::String)
        .unwrap_or_else(|| json!(ms))
}

/// Counts of a plan's invalid events by reason code (for reports and tests).
pub fn expected_rejections_by_reason(plan: &Plan) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for r in &plan.requests {
        for rej in &plan.batches[r.batch].rejections {
            *m.entry(rej.reason).or_default() += 1;
        }
    }
    m
}

#[cfg(test)]
mod tests;
