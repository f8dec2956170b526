//! Fixed vocabularies for the event generator.
//!
//! Contract: changing, reordering or extending any list changes every generated data set for a
//! given seed; treat them as frozen, like the RNG.

pub const FIRST_NAMES: &[&str] = &[
    "james",
    "mary",
    "john",
    "patricia",
    "robert",
    "jennifer",
    "michael",
    "linda",
    "david",
    "elizabeth",
    "william",
    "barbara",
    "richard",
    "susan",
    "joseph",
    "jessica",
    "thomas",
    "sarah",
    "carlos",
    "maria",
    "lucas",
    "sofia",
    "mateo",
    "emma",
    "noah",
    "olivia",
    "liam",
    "ava",
    "yuki",
    "hana",
    "arjun",
    "priya",
    "wei",
    "mei",
    "lukas",
    "anna",
    "pierre",
    "camille",
    "ahmed",
    "fatima",
];

pub const LAST_NAMES: &[&str] = &[
    "smith",
    "johnson",
    "williams",
    "brown",
    "jones",
    "garcia",
    "miller",
    "davis",
    "rodriguez",
    "martinez",
    "hernandez",
    "lopez",
    "gonzalez",
    "wilson",
    "anderson",
    "thomas",
    "taylor",
    "moore",
    "jackson",
    "martin",
    "lee",
    "perez",
    "thompson",
    "white",
    "harris",
    "sanchez",
    "clark",
    "ramirez",
    "lewis",
    "robinson",
    "muller",
    "schmidt",
    "dubois",
    "rossi",
    "tanaka",
    "sato",
    "kim",
    "park",
    "nguyen",
    "singh",
];

pub const EMAIL_DOMAINS: &[&str] = &[
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "icloud.com",
    "hotmail.com",
    "proton.me",
    "example.com",
];

/// (locale, timezone) with weights.
pub const LOCALES: &[(&str, &str, u32)] = &[
    ("en-US", "America/New_York", 30),
    ("en-US", "America/Los_Angeles", 15),
    ("en-US", "America/Chicago", 10),
    ("en-GB", "Europe/London", 10),
    ("de-DE", "Europe/Berlin", 8),
    ("fr-FR", "Europe/Paris", 7),
    ("es-ES", "Europe/Madrid", 5),
    ("pt-BR", "America/Sao_Paulo", 5),
    ("ja-JP", "Asia/Tokyo", 4),
    ("nl-NL", "Europe/Amsterdam", 3),
    ("en-AU", "Australia/Sydney", 3),
];

pub const WEB_USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
];

pub const IOS_MODELS: &[&str] = &["iPhone15,2", "iPhone14,5", "iPhone16,1", "iPad13,4"];
pub const IOS_VERSIONS: &[&str] = &["17.4.1", "17.6", "18.0.1", "18.1"];
pub const ANDROID_MODELS: &[(&str, &str)] = &[
    ("Google", "Pixel 8"),
    ("samsung", "SM-S911B"),
    ("samsung", "SM-A546B"),
    ("OnePlus", "CPH2449"),
];
pub const ANDROID_VERSIONS: &[&str] = &["12", "13", "14", "15"];

pub const IP_FIRST_OCTETS: &[u8] = &[
    23, 24, 31, 50, 62, 66, 68, 73, 76, 81, 86, 88, 90, 98, 104, 151, 174, 176, 184, 203,
];

pub const CATEGORIES: &[(&str, &str)] = &[
    ("Shoes", "shoes"),
    ("Apparel", "apparel"),
    ("Accessories", "accessories"),
    ("Outdoor", "outdoor"),
    ("Electronics", "electronics"),
    ("Home & Kitchen", "home-kitchen"),
    ("Beauty", "beauty"),
    ("Sports", "sports"),
    ("Toys", "toys"),
    ("Books", "books"),
    ("Garden", "garden"),
    ("Pets", "pets"),
];

pub const ADJECTIVES: &[&str] = &[
    "Classic", "Ultra", "Trail", "Urban", "Eco", "Pro", "Lite", "Vintage", "Cozy", "Smart",
    "Everyday", "Premium", "Compact", "Bold", "Alpine", "Coastal",
];

pub const NOUNS: &[&str] = &[
    "Runner",
    "Jacket",
    "Backpack",
    "Bottle",
    "Headphones",
    "Lamp",
    "Mug",
    "Sneaker",
    "Hoodie",
    "Tent",
    "Watch",
    "Blender",
    "Serum",
    "Ball",
    "Puzzle",
    "Novel",
    "Planter",
    "Leash",
];

pub const BRANDS: &[&str] = &[
    "Northwind",
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Tyrell",
    "Soylent",
];

pub const VARIANTS: &[&str] = &[
    "Black", "White", "Red", "Blue", "Green", "S", "M", "L", "XL", "One Size",
];

pub const REFERRERS: &[&str] = &[
    "",
    "https://www.google.com/",
    "https://www.google.com/",
    "https://www.facebook.com/",
    "https://t.co/",
    "https://www.instagram.com/",
    "https://duckduckgo.com/",
    "https://www.bing.com/",
];

pub const CAMPAIGNS: &[(&str, &str, &str)] = &[
    ("black_friday_2026", "google", "cpc"),
    ("spring_sale", "facebook", "social"),
    ("weekly_newsletter", "newsletter", "email"),
    ("retargeting_q4", "instagram", "social"),
    ("brand_search", "bing", "cpc"),
];

pub const SIGNUP_METHODS: &[&str] = &["email", "google", "apple", "facebook"];
pub const PLANS: &[&str] = &["free", "free", "free", "basic", "pro", "business"];
pub const INDUSTRIES: &[&str] = &[
    "Retail",
    "Technology",
    "Healthcare",
    "Finance",
    "Education",
    "Media",
];
pub const COUPONS: &[(&str, &str, u64)] = &[
    ("WELCOME10", "Welcome 10%", 10),
    ("FREESHIP", "Free shipping", 0),
    ("BF25", "Black Friday 25%", 25),
];
pub const SEARCH_WORDS: &[&str] = &[
    "running shoes",
    "rain jacket",
    "water bottle",
    "wireless headphones",
    "desk lamp",
    "gift ideas",
    "yoga mat",
    "coffee mug",
    "kids toys",
    "hiking backpack",
    "face serum",
    "dog leash",
];

/// (page name, path) for pages without a product.
pub const STATIC_PAGES: &[(&str, &str)] = &[
    ("Home", "/"),
    ("Cart", "/cart"),
    ("Checkout", "/checkout"),
    ("Account", "/account"),
    ("Blog", "/blog"),
    ("Help", "/help"),
];

pub const SCREENS: &[&str] = &[
    "Home",
    "Product Detail",
    "Category",
    "Cart",
    "Checkout",
    "Search",
    "Profile",
];
