//! Configuration: the versioned TOML file of SPEC §3.2, environment overrides, and dev mode.
//!
//! Contract: `load` reads the file (unknown keys are rejected with the key's name and line,
//! by `deny_unknown_fields` and the toml crate's spans), applies overrides in the order
//! file < environment < flags, and validates into [`Config`]. Without a config file the
//! server runs in dev mode: workspace `default`, one source `default` and one admin token,
//! whose secrets are generated once and kept in the data dir.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::log::{Codec, LogConfig, Retention};

pub const DEFAULT_CONFIG_FILE: &str = "junction.toml";
pub const DEFAULT_DATA_DIR: &str = "./junction-data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8088";
const DEV_CREDENTIALS_FILE: &str = "dev-credentials.json";

/// Scopes a token may carry. `admin` implies every other one.
pub const SCOPES: &[&str] = &["admin", "events:read", "profiles:read", "compute:write"];

/// The file as written by the user.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub version: u32,
    pub workspace: Option<String>,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub ingest: IngestSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    #[serde(default)]
    pub identity: IdentitySection,
    #[serde(default)]
    pub profiles: ProfilesSection,
    #[serde(default)]
    pub computed_traits: Vec<ComputedTraitConfig>,
    #[serde(default)]
    pub audiences: Vec<AudienceConfig>,
    #[serde(default)]
    pub compute: ComputeSection,
}

/// `[[computed_traits]]`: a value computed per profile (`docs/expressions.md`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ComputedTraitConfig {
    pub key: String,
    pub expr: String,
    #[serde(default)]
    pub description: String,
    #[serde(skip)]
    pub managed_by: ManagedBy,
}

/// `[[audiences]]`: the profiles for which `expr` is true.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceConfig {
    pub key: String,
    /// Shown to people (`audience_name` of `Audience Entered`); defaults to the key.
    pub name: Option<String>,
    pub expr: String,
    #[serde(default)]
    pub description: String,
    #[serde(skip)]
    pub managed_by: ManagedBy,
}

/// Where a definition is changed: in the config file (read-only through the API), or through
/// the management API (kept in the data dir, see `compute::registry`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ManagedBy {
    #[default]
    Config,
    Api,
}

impl ManagedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ManagedBy::Config => "config",
            ManagedBy::Api => "api",
        }
    }
}

/// `[compute]`: computed traits and audiences.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeSection {
    /// How late a change caused by time alone (an event leaving a `within` window, `now()`)
    /// may be seen, default 60 s.
    pub time_lag_secs: Option<u64>,
}

/// The definitions of the config file and of the management API, checked together.
#[derive(Clone, Debug, Default)]
pub struct Definitions {
    pub computed_traits: Vec<ComputedTraitConfig>,
    pub audiences: Vec<AudienceConfig>,
    /// Computed traits first, then audiences, in file order.
    pub catalog: std::sync::Arc<junction_core::compute::Catalog>,
}

impl Definitions {
    /// Checks every definition (see `junction_core::compute::Catalog::compile`).
    pub fn new(
        computed_traits: Vec<ComputedTraitConfig>,
        audiences: Vec<AudienceConfig>,
    ) -> Result<Definitions, junction_core::compute::DefinitionError> {
        use junction_core::compute::{Catalog, DefKind, DefinitionSpec};
        let specs: Vec<DefinitionSpec> = computed_traits
            .iter()
            .map(|t| (DefKind::ComputedTrait, &t.key, &t.expr))
            .chain(
                audiences
                    .iter()
                    .map(|a| (DefKind::Audience, &a.key, &a.expr)),
            )
            .map(|(kind, key, expr)| DefinitionSpec {
                kind,
                key: key.clone(),
                expr: expr.clone(),
            })
            .collect();
        let catalog = Catalog::compile(&specs)?;
        Ok(Definitions {
            computed_traits,
            audiences,
            catalog: std::sync::Arc::new(catalog),
        })
    }

    /// Definitions with no names or descriptions beyond their keys (a preview's pass).
    pub fn from_catalog(catalog: std::sync::Arc<junction_core::compute::Catalog>) -> Definitions {
        Definitions {
            computed_traits: Vec::new(),
            audiences: Vec::new(),
            catalog,
        }
    }

    /// Who manages the definition of `kind` named `key` (`None`: there is none).
    pub fn managed_by(
        &self,
        kind: junction_core::compute::DefKind,
        key: &str,
    ) -> Option<ManagedBy> {
        use junction_core::compute::DefKind;
        match kind {
            DefKind::ComputedTrait => self
                .computed_traits
                .iter()
                .find(|t| t.key == key)
                .map(|t| t.managed_by),
            DefKind::Audience => self
                .audiences
                .iter()
                .find(|a| a.key == key)
                .map(|a| a.managed_by),
        }
    }

    /// The display name of audience `key`.
    pub fn audience_name(&self, key: &str) -> Option<&str> {
        self.audiences
            .iter()
            .find(|a| a.key == key)
            .map(|a| a.name.as_deref().unwrap_or(&a.key))
    }
}

/// `[identity]`: Segment's identity-resolution settings; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    /// Exact values (case-insensitive) that never become identifiers, added to the defaults.
    #[serde(default)]
    pub blocked_values: Vec<String>,
    /// Regular expressions; a matching value never becomes an identifier.
    #[serde(default)]
    pub blocked_patterns: Vec<String>,
    /// Hard caps per profile (defaults 100 and 1,000).
    pub max_merges: Option<usize>,
    pub max_identifiers: Option<usize>,
    #[serde(default)]
    pub identifiers: Vec<IdentifierConfig>,
}

/// `[[identity.identifiers]]`: the rule for one identifier type, or a custom identifier
/// taken from a trait or property key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifierConfig {
    #[serde(rename = "type")]
    pub kind: String,
    pub limit: Option<u32>,
    /// `ever`, `weekly`, `monthly`, `annually`, `<n>d` or `<n>h`.
    pub window: Option<String>,
    pub priority: Option<u32>,
    /// Take this identifier from `traits.<key>` / `context.traits.<key>`.
    pub trait_key: Option<String>,
    /// Take this identifier from `properties.<key>`.
    pub property_key: Option<String>,
}

/// `[profiles]`: the Unify processor and the Profile API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilesSection {
    /// How often the processor makes its state durable (write-behind), default 200 ms.
    pub commit_interval_ms: Option<u64>,
    /// `/ready` fails while the processor is more than this many events behind the log.
    pub ready_max_lag_events: Option<u64>,
    /// Profile API requests per second per token (Segment: 100).
    pub rate_limit_per_sec: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// Time allowed to receive a request's headers (slowloris protection).
    pub header_read_timeout_secs: Option<u64>,
    /// Deadline for a whole request: body, processing and the durable write.
    pub request_timeout_secs: Option<u64>,
    /// Connections served at once; further ones wait in the kernel's accept queue.
    pub max_connections: Option<usize>,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSection {
    pub max_event_bytes: Option<usize>,
    pub max_batch_bytes: Option<usize>,
    pub max_batch_events: Option<usize>,
    pub max_depth: Option<usize>,
    pub dedup_window_secs: Option<u64>,
    /// Memory bound of the dedup index; past it the oldest keys are evicted (~40 B each).
    pub dedup_max_keys: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub segment_bytes: Option<u64>,
    /// `lz4` (default) or `none`.
    pub codec: Option<String>,
    pub max_inflight_bytes: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub retention_secs: Option<u64>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub write_key: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub secret: Option<String>,
    pub secret_env: Option<String>,
    pub scopes: Vec<String>,
}

/// Values given on the command line or through `JUNCTION_*` variables (clap merges the two,
/// flags first); each one that is set overrides the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Token {
    pub name: String,
    pub secret: String,
    pub scopes: Vec<String>,
}

impl Token {
    pub fn allows(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == "admin" || s == scope)
    }
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub workspace: String,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
    pub limits: junction_core::event::Limits,
    pub dedup_window: Duration,
    pub dedup_max_keys: usize,
    pub log: LogConfig,
    pub sources: Vec<SourceConfig>,
    pub tokens: Vec<Token>,
    /// Set when no config file was found; the generated credentials.
    pub dev_mode: bool,
    pub identity: junction_core::identity::Rules,
    pub commit_interval: Duration,
    pub ready_max_lag_events: u64,
    pub profile_rate_limit: u32,
    pub definitions: Definitions,
    pub compute_time_lag: Duration,
}

/// Parses a config file's text; errors carry the key's name and line.
pub fn parse_file(text: &str, origin: &Path) -> anyhow::Result<FileConfig> {
    let file: FileConfig = toml::from_str(text)
        .with_context(|| format!("invalid config file {}", origin.display()))?;
    if file.version != 1 {
        bail!(
            "invalid config file {}: `version` must be 1 (found {})",
            origin.display(),
            file.version
        );
    }
    Ok(file)
}

/// Loads the configuration: the file named by the overrides, else `./junction.toml` when
/// present, else dev mode.
pub fn load(overrides: &Overrides) -> anyhow::Result<Config> {
    let path = match &overrides.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
    };
    let file = match &path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?;
            Some(parse_file(&text, p)?)
        }
        None => None,
    };
    build(file, overrides)
}

/// The data dir alone (flags/env, else the config file, else the default), without dev-mode
/// side effects: for read-only tools such as `events tail`.
pub fn resolve_data_dir(overrides: &Overrides) -> anyhow::Result<PathBuf> {
    if let Some(d) = &overrides.data_dir {
        return Ok(d.clone());
    }
    let path = overrides
        .config
        .clone()
        .or_else(|| Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()));
    let from_file = match path {
        Some(p) => {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read config file {}", p.display()))?;
            parse_file(&text, &p)?.server.data_dir
        }
        None => None,
    };
    Ok(from_file.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)))
}

/// Applies overrides and defaults, validates, and (in dev mode) creates the dev credentials.
pub fn build(file: Option<FileConfig>, overrides: &Overrides) -> anyhow::Result<Config> {
    let dev_mode = file.is_none();
    let file = file.unwrap_or(FileConfig {
        version: 1,
        ..Default::default()
    });
    let data_dir = overrides
        .data_dir
        .clone()
        .or(file.server.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let listen_text = overrides
        .listen
        .clone()
        .or(file.server.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let listen: SocketAddr = listen_text
        .parse()
        .with_context(|| format!("invalid listen address `{listen_text}` (expected IP:PORT)"))?;

    let defaults = junction_core::event::Limits::default();
    let ingest = &file.ingest;
    let limits = junction_core::event::Limits {
        max_event_bytes: ingest.max_event_bytes.unwrap_or(defaults.max_event_bytes),
        max_batch_bytes: ingest.max_batch_bytes.unwrap_or(defaults.max_batch_bytes),
        max_batch_events: ingest.max_batch_events.unwrap_or(defaults.max_batch_events),
        max_depth: ingest.max_depth.unwrap_or(defaults.max_depth),
    };
    if limits.max_event_bytes > limits.max_batch_bytes {
        bail!("[ingest] max_event_bytes must not exceed max_batch_bytes");
    }

    let mut log = LogConfig::new(data_dir.join("log"));
    let ls = &file.log;
    if let Some(b) = ls.segment_bytes {
        log.segment_bytes = b;
    }
    if let Some(c) = &ls.codec {
        log.codec = match c.as_str() {
            "lz4" => Codec::Lz4,
            "none" => Codec::None,
            other => bail!("[log] codec must be \"lz4\" or \"none\" (found \"{other}\")"),
        };
    }
    if let Some(b) = ls.max_inflight_bytes {
        log.max_inflight_bytes = b;
    }
    log.retention = Retention {
        max_bytes: ls.retention_bytes,
        max_age: ls.retention_secs.map(Duration::from_secs),
    };

    let (sources, tokens) = if dev_mode {
        let creds = dev_credentials(&data_dir)?;
        (creds.sources, creds.tokens)
    } else {
        (file.sources, file.tokens)
    };
    let tokens = resolve_tokens(tokens)?;
    validate_sources(&sources)?;
    let identity = identity_rules(&file.identity)?;
    let profiles = &file.profiles;
    let profile_rate_limit = profiles.rate_limit_per_sec.unwrap_or(100);
    if profile_rate_limit == 0 {
        bail!("[profiles] rate_limit_per_sec must be at least 1");
    }

    let definitions =
        crate::compute::registry::load(&data_dir, file.computed_traits, file.audiences)?;
    let compute_time_lag = Duration::from_secs(file.compute.time_lag_secs.unwrap_or(60));
    if compute_time_lag.is_zero() {
        bail!("[compute] time_lag_secs must be at least 1");
    }

    Ok(Config {
        definitions,
        compute_time_lag,
        workspace: file.workspace.unwrap_or_else(|| "default".to_string()),
        listen,
        data_dir,
        header_read_timeout: Duration::from_secs(
            file.server.header_read_timeout_secs.unwrap_or(10),
        ),
        request_timeout: Duration::from_secs(file.server.request_timeout_secs.unwrap_or(30)),
        max_connections: file.server.max_connections.unwrap_or(4096),
        shutdown_timeout: Duration::from_secs(file.server.shutdown_timeout_secs.unwrap_or(30)),
        limits,
        dedup_window: Duration::from_secs(ingest.dedup_window_secs.unwrap_or(24 * 3600)),
        dedup_max_keys: ingest.dedup_max_keys.unwrap_or(50_000_000),
        log,
        sources,
        tokens,
        dev_mode,
        identity,
        commit_interval: Duration::from_millis(profiles.commit_interval_ms.unwrap_or(200).max(1)),
        ready_max_lag_events: profiles.ready_max_lag_events.unwrap_or(100_000),
        profile_rate_limit,
    })
}

fn identity_rules(section: &IdentitySection) -> anyhow::Result<junction_core::identity::Rules> {
    use junction_core::identity::{RulesSpec, TypeSpec};
    let mut spec = RulesSpec {
        blocked_values: section.blocked_values.clone(),
        blocked_patterns: section.blocked_patterns.clone(),
        max_merges: section.max_merges,
        max_identifiers: section.max_identifiers,
        ..Default::default()
    };
    for (i, id) in section.identifiers.iter().enumerate() {
        if id.trait_key.is_some() && id.property_key.is_some() {
            bail!("[identity] identifiers[{i}]: set at most one of `trait_key` and `property_key`");
        }
        spec.identifiers.push(TypeSpec {
            kind: id.kind.clone(),
            limit: id.limit,
            window: id.window.clone(),
            priority: id.priority,
        });
        if let Some(key) = &id.trait_key {
            spec.trait_identifiers.push((key.clone(), id.kind.clone()));
        }
        if let Some(key) = &id.property_key {
            spec.property_identifiers
                .push((key.clone(), id.kind.clone()));
        }
    }
    junction_core::identity::Rules::new(&spec).map_err(|e| anyhow::anyhow!("invalid config: {e}"))
}

fn validate_sources(sources: &[SourceConfig]) -> anyhow::Result<()> {
    let mut names = HashSet::new();
    let mut keys = HashSet::new();
    for s in sources {
        if s.name.is_empty() || s.name.len() > 255 {
            bail!(
                "[[sources]] name must be 1 to 255 bytes (found {:?})",
                s.name
            );
        }
        if s.name == crate::ingest::DERIVED_SOURCE {
            bail!(
                "[[sources]] name `{}` is reserved for derived events",
                s.name
            );
        }
        if s.write_key.is_empty() {
            bail!("[[sources]] `{}`: write_key must not be empty", s.name);
        }
        if !names.insert(&s.name) {
            bail!("[[sources]] name `{}` is declared twice", s.name);
        }
        if !keys.insert(&s.write_key) {
            bail!(
                "[[sources]] `{}`: write_key is already used by another source",
                s.name
            );
        }
    }
    Ok(())
}

fn resolve_tokens(tokens: Vec<TokenConfig>) -> anyhow::Result<Vec<Token>> {
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(tokens.len());
    for t in tokens {
        if !names.insert(t.name.clone()) {
            bail!("[[tokens]] name `{}` is declared twice", t.name);
        }
        let secret = match (t.secret, &t.secret_env) {
            (Some(s), None) => s,
            (None, Some(var)) => std::env::var(var).with_context(|| {
                format!(
                    "[[tokens]] `{}`: environment variable {var} (secret_env) is not set",
                    t.name
                )
            })?,
            _ => bail!(
                "[[tokens]] `{}`: set exactly one of `secret` and `secret_env`",
                t.name
            ),
        };
        if secret.len() < 8 {
            bail!(
                "[[tokens]] `{}`: the secret must be at least 8 characters",
                t.name
            );
        }
        for scope in &t.scopes {
            if !SCOPES.contains(&scope.as_str()) {
                bail!(
                    "[[tokens]] `{}`: unknown scope `{scope}` (known: {})",
                    t.name,
                    SCOPES.join(", ")
                );
            }
        }
        out.push(Token {
            name: t.name,
            secret,
            scopes: t.scopes,
        });
    }
    Ok(out)
}

#[derive(Debug, Deserialize, Serialize)]
struct DevCredentials {
    sources: Vec<SourceConfig>,
    tokens: Vec<TokenConfig>,
}

/// Reads the dev-mode credentials from the data dir, generating them on first start.
fn dev_credentials(data_dir: &Path) -> anyhow::Result<DevCredentials> {
    let path = data_dir.join(DEV_CREDENTIALS_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()));
    }
    let random = || uuid::Uuid::new_v4().simple().to_string();
    let creds = DevCredentials {
        sources: vec![SourceConfig {
            name: "default".into(),
            write_key: format!("wk_{}", random()),
        }],
        tokens: vec![TokenConfig {
            name: "admin".into(),
            secret: Some(format!("tok_{}", random())),
            secret_env: None,
            scopes: vec!["admin".into()],
        }],
    };
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    crate::fsutil::write_atomic(&path, &serde_json::to_vec_pretty(&creds)?)?;
    Ok(creds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use junction_core::identity::Kind;

    #[test]
    fn unknown_key_is_rejected_with_name_and_line() {
        let text = "version = 1\n\n[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n";
        let err = format!("{:#}", parse_file(text, Path::new("j.toml")).unwrap_err());
        assert!(err.contains("listne"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn identity_section_is_validated_and_defaults_work() {
        let build_text = |extra: &str| {
            let text = format!("version = 1\n[server]\ndata_dir = \"/tmp/x\"\n{extra}");
            parse_file(&text, Path::new("j.toml"))
                .and_then(|f| build(Some(f), &Overrides::default()))
        };
        let config = build_text("").unwrap();
        assert_eq!(config.identity.rule(Kind::USER_ID).limit, 1);
        assert_eq!(config.profile_rate_limit, 100);
        let config = build_text(
            "[identity]\nblocked_values = [\"x@y.z\"]\n[[identity.identifiers]]\ntype = \"account_number\"\ntrait_key = \"acct\"\nlimit = 2\nwindow = \"30d\"\n[profiles]\nrate_limit_per_sec = 7\n",
        )
        .unwrap();
        assert!(config.identity.is_blocked("X@Y.Z"));
        assert_eq!(config.identity.rule(Kind::of("account_number")).limit, 2);
        assert_eq!(config.identity.trait_identifiers[0].key, "acct");
        assert_eq!(config.profile_rate_limit, 7);
        let err = format!(
            "{:#}",
            build_text("[[identity.identifiers]]\ntype = \"phone\"\nwindow = \"fortnightly\"\n")
                .unwrap_err()
        );
        assert!(err.contains("identity.identifiers[0].window"), "{err}");
        let err = format!(
            "{:#}",
            build_text("[identity]\nblocked_patterns = [\"(\"]\n").unwrap_err()
        );
        assert!(err.contains("identity.blocked_patterns[0]"), "{err}");
        let err = format!(
            "{:#}",
            build_text("[identity]\nmax_merge = 3\n").unwrap_err()
        );
        assert!(err.contains("max_merge") && err.contains("line 5"), "{err}");
    }

    #[test]
    fn version_is_required_and_checked() {
        let err = format!(
            "{:#}",
            parse_file("workspace = \"a\"\n", Path::new("j.toml")).unwrap_err()
        );
        assert!(err.contains("version"), "{err}");
        let err = format!(
            "{:#}",
            parse_file("version = 2\n", Path::new("j.toml")).unwrap_err()
        );
        assert!(err.contains("`version` must be 1"), "{err}");
    }

    #[test]
    fn flags_override_file() {
        let text = "version = 1\n[server]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/tmp/x\"\n[[sources]]\nname = \"web\"\nwrite_key = \"wk\"\n";
        let file = parse_file(text, Path::new("j.toml")).unwrap();
        let over = Overrides {
            listen: Some("127.0.0.1:2".into()),
            ..Default::default()
        };
        let c = build(Some(file), &over).unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert!(!c.dev_mode);
    }

    #[test]
    fn token_scopes_and_secrets_are_validated() {
        let text = "version = 1\n[[tokens]]\nname = \"t\"\nsecret = \"tok_123456\"\nscopes = [\"profile:read\"]\n";
        let err = format!(
            "{:#}",
            build(
                Some(parse_file(text, Path::new("j")).unwrap()),
                &Overrides::default()
            )
            .unwrap_err()
        );
        assert!(err.contains("unknown scope `profile:read`"), "{err}");
        let text = "version = 1\n[[tokens]]\nname = \"t\"\nsecret_env = \"JUNCTION_TEST_UNSET_VAR\"\nscopes = [\"admin\"]\n";
        let err = format!(
            "{:#}",
            build(
                Some(parse_file(text, Path::new("j")).unwrap()),
                &Overrides::default()
            )
            .unwrap_err()
        );
        assert!(err.contains("JUNCTION_TEST_UNSET_VAR"), "{err}");
    }

    #[test]
    fn duplicate_write_keys_are_rejected() {
        let text = "version = 1\n[[sources]]\nname = \"a\"\nwrite_key = \"k\"\n[[sources]]\nname = \"b\"\nwrite_key = \"k\"\n";
        let err = format!(
            "{:#}",
            build(
                Some(parse_file(text, Path::new("j")).unwrap()),
                &Overrides::default()
            )
            .unwrap_err()
        );
        assert!(err.contains("already used"), "{err}");
    }

    #[test]
    fn dev_mode_generates_credentials_once() {
        let dir = tempfile::tempdir().unwrap();
        let over = Overrides {
            data_dir: Some(dir.path().into()),
            ..Default::default()
        };
        let a = build(None, &over).unwrap();
        let b = build(None, &over).unwrap();
        assert!(a.dev_mode);
        assert_eq!(a.workspace, "default");
        assert_eq!(a.sources[0].name, "default");
        assert_eq!(a.sources[0].write_key, b.sources[0].write_key);
        assert_eq!(a.tokens[0].secret, b.tokens[0].secret);
        assert!(a.tokens[0].allows("events:read"));
    }
}
