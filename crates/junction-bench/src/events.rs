//! Seeded generator of realistic Segment events (compact JSON, one event at a time).
//!
//! Contract: for a given [`GenConfig`] the sequence of events is byte-for-byte identical on every
//! machine (hand-rolled PRNG and Zipf sampler, integer-only formatting). Memory is constant: users
//! and products are never stored, their attributes are hashes of `(seed, id)`.
//!
//! The population: `users` people picked with a Zipf law (s = 1.1 by default, rank 1 hottest),
//! each owning 1–4 devices (stable per user), each device with a stable anonymousId, platform
//! (web 75%, iOS 15%, Android 10%), user agent, IP and locale. Event mix: ~70% track (e-commerce
//! spec names and properties), ~15% page (web), ~8% identify, ~4% screen (mobile), ~2% group,
//! ~1% alias; ~30% of events carry a userId, ~5% an email. Timestamps rise across the stream over
//! the `span_ms` before `end_ms` (with a little jitter); `sentAt` follows after a short delay.

use crate::json::{JsonWriter, write_hex};
use crate::rng::{Rng, cumulative, hash};
use crate::timefmt::Rfc3339Millis;
use crate::vocab::*;
use crate::zipf::Zipf;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenConfig {
    pub seed: u64,
    pub users: u64,
    pub zipf_s: f64,
    /// Expected number of events, used only to spread timestamps over the span.
    pub events: u64,
    /// Unix milliseconds of the newest timestamp.
    pub end_ms: i64,
    pub span_ms: i64,
    /// Only `track` events (for the single-event `/v1/track` load).
    pub only_track: bool,
}

impl GenConfig {
    pub const THIRTY_DAYS_MS: i64 = 30 * 86_400_000;
    /// The default end of the time span (fixed so that a seed fully determines the output).
    pub const DEFAULT_END: &'static str = "2026-11-01T00:00:00Z";
}

/// The event types, in the order used for statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Track,
    Page,
    Identify,
    Screen,
    Group,
    Alias,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Track,
        Kind::Page,
        Kind::Identify,
        Kind::Screen,
        Kind::Group,
        Kind::Alias,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Track => "track",
            Kind::Page => "page",
            Kind::Identify => "identify",
            Kind::Screen => "screen",
            Kind::Group => "group",
            Kind::Alias => "alias",
        }
    }
}

/// Facts about one written event.
#[derive(Clone, Copy, Debug)]
pub struct EventInfo {
    pub kind: Kind,
    /// Byte offset in the output buffer of the 36-character UUID that ends the messageId.
    pub message_id_uuid: usize,
    pub identified: bool,
    pub has_email: bool,
    pub timestamp_ms: i64,
    /// The user's index in `0..users` (rank − 1 of the Zipf draw).
    pub user: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Platform {
    Web,
    Ios,
    Android,
    Server,
}

/// Per-device attributes, derived from `(seed, user, device)`.
struct Device {
    platform: Platform,
    anon_hi: u64,
    anon_lo: u64,
    h: u64,
}

struct Product {
    id: u64,
    category: usize,
    adj: &'static str,
    noun: &'static str,
    brand: &'static str,
    variant: &'static str,
    price_cents: u64,
}

const TRACK_NAMES: &[&str] = &[
    "Product Viewed",
    "Product Clicked",
    "Product Added",
    "Product List Viewed",
    "Products Searched",
    "Cart Viewed",
    "Checkout Started",
    "Order Completed",
    "Product Removed",
    "Signed Up",
    "Coupon Applied",
];
const TRACK_WEIGHTS: &[u32] = &[32, 10, 13, 9, 8, 7, 5, 5, 4, 4, 3];

// Type tables per platform: track, page-or-screen, identify, group, alias (per mille).
const WEB_KINDS: &[u32] = &[690, 200, 80, 20, 10];
const MOBILE_KINDS: &[u32] = &[730, 160, 80, 20, 10];
/// P(userId) for client-side events other than identify/alias, so that ~30% of all events
/// (server-side ones always) are identified.
const P_IDENTIFIED_OTHER: f64 = 0.048;
/// P(sent from a server library) for track and identify events.
const P_SERVER: f64 = 0.25;
const P_EMAIL_IDENTIFY: f64 = 0.5;
const P_EMAIL_CONTEXT: f64 = 0.045;
const P_CAMPAIGN: f64 = 0.08;
const PRODUCTS: u64 = 20_000;
const COMPANIES: u64 = 50_000;

pub struct Generator {
    cfg: GenConfig,
    rng: Rng,
    users: Zipf,
    products: Zipf,
    index: u64,
    start_ms: i64,
    track_cum: Vec<u32>,
    web_cum: Vec<u32>,
    mobile_cum: Vec<u32>,
    locale_cum: Vec<u32>,
}

impl Generator {
    pub fn new(cfg: GenConfig) -> Self {
        let users = Zipf::new(cfg.users.max(1), cfg.zipf_s);
        let products = Zipf::new(PRODUCTS, 1.0);
        let locale_w: Vec<u32> = LOCALES.iter().map(|l| l.2).collect();
        Self {
            rng: Rng::new(cfg.seed),
            users,
            products,
            index: 0,
            start_ms: cfg.end_ms - cfg.span_ms,
            track_cum: cumulative(TRACK_WEIGHTS),
            web_cum: cumulative(WEB_KINDS),
            mobile_cum: cumulative(MOBILE_KINDS),
            locale_cum: cumulative(&locale_w),
            cfg,
        }
    }

    /// Appends one event as compact JSON (no trailing newline).
    pub fn write_event(&mut self, out: &mut Vec<u8>) -> EventInfo {
        let i = self.index;
        self.index += 1;
        let seed = self.cfg.seed;

        let spread = (i.min(self.cfg.events.max(1) - 1) as i128 * self.cfg.span_ms as i128)
            / self.cfg.events.max(1) as i128;
        let ts = (self.start_ms + spread as i64 - self.rng.below(2_000) as i64).max(0);

        let user = self.users.sample(&mut self.rng) - 1;
        let uh = hash(seed, &[1, user]);
        let devices = [1u64, 1, 1, 1, 2, 2, 2, 3, 3, 4][(uh % 10) as usize];
        let d = self.rng.below(devices);
        let device = device(seed, user, d);

        let kind = if self.cfg.only_track {
            Kind::Track
        } else {
            let mobile = device.platform != Platform::Web;
            let slot = self.rng.weighted(if mobile {
                &self.mobile_cum
            } else {
                &self.web_cum
            });
            match (slot, mobile) {
                (0, _) => Kind::Track,
                (1, false) => Kind::Page,
                (1, true) => Kind::Screen,
                (2, _) => Kind::Identify,
                (3, _) => Kind::Group,
                _ => Kind::Alias,
            }
        };
        // Some track and identify calls come from the customer's backend (a server library,
        // userId only, minimal context).
        let platform = if matches!(kind, Kind::Track | Kind::Identify) && self.rng.chance(P_SERVER)
        {
            Platform::Server
        } else {
            device.platform
        };
        let identified = platform == Platform::Server
            || matches!(kind, Kind::Identify | Kind::Alias)
            || self.rng.chance(P_IDENTIFIED_OTHER);
        let email_in_traits = kind == Kind::Identify && self.rng.chance(P_EMAIL_IDENTIFY);
        let email_in_context =
            identified && kind != Kind::Identify && self.rng.chance(P_EMAIL_CONTEXT);
        let locale = LOCALES[self.locale_index(uh)];

        let mut w = JsonWriter::new(out);
        w.begin_object();
        w.kv_str("type", kind.name());

        // Type-specific members, and the page the browser is on (for context.page).
        let mut page = PageRef::Static(0);
        match kind {
            Kind::Track => page = self.track_body(&mut w, user, &device),
            Kind::Page => page = self.page_body(&mut w),
            Kind::Screen => self.screen_body(&mut w),
            Kind::Identify => self.identify_body(&mut w, seed, user, uh, email_in_traits),
            Kind::Group => group_body(&mut w, seed, user),
            Kind::Alias => {
                w.key("previousId");
                write_uuid_value(&mut w, device.anon_hi, device.anon_lo);
            }
        }

        w.key("messageId");
        let (hi, lo) = (self.rng.next_u64(), self.rng.next_u64());
        let message_id_uuid = if platform == Platform::Web {
            let mut uuid = [0u8; 36];
            format_uuid(&mut uuid, hi, lo);
            w.string_fmt(format_args!(
                "ajs-next-{ts}-{}",
                std::str::from_utf8(&uuid).unwrap_or("")
            ));
            w.position() - 37
        } else {
            write_uuid_value(&mut w, hi, lo);
            w.position() - 37
        };
        if platform != Platform::Server {
            w.key("anonymousId");
            write_uuid_value(&mut w, device.anon_hi, device.anon_lo);
        }
        if identified {
            w.kv_fmt(
                "userId",
                format_args!("usr_{:016x}", hash(seed, &[5, user])),
            );
        }
        w.kv_fmt("timestamp", format_args!("{}", Rfc3339Millis(ts)));
        if platform == Platform::Web {
            // analytics.js stamps each event; batching SDKs set `sentAt` on the batch only.
            let delay = self.rng.range(20, 1_500) as i64;
            w.kv_fmt("sentAt", format_args!("{}", Rfc3339Millis(ts + delay)));
        }

        w.key("context");
        w.begin_object();
        match platform {
            Platform::Server => w.object("library", |w| {
                w.kv_str("name", "analytics-python");
                w.kv_str("version", "2.3.3");
            }),
            Platform::Web => {
                w.object("library", |w| {
                    w.kv_str("name", "analytics.js");
                    w.kv_str("version", "next-1.84.0");
                });
                w.kv_str(
                    "userAgent",
                    WEB_USER_AGENTS[(device.h % WEB_USER_AGENTS.len() as u64) as usize],
                );
                write_page_context(&mut w, &page, seed, ts, device.h);
                if self.rng.chance(P_CAMPAIGN) {
                    let c = self.rng.pick(CAMPAIGNS);
                    w.object("campaign", |w| {
                        w.kv_str("name", c.0);
                        w.kv_str("source", c.1);
                        w.kv_str("medium", c.2);
                    });
                }
            }
            Platform::Ios | Platform::Android => write_mobile_context(&mut w, &device),
        }
        if platform != Platform::Server {
            w.kv_fmt("ip", format_args!("{}", Ip(device.h)));
            w.kv_str("locale", locale.0);
        }
        if matches!(platform, Platform::Ios | Platform::Android) {
            w.kv_str("timezone", locale.1);
        }
        if email_in_context {
            w.object("traits", |w| {
                w.kv_fmt("email", format_args!("{}", Email(seed, user)))
            });
        }
        w.end_object();
        w.end_object();

        EventInfo {
            kind,
            message_id_uuid,
            identified,
            has_email: email_in_traits || email_in_context,
            timestamp_ms: ts,
            user,
        }
    }

    fn locale_index(&self, uh: u64) -> usize {
        let total = *self.locale_cum.last().unwrap_or(&1);
        let r = ((uh >> 20) % total as u64) as u32;
        self.locale_cum.partition_point(|&c| c <= r)
    }

    fn product(&mut self) -> Product {
        let id = self.products.sample(&mut self.rng);
        product(self.cfg.seed, id)
    }

    fn track_body(&mut self, w: &mut JsonWriter<'_>, user: u64, device: &Device) -> PageRef {
        let name = TRACK_NAMES[self.rng.weighted(&self.track_cum)];
        w.kv_str("event", name);
        let seed = self.cfg.seed;
        let cart = hash(seed, &[7, user, device.h]) & 0xffff_ffff_ffff;
        w.key("properties");
        w.begin_object();
        let page = match name {
            "Product Viewed" | "Product Clicked" | "Product Added" | "Product Removed" => {
                let p = self.product();
                write_product(w, &p);
                match name {
                    "Product Added" | "Product Removed" => {
                        w.kv_uint("quantity", self.rng.range(1, 3));
                        w.kv_fmt("cart_id", format_args!("cart_{cart:012x}"));
                    }
                    "Product Clicked" => {
                        w.kv_uint("position", self.rng.range(1, 24));
                        w.kv_fmt("list_id", format_args!("{}_list", CATEGORIES[p.category].1));
                    }
                    _ => {}
                }
                PageRef::Product(p.id)
            }
            "Product List Viewed" => {
                let p = self.product();
                let cat = CATEGORIES[p.category];
                w.kv_fmt("list_id", format_args!("{}_list", cat.1));
                w.kv_str("category", cat.0);
                w.array("products", |w| {
                    for pos in 1..=3 {
                        let q = if pos == 1 {
                            p.id
                        } else {
                            self.products.sample(&mut self.rng)
                        };
                        let q = product(seed, q);
                        w.begin_object();
                        w.kv_fmt("product_id", format_args!("prod_{:06}", q.id));
                        w.kv_cents("price", q.price_cents);
                        w.kv_uint("position", pos);
                        w.end_object();
                    }
                });
                PageRef::Category(p.category)
            }
            "Products Searched" => {
                let q = self.rng.pick(SEARCH_WORDS);
                w.kv_str("query", q);
                PageRef::Search(q)
            }
            "Cart Viewed" | "Checkout Started" | "Order Completed" => {
                let n = self
                    .rng
                    .range(1, if name == "Order Completed" { 4 } else { 3 });
                let items: Vec<(Product, u64)> = (0..n)
                    .map(|_| (self.product(), self.rng.range(1, 2)))
                    .collect();
                let subtotal: u64 = items.iter().map(|(p, q)| p.price_cents * q).sum();
                let order = self.rng.next_u64() & 0xffff_ffff_ffff;
                match name {
                    "Cart Viewed" => w.kv_fmt("cart_id", format_args!("cart_{cart:012x}")),
                    "Checkout Started" => {
                        w.kv_fmt("order_id", format_args!("ord_{order:012x}"));
                        w.kv_cents("value", subtotal);
                        w.kv_cents("revenue", subtotal);
                        w.kv_str("currency", "USD");
                    }
                    _ => {
                        let shipping = if subtotal > 5_000 { 0 } else { 599 };
                        let tax = subtotal * 8 / 100;
                        let coupon = if self.rng.chance(0.2) {
                            Some(self.rng.pick(COUPONS))
                        } else {
                            None
                        };
                        let discount = coupon.map_or(0, |c| subtotal * c.2 / 100);
                        w.kv_fmt("order_id", format_args!("ord_{order:012x}"));
                        w.kv_cents("total", subtotal + shipping + tax - discount);
                        w.kv_cents("revenue", subtotal - discount);
                        w.kv_cents("shipping", shipping);
                        w.kv_cents("tax", tax);
                        w.kv_cents("discount", discount);
                        if let Some(c) = coupon {
                            w.kv_str("coupon", c.0);
                        }
                        w.kv_str("currency", "USD");
                    }
                }
                let full = name == "Order Completed";
                w.array("products", |w| {
                    for (p, q) in &items {
                        w.begin_object();
                        w.kv_fmt("product_id", format_args!("prod_{:06}", p.id));
                        w.kv_fmt("sku", format_args!("SKU-{:06}-{}", p.id, p.variant));
                        if full {
                            w.kv_fmt("name", format_args!("{} {} {}", p.brand, p.adj, p.noun));
                            w.kv_str("category", CATEGORIES[p.category].0);
                        }
                        w.kv_cents("price", p.price_cents);
                        w.kv_uint("quantity", *q);
                        w.end_object();
                    }
                });
                match name {
                    "Cart Viewed" => PageRef::Static(1),
                    "Checkout Started" => PageRef::Static(2),
                    _ => PageRef::Confirmation,
                }
            }
            "Signed Up" => {
                w.kv_str("method", self.rng.pick(SIGNUP_METHODS));
                w.kv_str("plan", self.rng.pick(PLANS));
                PageRef::Static(3)
            }
            _ => {
                let c = self.rng.pick(COUPONS);
                w.kv_fmt("cart_id", format_args!("cart_{cart:012x}"));
                w.kv_str("coupon_id", c.0);
                w.kv_str("coupon_name", c.1);
                w.kv_uint("discount", c.2);
                PageRef::Static(2)
            }
        };
        w.end_object();
        page
    }

    fn page_body(&mut self, w: &mut JsonWriter<'_>) -> PageRef {
        let r = self.rng.below(100);
        let page = if r < 40 {
            PageRef::Product(self.products.sample(&mut self.rng))
        } else if r < 60 {
            PageRef::Category(self.rng.below(CATEGORIES.len() as u64) as usize)
        } else if r < 68 {
            PageRef::Search(self.rng.pick(SEARCH_WORDS))
        } else {
            PageRef::Static(self.rng.below(STATIC_PAGES.len() as u64) as usize)
        };
        w.kv_str("name", page.name());
        w.object("properties", |w| {
            w.kv_fmt("path", format_args!("{}", Path(&page, self.cfg.seed)));
            w.kv_fmt("title", format_args!("{}", Title(&page, self.cfg.seed)));
        });
        page
    }

    fn screen_body(&mut self, w: &mut JsonWriter<'_>) {
        let name = self.rng.pick(SCREENS);
        w.kv_str("name", name);
        if name == "Product Detail" {
            let p = self.products.sample(&mut self.rng);
            w.object("properties", |w| {
                w.kv_fmt("product_id", format_args!("prod_{p:06}"))
            });
        }
    }

    fn identify_body(
        &mut self,
        w: &mut JsonWriter<'_>,
        seed: u64,
        user: u64,
        uh: u64,
        email: bool,
    ) {
        let first = FIRST_NAMES[((uh >> 24) % FIRST_NAMES.len() as u64) as usize];
        let last = LAST_NAMES[((uh >> 32) % LAST_NAMES.len() as u64) as usize];
        let created = self.start_ms - ((uh >> 40) % 700) as i64 * 86_400_000;
        let plan = PLANS[((uh >> 12) % PLANS.len() as u64) as usize];
        let with_phone = self.rng.chance(0.15);
        w.object("traits", |w| {
            if email {
                w.kv_fmt("email", format_args!("{}", Email(seed, user)));
            }
            w.kv_fmt("firstName", format_args!("{}", Capitalized(first)));
            w.kv_fmt("lastName", format_args!("{}", Capitalized(last)));
            w.kv_str("plan", plan);
            w.kv_fmt("createdAt", format_args!("{}", Rfc3339Millis(created)));
            if with_phone {
                w.kv_fmt("phone", format_args!("+1555{:07}", uh % 10_000_000));
            }
        });
    }
}

fn group_body(w: &mut JsonWriter<'_>, seed: u64, user: u64) {
    let company = hash(seed, &[8, user]) % COMPANIES;
    let ch = hash(seed, &[9, company]);
    w.kv_fmt("groupId", format_args!("grp_{company:06}"));
    w.object("traits", |w| {
        w.kv_fmt(
            "name",
            format_args!(
                "{} {}",
                BRANDS[(ch % BRANDS.len() as u64) as usize],
                NOUNS[((ch >> 8) % NOUNS.len() as u64) as usize]
            ),
        );
        w.kv_str(
            "industry",
            INDUSTRIES[((ch >> 16) % INDUSTRIES.len() as u64) as usize],
        );
        w.kv_uint("employees", 1 + (ch >> 24) % 5_000);
        w.kv_str("plan", PLANS[((ch >> 40) % PLANS.len() as u64) as usize]);
    });
}

fn device(seed: u64, user: u64, d: u64) -> Device {
    let h = hash(seed, &[2, user, d]);
    let platform = match h % 100 {
        0..=74 => Platform::Web,
        75..=89 => Platform::Ios,
        _ => Platform::Android,
    };
    Device {
        platform,
        anon_hi: hash(seed, &[3, user, d]),
        anon_lo: hash(seed, &[4, user, d]),
        h,
    }
}

fn product(seed: u64, id: u64) -> Product {
    let h = hash(seed, &[6, id]);
    let pick =
        |list: &[&'static str], shift: u32| list[((h >> shift) % list.len() as u64) as usize];
    Product {
        id,
        category: (h % CATEGORIES.len() as u64) as usize,
        adj: pick(ADJECTIVES, 8),
        noun: pick(NOUNS, 16),
        brand: pick(BRANDS, 24),
        variant: pick(VARIANTS, 32),
        price_cents: 499 + (h >> 40) % 25_000 / 100 * 100 + 99,
    }
}

fn write_product(w: &mut JsonWriter<'_>, p: &Product) {
    w.kv_fmt("product_id", format_args!("prod_{:06}", p.id));
    w.kv_fmt("sku", format_args!("SKU-{:06}-{}", p.id, p.variant));
    w.kv_str("category", CATEGORIES[p.category].0);
    w.kv_fmt("name", format_args!("{} {} {}", p.brand, p.adj, p.noun));
    w.kv_cents("price", p.price_cents);
    w.kv_str("currency", "USD");
}

fn write_page_context(w: &mut JsonWriter<'_>, page: &PageRef, seed: u64, ts: i64, dh: u64) {
    let referrer = REFERRERS[((dh >> 8) as usize ^ (ts as usize / 600_000)) % REFERRERS.len()];
    w.object("page", |w| {
        w.kv_fmt("path", format_args!("{}", Path(page, seed)));
        w.kv_str("referrer", referrer);
        if let PageRef::Search(q) = page {
            w.kv_fmt("search", format_args!("?q={}", q.replace(' ', "+")));
        }
        w.kv_fmt(
            "url",
            format_args!("https://example.com{}", Path(page, seed)),
        );
    });
}

fn write_mobile_context(w: &mut JsonWriter<'_>, device: &Device) {
    let h = device.h;
    let ios = device.platform == Platform::Ios;
    w.object("app", |w| {
        w.kv_str("name", "Example Shop");
        w.kv_str("version", if h & 1 == 0 { "4.12.1" } else { "4.11.0" });
        w.kv_str("build", if h & 1 == 0 { "41201" } else { "41100" });
        w.kv_str("namespace", "com.example.shop");
    });
    let (manufacturer, model) = if ios {
        let m = IOS_MODELS[((h >> 8) % IOS_MODELS.len() as u64) as usize];
        ("Apple", m)
    } else {
        ANDROID_MODELS[((h >> 8) % ANDROID_MODELS.len() as u64) as usize]
    };
    w.object("device", |w| {
        w.kv_fmt("id", format_args!("{:016x}", h ^ device.anon_lo));
        w.kv_str("manufacturer", manufacturer);
        w.kv_str("model", model);
        w.kv_str("type", if ios { "ios" } else { "android" });
    });
    w.object("library", |w| {
        w.kv_str(
            "name",
            if ios {
                "analytics-ios"
            } else {
                "analytics-android"
            },
        );
        w.kv_str("version", if ios { "4.1.8" } else { "4.11.3" });
    });
    w.object("os", |w| {
        w.kv_str("name", if ios { "iOS" } else { "Android" });
        let versions = if ios { IOS_VERSIONS } else { ANDROID_VERSIONS };
        w.kv_str(
            "version",
            versions[((h >> 16) % versions.len() as u64) as usize],
        );
    });
    w.object("network", |w| w.kv_bool("wifi", (h >> 24) & 3 != 0));
}

/// Where a web event happened.
enum PageRef {
    Static(usize),
    Product(u64),
    Category(usize),
    Search(&'static str),
    Confirmation,
}

impl PageRef {
    fn name(&self) -> &'static str {
        match self {
            PageRef::Static(i) => STATIC_PAGES[*i].0,
            PageRef::Product(_) => "Product",
            PageRef::Category(_) => "Category",
            PageRef::Search(_) => "Search",
            PageRef::Confirmation => "Order Confirmation",
        }
    }
}

struct Path<'a>(&'a PageRef, u64);

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            PageRef::Static(i) => f.write_str(STATIC_PAGES[*i].1),
            PageRef::Product(id) => {
                let p = product(self.1, *id);
                write!(
                    f,
                    "/p/{}-{}-{:06}",
                    p.adj.to_ascii_lowercase(),
                    p.noun.to_ascii_lowercase(),
                    p.id
                )
            }
            PageRef::Category(c) => write!(f, "/c/{}", CATEGORIES[*c].1),
            PageRef::Search(_) => f.write_str("/search"),
            PageRef::Confirmation => f.write_str("/checkout/confirmation"),
        }
    }
}

struct Title<'a>(&'a PageRef, u64);

impl std::fmt::Display for Title<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            PageRef::Product(id) => {
                let p = product(self.1, *id);
                write!(f, "{} {} {}", p.brand, p.adj, p.noun)
            }
            PageRef::Category(c) => write!(f, "{}", CATEGORIES[*c].0),
            PageRef::Search(q) => write!(f, "Search: {q}"),
            other => write!(f, "{}", other.name()),
        }
    }
}

struct Email(u64, u64);

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uh = hash(self.0, &[1, self.1]);
        let first = FIRST_NAMES[((uh >> 24) % FIRST_NAMES.len() as u64) as usize];
        let last = LAST_NAMES[((uh >> 32) % LAST_NAMES.len() as u64) as usize];
        let domain = EMAIL_DOMAINS[((uh >> 48) % EMAIL_DOMAINS.len() as u64) as usize];
        // The user number keeps emails unique per user.
        write!(f, "{first}.{last}.{}@{domain}", self.1)
    }
}

struct Ip(u64);

impl std::fmt::Display for Ip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = self.0 >> 5;
        let first = IP_FIRST_OCTETS[(h % IP_FIRST_OCTETS.len() as u64) as usize];
        write!(
            f,
            "{first}.{}.{}.{}",
            (h >> 8) & 0xff,
            (h >> 16) & 0xff,
            1 + (h >> 24) % 254
        )
    }
}

struct Capitalized(&'static str);

impl std::fmt::Display for Capitalized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut chars = self.0.chars();
        if let Some(c) = chars.next() {
            write!(f, "{}{}", c.to_ascii_uppercase(), chars.as_str())?;
        }
        Ok(())
    }
}

/// Formats 128 bits as a version-4 UUID (lower-case, 36 characters).
pub fn format_uuid(out: &mut [u8; 36], hi: u64, lo: u64) {
    let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    write_hex(&mut out[0..8], hi >> 32);
    out[8] = b'-';
    write_hex(&mut out[9..13], (hi >> 16) & 0xffff);
    out[13] = b'-';
    write_hex(&mut out[14..18], hi & 0xffff);
    out[18] = b'-';
    write_hex(&mut out[19..23], lo >> 48);
    out[23] = b'-';
    write_hex(&mut out[24..36], lo & 0xffff_ffff_ffff);
}

fn write_uuid_value(w: &mut JsonWriter<'_>, hi: u64, lo: u64) {
    let mut uuid = [0u8; 36];
    format_uuid(&mut uuid, hi, lo);
    w.string(std::str::from_utf8(&uuid).unwrap_or(""));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(seed: u64, events: u64) -> GenConfig {
        GenConfig {
            seed,
            users: 1_000_000,
            zipf_s: 1.1,
            events,
            end_ms: crate::timefmt::parse_utc(GenConfig::DEFAULT_END).unwrap(),
            span_ms: GenConfig::THIRTY_DAYS_MS,
            only_track: false,
        }
    }

    #[test]
    fn deterministic_and_valid() {
        let mut a = Generator::new(cfg(7, 2_000));
        let mut b = Generator::new(cfg(7, 2_000));
        for _ in 0..2_000 {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            let info = a.write_event(&mut x);
            b.write_event(&mut y);
            assert_eq!(x, y);
            let v: serde_json::Value = serde_json::from_slice(&x).expect("valid JSON");
            let mid = v["messageId"].as_str().unwrap();
            let uuid =
                std::str::from_utf8(&x[info.message_id_uuid..info.message_id_uuid + 36]).unwrap();
            assert!(mid.ends_with(uuid), "{mid} / {uuid}");
            assert_eq!(v["type"], info.kind.name());
            assert!(v["anonymousId"].is_string() || v["userId"].is_string());
            assert_eq!(v["userId"].is_string(), info.identified);
            if info.kind == Kind::Track {
                assert!(v["event"].is_string());
            }
        }
        let mut c = Generator::new(cfg(8, 2_000));
        let (mut x, mut y) = (Vec::new(), Vec::new());
        Generator::new(cfg(7, 2_000)).write_event(&mut x);
        c.write_event(&mut y);
        assert_ne!(x, y);
    }

    #[test]
    fn mix_is_roughly_as_documented() {
        let n = 50_000;
        let mut g = Generator::new(cfg(1, n));
        let mut buf = Vec::new();
        let (mut bytes, mut ident, mut email) = (0usize, 0u64, 0u64);
        let mut kinds = [0u64; 6];
        for _ in 0..n {
            buf.clear();
            let info = g.write_event(&mut buf);
            bytes += buf.len();
            ident += info.identified as u64;
            email += info.has_email as u64;
            kinds[Kind::ALL.iter().position(|k| *k == info.kind).unwrap()] += 1;
        }
        let pct = |x: u64| x as f64 * 100.0 / n as f64;
        assert!(
            (27.0..33.0).contains(&pct(ident)),
            "identified {}",
            pct(ident)
        );
        assert!((4.0..6.0).contains(&pct(email)), "email {}", pct(email));
        assert!(
            (67.0..73.0).contains(&pct(kinds[0])),
            "track {}",
            pct(kinds[0])
        );
        assert!(
            (13.0..17.0).contains(&pct(kinds[1])),
            "page {}",
            pct(kinds[1])
        );
        let avg = bytes / n as usize;
        assert!((550..750).contains(&avg), "average size {avg}");
    }
}
