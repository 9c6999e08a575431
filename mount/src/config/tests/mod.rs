use super::*;
use std::collections::BTreeMap;

const KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |name: &str| map.get(name).cloned()
}

fn home_env() -> impl Fn(&str) -> Option<String> {
    env_of(&[("HOME", "/home/u")])
}

fn resolve_text(text: &str, overrides: &Overrides, env: EnvLookup<'_>) -> Result<ResolvedConfig, ConfigError> {
    let path = Path::new("/etc/blobcache.yaml");
    resolve(parse_config(text, path)?, Some(path), overrides, env)
}

fn err_text(text: &str) -> String {
    match resolve_text(text, &Overrides::default(), &home_env()) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

const GOOD: &str = r#"
allow-other: true
logging:
  type: base
  level: log_debug
components:
  - libfuse
  - block_cache
  - attr_cache
  - azstorage
libfuse:
  attribute-expiration-sec: 30
  entry-expiration-sec: 40
  negative-entry-expiration-sec: 5
block_cache:
  block-size-mb: 8
  mem-size-mb: 512
  prefetch: 20
  parallelism: 64
  path: /tmp/bc
  disk-size-mb: 1000
attr_cache:
  timeout-sec: 7200
azstorage:
  type: block
  account-name: devstoreaccount1
  container: my-container
  endpoint: http://127.0.0.1:10000/devstoreaccount1
  mode: key
  account-key: KEYPLACEHOLDER
"#;

fn good() -> String {
    GOOD.replace("KEYPLACEHOLDER", KEY)
}

#[test]
fn good_file_resolves() {
    let c = resolve_text(&good(), &Overrides::default(), &home_env()).unwrap();
    assert_eq!(c.cache.block_size, 8 << 20);
    assert_eq!(c.cache.memory_bytes, 512 << 20);
    assert_eq!(c.cache.prefetch_blocks, 20);
    assert_eq!(c.cache.parallelism, 64);
    assert_eq!(c.cache.attribute_timeout, Duration::from_secs(30));
    assert_eq!(c.attribute_timeout, Duration::from_secs(30));
    assert_eq!(c.entry_timeout, Duration::from_secs(40));
    assert_eq!(c.negative_entry_timeout, Duration::from_secs(5));
    assert!(c.allow_other);
    assert_eq!(c.log_filter, "debug");
    match &c.backend {
        Backend::Azure(s) => {
            assert_eq!(s.account, "devstoreaccount1");
            assert_eq!(s.container, "my-container");
            assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:10000/devstoreaccount1"));
            assert!(matches!(&s.credentials, AzureCredentials::AccountKey(k) if k == KEY));
        }
        other => panic!("unexpected backend {other:?}"),
    }
    let warnings = c.warnings.join("\n");
    assert!(warnings.contains("block_cache.path"), "{warnings}");
    assert!(warnings.contains("block_cache.disk-size-mb"), "{warnings}");
    assert!(warnings.contains("attr_cache.timeout-sec"), "{warnings}");
}

#[test]
fn secrets_are_not_in_debug_output() {
    let c = resolve_text(&good(), &Overrides::default(), &home_env()).unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains(KEY), "{debug}");
    assert!(!debug.contains("Eby8"), "{debug}");
    let sas = Secret::new("sv=2020&sig=abc");
    assert_eq!(format!("{sas:?}"), "<redacted>");
}

#[test]
fn defaults_without_file_or_env_are_local() {
    let c = resolve(ConfigFile::default(), None, &Overrides::default(), &home_env()).unwrap();
    assert_eq!(c.cache.block_size, 16 << 20);
    assert_eq!(c.cache.memory_bytes, 1 << 30);
    assert_eq!(c.cache.prefetch_blocks, 11);
    assert_eq!(c.cache.parallelism, 32);
    assert_eq!(c.log_filter, "info");
    assert!(!c.allow_other);
    match c.backend {
        Backend::Local { path } => assert_eq!(path, PathBuf::from("/home/u/.local/share/blobcache/containers/default")),
        other => panic!("unexpected backend {other:?}"),
    }
}

#[test]
fn home_directory_precedence() {
    let env = env_of(&[("HOME", "/h"), ("XDG_DATA_HOME", "/xdg")]);
    assert_eq!(blobcache_home(&env).unwrap(), PathBuf::from("/xdg/blobcache"));
    let env = env_of(&[("HOME", "/h"), ("XDG_DATA_HOME", "/xdg"), (ENV_HOME, "/bc")]);
    assert_eq!(blobcache_home(&env).unwrap(), PathBuf::from("/bc"));
    assert!(matches!(blobcache_home(&env_of(&[])), Err(ConfigError::NoHome)));
}

#[test]
fn empty_file_is_fine() {
    let c = resolve_text("\n# nothing\n", &Overrides::default(), &home_env()).unwrap();
    assert!(matches!(c.backend, Backend::Local { .. }));
}

#[test]
fn unknown_key_names_key_and_file() {
    let e = err_text("block_cache:\n  blok-size-mb: 4\n");
    assert!(e.contains("blok-size-mb"), "{e}");
    assert!(e.contains("/etc/blobcache.yaml"), "{e}");
    let e = err_text("no-such-section: 1\n");
    assert!(e.contains("no-such-section"), "{e}");
    let e = err_text("azstorage:\n  acount-name: x\n");
    assert!(e.contains("acount-name"), "{e}");
}

#[test]
fn wrong_type_names_key() {
    let e = err_text("block_cache:\n  mem-size-mb: lots\n");
    assert!(e.contains("mem-size-mb"), "{e}");
    assert!(e.contains("lots"), "{e}");
}

#[test]
fn block_size_validation_names_value() {
    for bad in ["0", "-1", "4001"] {
        let e = err_text(&format!("block_cache:\n  block-size-mb: {bad}\n"));
        assert!(e.contains("block-size-mb"), "{e}");
        assert!(e.contains(&format!("= {bad}")), "{e}");
        assert!(e.contains("/etc/blobcache.yaml"), "{e}");
    }
    let c = resolve_text(
        "block_cache:\n  block-size-mb: 0.25\n  mem-size-mb: 1\n",
        &Overrides::default(),
        &home_env(),
    )
    .unwrap();
    assert_eq!(c.cache.block_size, 256 << 10);
}

#[test]
fn memory_must_hold_two_blocks() {
    let e = err_text("block_cache:\n  block-size-mb: 16\n  mem-size-mb: 16\n");
    assert!(e.contains("mem-size-mb = 16"), "{e}");
    assert!(e.contains("at least 2 blocks"), "{e}");
    let e = err_text("block_cache:\n  block-size-mb: 16\n  mem-size-mb: 8\n");
    assert!(e.contains("mem-size-mb = 8"), "{e}");
    assert!(resolve_text(
        "block_cache:\n  block-size-mb: 16\n  mem-size-mb: 32\n",
        &Overrides::default(),
        &home_env()
    )
    .is_ok());
}

#[test]
fn parallelism_range() {
    for bad in ["0", "1025"] {
        let e = err_text(&format!("block_cache:\n  parallelism: {bad}\n"));
        assert!(e.contains(&format!("parallelism = {bad}")), "{e}");
    }
    assert!(resolve_text(
        "block_cache:\n  parallelism: 1024\n",
        &Overrides::default(),
        &home_env()
    )
    .is_ok());
}

fn azure(extra: &str) -> String {
    format!("azstorage:\n  account-name: acct1\n  container: data\n{extra}")
}

#[test]
fn mode_key_needs_key_and_sas_needs_sas() {
    let e = err_text(&azure("  mode: key\n"));
    assert!(e.contains("azstorage.account-key"), "{e}");
    let e = err_text(&azure("  mode: sas\n"));
    assert!(e.contains("azstorage.sas"), "{e}");
    let e = err_text(&azure(""));
    assert!(e.contains("account-key") && e.contains("sas"), "{e}");
    let e = err_text(&azure("  mode: token\n  sas: sig=x\n"));
    assert!(e.contains("azstorage.mode = token"), "{e}");
    let e = err_text(&azure("  mode: msi\n"));
    assert!(e.contains("msi") && e.contains("not supported"), "{e}");
}

#[test]
fn sas_mode_resolves_and_is_validated() {
    let c = resolve_text(
        &azure("  mode: sas\n  sas: \"?sv=2022-11-02&sig=abc%3D\"\n"),
        &Overrides::default(),
        &home_env(),
    )
    .unwrap();
    match c.backend {
        Backend::Azure(s) => {
            assert!(matches!(&s.credentials, AzureCredentials::Sas(t) if t == "sv=2022-11-02&sig=abc%3D"));
            assert_eq!(s.endpoint, None);
        }
        other => panic!("unexpected backend {other:?}"),
    }
    let e = err_text(&azure("  sas: \"sv=2022-11-02\"\n"));
    assert!(e.contains("azstorage.sas") && e.contains("sig="), "{e}");
    assert!(!e.contains("sv=2022"), "secret leaked: {e}");
}

#[test]
fn bad_key_is_reported_without_the_key() {
    let e = err_text(&azure("  account-key: \"not base64 !!\"\n"));
    assert!(e.contains("azstorage.account-key") && e.contains("base64"), "{e}");
    assert!(!e.contains("not base64 !!"), "secret leaked: {e}");
}

#[test]
fn container_name_rules() {
    for bad in [
        "ab",
        "Data",
        "has_underscore",
        "-lead",
        "trail-",
        "dou--ble",
        &"x".repeat(64),
    ] {
        let text = format!("azstorage:\n  account-name: acct1\n  container: \"{bad}\"\n  account-key: {KEY}\n");
        let e = err_text(&text);
        assert!(e.contains(&format!("azstorage.container = {bad}")), "{e}");
    }
    assert!(valid_container_name("abc"));
    assert!(valid_container_name("a-b-c-1"));
    assert!(valid_container_name(&"x".repeat(63)));
}

#[test]
fn account_name_rules() {
    let e = err_text(&format!(
        "azstorage:\n  account-name: My_Account\n  container: data\n  account-key: {KEY}\n"
    ));
    assert!(e.contains("azstorage.account-name = My_Account"), "{e}");
}

#[test]
fn endpoint_must_be_http_url() {
    for bad in [
        "127.0.0.1:10000",
        "ftp://host",
        "http://",
        "http://host:port/x",
        "https://ho st",
    ] {
        let e = err_text(&azure(&format!("  account-key: {KEY}\n  endpoint: \"{bad}\"\n")));
        assert!(e.contains(&format!("azstorage.endpoint = {bad}")), "{e}");
    }
    for good in [
        "https://acct1.blob.core.windows.net",
        "http://127.0.0.1:10000/devstoreaccount1",
        "http://[::1]:10000/devstoreaccount1",
        "http://localhost/",
    ] {
        assert_eq!(valid_endpoint(good), Ok(()), "{good}");
    }
}

#[test]
fn use_http_sets_default_endpoint() {
    let c = resolve_text(
        &azure(&format!("  account-key: {KEY}\n  use-http: true\n")),
        &Overrides::default(),
        &home_env(),
    )
    .unwrap();
    match c.backend {
        Backend::Azure(s) => assert_eq!(s.endpoint.as_deref(), Some("http://acct1.blob.core.windows.net")),
        other => panic!("unexpected backend {other:?}"),
    }
}

#[test]
fn env_fills_azure_without_file() {
    let env = env_of(&[
        ("HOME", "/h"),
        (ENV_ACCOUNT, "envacct"),
        (ENV_CONTAINER, "envcont"),
        (ENV_ACCESS_KEY, KEY),
        (ENV_BLOB_ENDPOINT, "http://127.0.0.1:10000/envacct"),
    ]);
    let c = resolve(ConfigFile::default(), None, &Overrides::default(), &env).unwrap();
    match c.backend {
        Backend::Azure(s) => {
            assert_eq!(s.account, "envacct");
            assert_eq!(s.container, "envcont");
            assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:10000/envacct"));
            assert!(matches!(&s.credentials, AzureCredentials::AccountKey(_)));
        }
        other => panic!("unexpected backend {other:?}"),
    }
}

#[test]
fn env_overrides_file() {
    let env = env_of(&[
        ("HOME", "/h"),
        (ENV_ACCOUNT, "envacct"),
        (ENV_CONTAINER, "envcont"),
        (ENV_SAS_TOKEN, "sv=1&sig=zz"),
        (ENV_AUTH_TYPE, "sas"),
    ]);
    let c = resolve_text(&good(), &Overrides::default(), &env).unwrap();
    match c.backend {
        Backend::Azure(s) => {
            assert_eq!(s.account, "envacct");
            assert_eq!(s.container, "envcont");
            assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:10000/devstoreaccount1"));
            assert!(matches!(&s.credentials, AzureCredentials::Sas(t) if t == "sv=1&sig=zz"));
        }
        other => panic!("unexpected backend {other:?}"),
    }
}

#[test]
fn env_errors_name_the_variable() {
    let env = env_of(&[
        ("HOME", "/h"),
        (ENV_ACCOUNT, "acct1"),
        (ENV_CONTAINER, "Bad_Name"),
        (ENV_ACCESS_KEY, KEY),
    ]);
    let e = resolve(ConfigFile::default(), None, &Overrides::default(), &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("Bad_Name") && e.contains(ENV_CONTAINER), "{e}");
    let env = env_of(&[("HOME", "/h"), (ENV_ACCOUNT, "acct1"), (ENV_ACCESS_KEY, KEY)]);
    let e = resolve(ConfigFile::default(), None, &Overrides::default(), &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("azstorage.container") && e.contains(ENV_CONTAINER), "{e}");
}

#[test]
fn flags_override_file() {
    let overrides = Overrides {
        block_size_mb: Some(4.0),
        mem_size_mb: Some(64),
        prefetch: Some(3),
        parallelism: Some(7),
        allow_other: true,
        log_level: Some("warn".into()),
        ..Overrides::default()
    };
    let c = resolve_text(&good(), &overrides, &home_env()).unwrap();
    assert_eq!(c.cache.block_size, 4 << 20);
    assert_eq!(c.cache.memory_bytes, 64 << 20);
    assert_eq!(c.cache.prefetch_blocks, 3);
    assert_eq!(c.cache.parallelism, 7);
    assert_eq!(c.log_filter, "warn");
    let bad = Overrides {
        block_size_mb: Some(0.0),
        ..Overrides::default()
    };
    let e = resolve_text(&good(), &bad, &home_env()).unwrap_err().to_string();
    assert!(e.contains("--block-size-mb") && e.contains("= 0"), "{e}");
}

#[test]
fn local_dir_wins_over_azure() {
    let overrides = Overrides {
        local_dir: Some("/srv/x".into()),
        ..Overrides::default()
    };
    let c = resolve_text(&good(), &overrides, &home_env()).unwrap();
    assert!(matches!(c.backend, Backend::Local { ref path } if path == Path::new("/srv/x")));
}

#[test]
fn local_section() {
    let c = resolve_text("local:\n  path: /data/c\n", &Overrides::default(), &home_env()).unwrap();
    assert!(matches!(c.backend, Backend::Local { ref path } if path == Path::new("/data/c")));
    let e = err_text(&format!(
        "local:\n  path: /data/c\n{}",
        azure(&format!("  account-key: {KEY}\n"))
    ));
    assert!(e.contains("both"), "{e}");
}

#[test]
fn components_and_logging() {
    let e = err_text("components:\n  - libfuse\n  - turbo\n");
    assert!(e.contains("components = turbo"), "{e}");
    let e = err_text("logging:\n  level: loud\n");
    assert!(e.contains("logging.level = loud"), "{e}");
    let e = err_text("logging:\n  type: journald\n");
    assert!(e.contains("logging.type = journald"), "{e}");
    assert_eq!(normalize_log_level("LOG_WARNING").as_deref(), Some("warn"));
    assert_eq!(
        normalize_log_level("blobcache=debug,fuser=warn").as_deref(),
        Some("blobcache=debug,fuser=warn")
    );
    let env = env_of(&[("HOME", "/h"), (ENV_LOG, "trace")]);
    let c = resolve_text("logging:\n  level: log_err\n", &Overrides::default(), &env).unwrap();
    assert_eq!(c.log_filter, "trace");
}

#[test]
fn unsupported_azure_settings() {
    let e = err_text(&azure(&format!("  account-key: {KEY}\n  type: adls\n")));
    assert!(e.contains("azstorage.type = adls"), "{e}");
    let e = err_text(&azure(&format!("  account-key: {KEY}\n  subdirectory: a/b\n")));
    assert!(e.contains("subdirectory = a/b"), "{e}");
}

#[test]
fn retries_map_to_cache_options() {
    let c = resolve_text(
        &azure(&format!(
            "  account-key: {KEY}\n  max-retries: 2\n  max-retry-timeout-sec: 9\n"
        )),
        &Overrides::default(),
        &home_env(),
    )
    .unwrap();
    assert_eq!(c.cache.max_attempts, 3);
    assert_eq!(c.cache.request_timeout, Duration::from_secs(9));
}

#[test]
fn missing_file_names_it() {
    let e = load(
        Some(Path::new("/nonexistent/conf.yaml")),
        &Overrides::default(),
        &home_env(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/nonexistent/conf.yaml"), "{e}");
}

#[test]
fn seeds_differ() {
    assert_ne!(startup_seed(), startup_seed());
}
