//! Configuration: the blobfuse2-style YAML file, the Azure environment
//! variables and the command-line flags, merged and validated into one
//! [`ResolvedConfig`].
//!
//! Precedence, lowest first: built-in defaults, the config file, environment
//! variables, command-line flags. Every error names the key, the offending
//! value and where it came from; secrets are never part of an error, a log
//! line or `Debug` output.
//!
//! Keys that blobfuse2 knows but this filesystem does not use are accepted
//! with a warning (collected in [`ResolvedConfig::warnings`]), so that an
//! existing blobfuse2 file mounts unchanged; any other key is an error.

use crate::shell::CacheOptions;
use serde::Deserialize;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[cfg(feature = "azure")]
use crate::storage::azure::{AzureCredentials, AzureSettings};

/// One mebibyte; blobfuse2's "MB" sizes are mebibytes.
const MIB: u64 = 1 << 20;
pub const DEFAULT_BLOCK_SIZE_MB: f64 = 16.0;
pub const DEFAULT_MEM_SIZE_MB: u64 = 1024;
pub const DEFAULT_PREFETCH: u32 = 11;
pub const DEFAULT_PARALLELISM: u32 = 32;
/// Azure's limit for one staged block.
pub const MAX_BLOCK_SIZE_MB: f64 = 4000.0;
pub const MAX_PARALLELISM: u32 = 1024;
/// A writer and a reader must be able to hold a block each.
pub const MIN_BLOCKS_IN_MEMORY: u64 = 2;
pub const DEFAULT_ATTRIBUTE_EXPIRATION_SEC: u64 = 120;
pub const DEFAULT_ENTRY_EXPIRATION_SEC: u64 = 120;
/// Off by default: a cached "does not exist" hides blobs that another client
/// creates, while listings already show them, which confuses users.
pub const DEFAULT_NEGATIVE_ENTRY_EXPIRATION_SEC: u64 = 0;
pub const DEFAULT_LOG_LEVEL: &str = "info";

pub const ENV_ACCOUNT: &str = "AZURE_STORAGE_ACCOUNT";
pub const ENV_ACCESS_KEY: &str = "AZURE_STORAGE_ACCESS_KEY";
pub const ENV_SAS_TOKEN: &str = "AZURE_STORAGE_SAS_TOKEN";
pub const ENV_BLOB_ENDPOINT: &str = "AZURE_STORAGE_BLOB_ENDPOINT";
pub const ENV_CONTAINER: &str = "AZURE_STORAGE_ACCOUNT_CONTAINER";
pub const ENV_AUTH_TYPE: &str = "AZURE_STORAGE_AUTH_TYPE";
pub const ENV_HOME: &str = "BLOBCACHE_HOME";
pub const ENV_LOG: &str = "BLOBCACHE_LOG";

/// The blobfuse2 pipeline components this file may list.
const KNOWN_COMPONENTS: &[&str] = &[
    "libfuse",
    "block_cache",
    "file_cache",
    "stream",
    "attr_cache",
    "azstorage",
    "xload",
    "entry_cache",
];

/// A secret string (account key, SAS token): deserialized like a string,
/// but its `Debug` output is redacted.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Values of keys that are accepted and ignored; their content is never
/// looked at (and may hold secrets, so it is never printed).
type Ignored = Option<serde_yaml_ng::Value>;

/// The config file as written. Only `Deserialize`: sections holding
/// secrets have no `Debug`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    pub allow_other: Option<bool>,
    pub nonempty: Option<bool>,
    pub foreground: Option<bool>,
    pub read_only: Option<bool>,
    pub logging: Option<LoggingSection>,
    pub components: Option<Vec<String>>,
    pub libfuse: Option<LibfuseSection>,
    #[serde(rename = "block_cache")]
    pub block_cache: Option<BlockCacheSection>,
    #[serde(rename = "attr_cache")]
    pub attr_cache: Option<AttrCacheSection>,
    pub azstorage: Option<AzstorageSection>,
    pub local: Option<LocalSection>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LoggingSection {
    pub level: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub file_path: Ignored,
    pub max_file_size_mb: Ignored,
    pub file_count: Ignored,
    pub track_time: Ignored,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LibfuseSection {
    pub attribute_expiration_sec: Option<u64>,
    pub entry_expiration_sec: Option<u64>,
    pub negative_entry_expiration_sec: Option<u64>,
    pub default_permission: Ignored,
    pub ignore_open_flags: Ignored,
    pub direct_io: Ignored,
    pub disable_writeback_cache: Ignored,
    pub network_share: Ignored,
    pub max_fuse_threads: Ignored,
    pub fuse_trace: Ignored,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BlockCacheSection {
    pub block_size_mb: Option<f64>,
    pub mem_size_mb: Option<u64>,
    pub prefetch: Option<u32>,
    pub parallelism: Option<u32>,
    pub path: Ignored,
    pub disk_size_mb: Ignored,
    pub disk_timeout_sec: Ignored,
    pub prefetch_on_open: Ignored,
    pub consistency: Ignored,
    pub cleanup_on_start: Ignored,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AttrCacheSection {
    pub timeout_sec: Ignored,
    pub no_cache_on_list: Ignored,
    pub no_symlinks: Ignored,
    pub max_files: Ignored,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AzstorageSection {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub account_name: Option<String>,
    pub container: Option<String>,
    pub endpoint: Option<String>,
    pub mode: Option<String>,
    pub account_key: Option<Secret>,
    pub sas: Option<Secret>,
    pub use_http: Option<bool>,
    pub max_retries: Option<u32>,
    pub max_retry_timeout_sec: Option<u64>,
    pub subdirectory: Option<String>,
    pub block_size_mb: Ignored,
    pub block_list_on_mount_sec: Ignored,
    pub max_concurrency: Ignored,
    pub tier: Ignored,
    pub retry_backoff_sec: Ignored,
    pub max_retry_delay_sec: Ignored,
    pub virtual_directory: Ignored,
    pub fail_unsupported_op: Ignored,
    pub update_md5: Ignored,
    pub validate_md5: Ignored,
    pub sdk_trace: Ignored,
    pub disable_compression: Ignored,
    pub honour_acl: Ignored,
    pub telemetry: Ignored,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LocalSection {
    pub path: Option<PathBuf>,
}

/// Values given on the command line; they win over everything else.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub local_dir: Option<PathBuf>,
    pub block_size_mb: Option<f64>,
    pub mem_size_mb: Option<u64>,
    pub prefetch: Option<u32>,
    pub parallelism: Option<u32>,
    pub allow_other: bool,
    pub nonempty: bool,
    pub foreground: bool,
    pub log_level: Option<String>,
    pub create_container: bool,
}

/// Where a value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(&'static str),
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("built-in default"),
            Origin::File(path) => write!(f, "from config file {}", path.display()),
            Origin::Env(name) => write!(f, "from environment variable {name}"),
            Origin::Flag(name) => write!(f, "from command-line flag {name}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid {key} = {value} ({origin}): {reason}")]
    Invalid {
        key: String,
        value: String,
        origin: Origin,
        reason: String,
    },
    #[error("{key} is not set: {hint}")]
    Missing { key: String, hint: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Conflict(String),
    #[error("cannot choose a data directory: set {ENV_HOME}, XDG_DATA_HOME or HOME")]
    NoHome,
}

/// Which container to mount.
pub enum Backend {
    /// A container kept in a local directory.
    Local { path: PathBuf },
    /// A container in an Azure storage account.
    #[cfg(feature = "azure")]
    Azure(AzureSettings),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Local { path } => f.debug_struct("Local").field("path", path).finish(),
            #[cfg(feature = "azure")]
            Backend::Azure(settings) => {
                let credentials = match settings.credentials {
                    AzureCredentials::AccountKey(_) => "account key <redacted>",
                    AzureCredentials::Sas(_) => "SAS <redacted>",
                };
                f.debug_struct("Azure")
                    .field("account", &settings.account)
                    .field("container", &settings.container)
                    .field("endpoint", &settings.endpoint)
                    .field("credentials", &credentials)
                    .finish()
            }
        }
    }
}

/// Everything a mount needs, validated.
#[derive(Debug)]
pub struct ResolvedConfig {
    pub backend: Backend,
    pub cache: CacheOptions,
    pub allow_other: bool,
    /// Mount over a directory that is not empty.
    pub nonempty: bool,
    /// Create the Azure container if it does not exist yet.
    pub create_container: bool,
    pub read_only: bool,
    pub foreground: bool,
    /// How long the kernel trusts attributes (`attribute-expiration-sec`).
    pub attribute_timeout: Duration,
    /// How long the kernel trusts a name lookup (`entry-expiration-sec`).
    pub entry_timeout: Duration,
    /// How long the kernel remembers that a name does not exist; zero disables.
    pub negative_entry_timeout: Duration,
    /// A `tracing` filter directive.
    pub log_filter: String,
    /// The config file that was read, if any.
    pub source: Option<PathBuf>,
    /// Keys that were accepted but are ignored, one message each.
    pub warnings: Vec<String>,
}

/// Looks up an environment variable; empty values count as unset.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, with empty values treated as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A seed for the cache's random numbers, different on every start: std's
/// per-process hash keys come from the OS RNG; the clock and pid are mixed in
/// so that even a degenerate RNG gives distinct seeds.
pub fn startup_seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// The directory that holds blobcache's own data: `$BLOBCACHE_HOME`, else
/// `$XDG_DATA_HOME/blobcache`, else `~/.local/share/blobcache`.
pub fn blobcache_home(env: EnvLookup<'_>) -> Result<PathBuf, ConfigError> {
    if let Some(home) = env(ENV_HOME) {
        return Ok(PathBuf::from(home));
    }
    if let Some(data) = env("XDG_DATA_HOME").filter(|d| Path::new(d).is_absolute()) {
        return Ok(Path::new(&data).join("blobcache"));
    }
    match env("HOME") {
        Some(home) => Ok(Path::new(&home).join(".local/share/blobcache")),
        None => Err(ConfigError::NoHome),
    }
}

/// The local container used when nothing else is configured.
pub fn default_local_path(env: EnvLookup<'_>) -> Result<PathBuf, ConfigError> {
    Ok(blobcache_home(env)?.join("containers").join("default"))
}

/// Parses config text; `path` only names the file in errors.
pub fn parse_config(text: &str, path: &Path) -> Result<ConfigFile, ConfigError> {
    if text.trim().is_empty() {
        return Ok(ConfigFile::default());
    }
    serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads and parses a config file.
pub fn read_config(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_config(&text, path)
}

/// Reads the config file (if any) and resolves it with the environment and
/// the flags.
pub fn load(
    config_file: Option<&Path>,
    overrides: &Overrides,
    env: EnvLookup<'_>,
) -> Result<ResolvedConfig, ConfigError> {
    let file = match config_file {
        Some(path) => read_config(path)?,
        None => ConfigFile::default(),
    };
    resolve(file, config_file, overrides, env)
}

/// Picks the value with the highest precedence and remembers where it came from.
struct Pick<T> {
    value: T,
    origin: Origin,
}

fn pick<T>(
    flag: Option<(T, &'static str)>,
    env: Option<(T, &'static str)>,
    file: Option<T>,
    file_origin: &Origin,
    default: T,
) -> Pick<T> {
    if let Some((value, name)) = flag {
        return Pick {
            value,
            origin: Origin::Flag(name),
        };
    }
    if let Some((value, name)) = env {
        return Pick {
            value,
            origin: Origin::Env(name),
        };
    }
    match file {
        Some(value) => Pick {
            value,
            origin: file_origin.clone(),
        },
        None => Pick {
            value: default,
            origin: Origin::Default,
        },
    }
}

fn invalid(key: &str, value: impl fmt::Display, origin: &Origin, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        origin: origin.clone(),
        reason: reason.to_string(),
    }
}

fn note_ignored(warnings: &mut Vec<String>, section: &str, key: &str, value: &Ignored) {
    if value.is_some() {
        warnings.push(format!("{section}.{key} is accepted for compatibility and ignored"));
    }
}

/// Merges the parsed file, the environment and the flags, and validates.
pub fn resolve(
    file: ConfigFile,
    path: Option<&Path>,
    overrides: &Overrides,
    env: EnvLookup<'_>,
) -> Result<ResolvedConfig, ConfigError> {
    let file_origin = match path {
        Some(p) => Origin::File(p.to_path_buf()),
        None => Origin::Default,
    };
    let mut warnings = Vec::new();

    check_components(file.components.as_deref(), &file_origin, &mut warnings)?;
    let log_filter = resolve_log_level(overrides, env, file.logging.as_ref(), &file_origin, &mut warnings)?;

    let libfuse = file.libfuse.unwrap_or_default();
    for (key, value) in [
        ("default-permission", &libfuse.default_permission),
        ("ignore-open-flags", &libfuse.ignore_open_flags),
        ("direct-io", &libfuse.direct_io),
        ("disable-writeback-cache", &libfuse.disable_writeback_cache),
        ("network-share", &libfuse.network_share),
        ("max-fuse-threads", &libfuse.max_fuse_threads),
        ("fuse-trace", &libfuse.fuse_trace),
    ] {
        note_ignored(&mut warnings, "libfuse", key, value);
    }
    let attribute_timeout = Duration::from_secs(
        libfuse
            .attribute_expiration_sec
            .unwrap_or(DEFAULT_ATTRIBUTE_EXPIRATION_SEC),
    );
    let entry_timeout = Duration::from_secs(libfuse.entry_expiration_sec.unwrap_or(DEFAULT_ENTRY_EXPIRATION_SEC));
    let negative_entry_timeout = Duration::from_secs(
        libfuse
            .negative_entry_expiration_sec
            .unwrap_or(DEFAULT_NEGATIVE_ENTRY_EXPIRATION_SEC),
    );

    if let Some(attr_cache) = &file.attr_cache {
        for (key, value) in [
            ("timeout-sec", &attr_cache.timeout_sec),
            ("no-cache-on-list", &attr_cache.no_cache_on_list),
            ("no-symlinks", &attr_cache.no_symlinks),
            ("max-files", &attr_cache.max_files),
        ] {
            note_ignored(&mut warnings, "attr_cache", key, value);
        }
    }

    let block_cache = file.block_cache.unwrap_or_default();
    let mut cache = resolve_cache(&block_cache, overrides, &file_origin, &mut warnings)?;
    cache.attribute_timeout = attribute_timeout;

    let backend = resolve_backend(
        file.local,
        file.azstorage,
        overrides,
        env,
        &file_origin,
        &mut cache,
        &mut warnings,
    )?;

    Ok(ResolvedConfig {
        backend,
        cache,
        allow_other: overrides.allow_other || file.allow_other.unwrap_or(false),
        nonempty: overrides.nonempty || file.nonempty.unwrap_or(false),
        create_container: overrides.create_container,
        read_only: file.read_only.unwrap_or(false),
        foreground: overrides.foreground || file.foreground.unwrap_or(false),
        attribute_timeout,
        entry_timeout,
        negative_entry_timeout,
        log_filter,
        source: path.map(Path::to_path_buf),
        warnings,
    })
}

fn check_components(
    components: Option<&[String]>,
    origin: &Origin,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let Some(components) = components else {
        return Ok(());
    };
    for component in components {
        if !KNOWN_COMPONENTS.contains(&component.as_str()) {
            return Err(invalid(
                "components",
                component,
                origin,
                &format!("unknown component; known: {}", KNOWN_COMPONENTS.join(", ")),
            ));
        }
        if matches!(component.as_str(), "file_cache" | "stream" | "xload") {
            warnings.push(format!(
                "component {component} is not available; the block cache is used instead"
            ));
        }
    }
    Ok(())
}

/// Maps a blobfuse2 level (`log_debug`) or a plain level (`debug`) to a
/// `tracing` level; anything with `=` or `,` is taken as a filter directive.
pub fn normalize_log_level(level: &str) -> Option<String> {
    let lower = level.trim().to_ascii_lowercase();
    let mapped = match lower.as_str() {
        "log_off" | "off" => "off",
        "log_crit" | "log_err" | "error" | "err" | "crit" => "error",
        "log_warning" | "warning" | "warn" => "warn",
        "log_info" | "info" => "info",
        "log_debug" | "debug" => "debug",
        "log_trace" | "trace" => "trace",
        _ if lower.contains('=') || lower.contains(',') => return Some(level.trim().to_string()),
        _ => return None,
    };
    Some(mapped.to_string())
}

fn resolve_log_level(
    overrides: &Overrides,
    env: EnvLookup<'_>,
    logging: Option<&LoggingSection>,
    file_origin: &Origin,
    warnings: &mut Vec<String>,
) -> Result<String, ConfigError> {
    if let Some(logging) = logging {
        if let Some(kind) = &logging.kind {
            if !matches!(kind.as_str(), "base" | "syslog" | "silent") {
                return Err(invalid(
                    "logging.type",
                    kind,
                    file_origin,
                    "expected base, syslog or silent",
                ));
            }
            if kind != "base" {
                warnings.push(format!(
                    "logging.type = {kind} is ignored; logs go to stderr or the mount's log file"
                ));
            }
        }
        for (key, value) in [
            ("file-path", &logging.file_path),
            ("max-file-size-mb", &logging.max_file_size_mb),
            ("file-count", &logging.file_count),
            ("track-time", &logging.track_time),
        ] {
            note_ignored(warnings, "logging", key, value);
        }
    }
    let level = pick(
        overrides.log_level.clone().map(|l| (l, "--log-level")),
        env(ENV_LOG).map(|l| (l, ENV_LOG)),
        logging.and_then(|l| l.level.clone()),
        file_origin,
        DEFAULT_LOG_LEVEL.to_string(),
    );
    normalize_log_level(&level.value).ok_or_else(|| {
        invalid(
            "logging.level",
            &level.value,
            &level.origin,
            "expected off, error, warn, info, debug, trace (or log_err, log_warning, log_info, log_debug, ...)",
        )
    })
}

fn resolve_cache(
    section: &BlockCacheSection,
    overrides: &Overrides,
    file_origin: &Origin,
    warnings: &mut Vec<String>,
) -> Result<CacheOptions, ConfigError> {
    for (key, value) in [
        ("path", &section.path),
        ("disk-size-mb", &section.disk_size_mb),
        ("disk-timeout-sec", &section.disk_timeout_sec),
        ("prefetch-on-open", &section.prefetch_on_open),
        ("consistency", &section.consistency),
        ("cleanup-on-start", &section.cleanup_on_start),
    ] {
        note_ignored(warnings, "block_cache", key, value);
    }

    let block_mb = pick(
        overrides.block_size_mb.map(|v| (v, "--block-size-mb")),
        None,
        section.block_size_mb,
        file_origin,
        DEFAULT_BLOCK_SIZE_MB,
    );
    let block_size = block_size_bytes(block_mb.value).ok_or_else(|| {
        invalid(
            "block_cache.block-size-mb",
            block_mb.value,
            &block_mb.origin,
            "must be greater than 0 and at most 4000",
        )
    })?;

    let mem_mb = pick(
        overrides.mem_size_mb.map(|v| (v, "--mem-size-mb")),
        None,
        section.mem_size_mb,
        file_origin,
        DEFAULT_MEM_SIZE_MB,
    );
    let memory_bytes = mem_mb
        .value
        .checked_mul(MIB)
        .ok_or_else(|| invalid("block_cache.mem-size-mb", mem_mb.value, &mem_mb.origin, "too large"))?;
    let needed = block_size.saturating_mul(MIN_BLOCKS_IN_MEMORY);
    if memory_bytes < needed {
        return Err(invalid(
            "block_cache.mem-size-mb",
            mem_mb.value,
            &mem_mb.origin,
            &format!(
                "must hold at least {MIN_BLOCKS_IN_MEMORY} blocks of block-size-mb = {} ({} bytes needed)",
                block_mb.value, needed
            ),
        ));
    }

    let prefetch = pick(
        overrides.prefetch.map(|v| (v, "--prefetch")),
        None,
        section.prefetch,
        file_origin,
        DEFAULT_PREFETCH,
    );

    let parallelism = pick(
        overrides.parallelism.map(|v| (v, "--parallelism")),
        None,
        section.parallelism,
        file_origin,
        DEFAULT_PARALLELISM,
    );
    if !(1..=MAX_PARALLELISM).contains(&parallelism.value) {
        return Err(invalid(
            "block_cache.parallelism",
            parallelism.value,
            &parallelism.origin,
            "must be between 1 and 1024",
        ));
    }

    Ok(CacheOptions {
        block_size,
        memory_bytes,
        prefetch_blocks: prefetch.value,
        parallelism: parallelism.value,
        seed: startup_seed(),
        ..CacheOptions::default()
    })
}

/// Converts a block size in (possibly fractional) MiB to bytes, or `None`
/// when it is out of range or rounds to zero bytes.
fn block_size_bytes(mb: f64) -> Option<u64> {
    if !mb.is_finite() || mb <= 0.0 || mb > MAX_BLOCK_SIZE_MB {
        return None;
    }
    let bytes = (mb * MIB as f64).round();
    // In range by the check above: at most 4000 MiB.
    let bytes = bytes as u64;
    (bytes > 0).then_some(bytes)
}

#[allow(clippy::too_many_arguments)]
fn resolve_backend(
    local: Option<LocalSection>,
    azstorage: Option<AzstorageSection>,
    overrides: &Overrides,
    env: EnvLookup<'_>,
    file_origin: &Origin,
    cache: &mut CacheOptions,
    warnings: &mut Vec<String>,
) -> Result<Backend, ConfigError> {
    if let Some(dir) = &overrides.local_dir {
        if azstorage.is_some() {
            warnings.push("--local-dir given: the azstorage section is not used".to_string());
        }
        return Ok(Backend::Local { path: dir.clone() });
    }
    if let Some(local) = local {
        if azstorage.is_some() {
            return Err(ConfigError::Conflict(format!(
                "config file {}: both a local and an azstorage section; keep one",
                file_origin_path(file_origin)
            )));
        }
        let path = match local.path {
            Some(path) => path,
            None => default_local_path(env)?,
        };
        return Ok(Backend::Local { path });
    }
    if azstorage.is_none() && env(ENV_ACCOUNT).is_none() {
        let path = default_local_path(env)?;
        if let Origin::File(file) = file_origin {
            warnings.push(format!(
                "config file {} has no azstorage section: serving the local directory {} instead",
                file.display(),
                path.display()
            ));
        }
        return Ok(Backend::Local { path });
    }
    resolve_azure(azstorage.unwrap_or_default(), env, file_origin, cache, warnings)
}

fn file_origin_path(origin: &Origin) -> String {
    match origin {
        Origin::File(path) => path.display().to_string(),
        other => other.to_string(),
    }
}

/// Azure's rule for account names: 3 to 24 lowercase letters and digits.
pub fn valid_account_name(name: &str) -> bool {
    (3..=24).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Azure's rule for container names: 3 to 63 lowercase letters, digits and
/// single hyphens, starting and ending with a letter or digit.
pub fn valid_container_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && edge_ok(bytes.first())
        && edge_ok(bytes.last())
        && !name.contains("--")
}

/// Checks that `endpoint` is an absolute http(s) URL with a host and, if
/// given, a numeric port.
pub fn valid_endpoint(endpoint: &str) -> Result<(), &'static str> {
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("must not contain user information");
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => (host, Some(port)),
        _ => (authority, None),
    };
    if host.is_empty() {
        return Err("has no host name");
    }
    let host_ok = if host.starts_with('[') {
        host.ends_with(']')
    } else {
        host.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if !host_ok {
        return Err("has an invalid host name");
    }
    if let Some(port) = port {
        if port.parse::<u16>().is_err() {
            return Err("has an invalid port");
        }
    }
    if endpoint.chars().any(char::is_whitespace) {
        return Err("must not contain spaces");
    }
    Ok(())
}

#[cfg(not(feature = "azure"))]
fn resolve_azure(
    _section: AzstorageSection,
    _env: EnvLookup<'_>,
    _origin: &Origin,
    _cache: &mut CacheOptions,
    _warnings: &mut Vec<String>,
) -> Result<Backend, ConfigError> {
    Err(ConfigError::Unsupported(
        "this build of blobcache has no Azure support; use a local directory".to_string(),
    ))
}

#[cfg(feature = "azure")]
fn resolve_azure(
    section: AzstorageSection,
    env: EnvLookup<'_>,
    file_origin: &Origin,
    cache: &mut CacheOptions,
    warnings: &mut Vec<String>,
) -> Result<Backend, ConfigError> {
    for (key, value) in [
        ("block-size-mb", &section.block_size_mb),
        ("block-list-on-mount-sec", &section.block_list_on_mount_sec),
        ("max-concurrency", &section.max_concurrency),
        ("tier", &section.tier),
        ("retry-backoff-sec", &section.retry_backoff_sec),
        ("max-retry-delay-sec", &section.max_retry_delay_sec),
        ("virtual-directory", &section.virtual_directory),
        ("fail-unsupported-op", &section.fail_unsupported_op),
        ("update-md5", &section.update_md5),
        ("validate-md5", &section.validate_md5),
        ("sdk-trace", &section.sdk_trace),
        ("disable-compression", &section.disable_compression),
        ("honour-acl", &section.honour_acl),
        ("telemetry", &section.telemetry),
    ] {
        note_ignored(warnings, "azstorage", key, value);
    }

    if let Some(kind) = &section.kind {
        if kind != "block" {
            return Err(ConfigError::Unsupported(format!(
                "azstorage.type = {kind} ({file_origin}) is not supported; use block"
            )));
        }
    }
    if let Some(sub) = section.subdirectory.as_deref().filter(|s| !s.is_empty()) {
        return Err(ConfigError::Unsupported(format!(
            "azstorage.subdirectory = {sub} ({file_origin}) is not supported; mount the whole container"
        )));
    }

    let account = pick(
        None,
        env(ENV_ACCOUNT).map(|v| (v, ENV_ACCOUNT)),
        section.account_name,
        file_origin,
        String::new(),
    );
    if account.value.is_empty() {
        return Err(ConfigError::Missing {
            key: "azstorage.account-name".to_string(),
            hint: format!("set it in the config file or in {ENV_ACCOUNT}"),
        });
    }
    if !valid_account_name(&account.value) {
        return Err(invalid(
            "azstorage.account-name",
            &account.value,
            &account.origin,
            "must be 3 to 24 lowercase letters and digits",
        ));
    }

    let container = pick(
        None,
        env(ENV_CONTAINER).map(|v| (v, ENV_CONTAINER)),
        section.container,
        file_origin,
        String::new(),
    );
    if container.value.is_empty() {
        return Err(ConfigError::Missing {
            key: "azstorage.container".to_string(),
            hint: format!("set it in the config file or in {ENV_CONTAINER}"),
        });
    }
    if !valid_container_name(&container.value) {
        return Err(invalid(
            "azstorage.container",
            &container.value,
            &container.origin,
            "must be 3 to 63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit",
        ));
    }

    let endpoint = pick(
        None,
        env(ENV_BLOB_ENDPOINT).map(|v| (Some(v), ENV_BLOB_ENDPOINT)),
        section.endpoint.map(Some),
        file_origin,
        None,
    );
    let endpoint_value = match endpoint.value {
        Some(url) => {
            valid_endpoint(&url).map_err(|reason| invalid("azstorage.endpoint", &url, &endpoint.origin, reason))?;
            Some(url.trim_end_matches('/').to_string())
        }
        None if section.use_http == Some(true) => Some(format!("http://{}.blob.core.windows.net", account.value)),
        None => None,
    };

    let key = pick(
        None,
        env(ENV_ACCESS_KEY).map(|v| (Secret::new(v), ENV_ACCESS_KEY)),
        section.account_key,
        file_origin,
        Secret::new(""),
    );
    let sas = pick(
        None,
        env(ENV_SAS_TOKEN).map(|v| (Secret::new(v), ENV_SAS_TOKEN)),
        section.sas,
        file_origin,
        Secret::new(""),
    );
    let have_key = !key.value.expose().is_empty();
    let have_sas = !sas.value.expose().is_empty();
    let mode = pick(
        None,
        env(ENV_AUTH_TYPE).map(|v| (v, ENV_AUTH_TYPE)),
        section.mode,
        file_origin,
        String::new(),
    );
    let mode_value = match mode.value.to_ascii_lowercase().as_str() {
        "" if have_key => "key",
        "" if have_sas => "sas",
        "" => {
            return Err(ConfigError::Missing {
                key: "azstorage.account-key or azstorage.sas".to_string(),
                hint: format!("give a key (or {ENV_ACCESS_KEY}) or a SAS token (or {ENV_SAS_TOKEN})"),
            })
        }
        "key" => "key",
        "sas" => "sas",
        "msi" | "spn" | "azcli" | "workloadidentity" => {
            return Err(ConfigError::Unsupported(format!(
                "azstorage.mode = {} ({}) is not supported; use key or sas",
                mode.value, mode.origin
            )))
        }
        _ => {
            return Err(invalid(
                "azstorage.mode",
                &mode.value,
                &mode.origin,
                "expected key or sas",
            ))
        }
    };

    let credentials = if mode_value == "key" {
        if !have_key {
            return Err(ConfigError::Missing {
                key: "azstorage.account-key".to_string(),
                hint: format!("mode is key; set account-key or {ENV_ACCESS_KEY}"),
            });
        }
        use base64::Engine as _;
        if base64::engine::general_purpose::STANDARD
            .decode(key.value.expose().trim())
            .is_err()
        {
            return Err(invalid(
                "azstorage.account-key",
                "<redacted>",
                &key.origin,
                "is not valid base64",
            ));
        }
        AzureCredentials::AccountKey(key.value.expose().trim().to_string())
    } else {
        if !have_sas {
            return Err(ConfigError::Missing {
                key: "azstorage.sas".to_string(),
                hint: format!("mode is sas; set sas or {ENV_SAS_TOKEN}"),
            });
        }
        let token = sas.value.expose().trim().trim_start_matches('?');
        if !token.split('&').any(|part| part.starts_with("sig=")) {
            return Err(invalid(
                "azstorage.sas",
                "<redacted>",
                &sas.origin,
                "does not look like a SAS token (it has no sig= parameter)",
            ));
        }
        AzureCredentials::Sas(token.to_string())
    };

    if let Some(retries) = section.max_retries {
        cache.max_attempts = retries.saturating_add(1);
    }
    if let Some(timeout) = section.max_retry_timeout_sec {
        if timeout == 0 {
            return Err(invalid(
                "azstorage.max-retry-timeout-sec",
                timeout,
                file_origin,
                "must be greater than 0",
            ));
        }
        cache.request_timeout = Duration::from_secs(timeout);
    }

    Ok(Backend::Azure(AzureSettings {
        account: account.value,
        container: container.value,
        endpoint: endpoint_value,
        credentials,
    }))
}

#[cfg(test)]
mod tests;
