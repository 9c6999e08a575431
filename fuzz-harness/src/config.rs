//! The `config` target: YAML config files, command lines and environment
//! variables through parsing and resolution. Bad input must come back as an
//! error; a configuration that resolves must give a cache that can start.
//!
//! Input layout (easy to write seeds by hand): sections separated by a 0xFF
//! byte, which never occurs in UTF-8 text: the YAML text, then the command
//! line arguments after `blobcache` separated by NUL, then `NAME=value`
//! environment entries separated by NUL.

use blobcache::cli::{Cli, Command};
use blobcache::config::{self, Overrides};
use blobcache::storage::memory::MemoryStore;
use blobcache::BlobFs;
use clap::Parser;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Most command-line arguments taken from one input.
const MAX_ARGS: usize = 32;

pub fn run(data: &[u8]) {
    let data = crate::bounded(data);
    let mut sections = data.split(|&b| b == 0xFF);
    let yaml = String::from_utf8_lossy(sections.next().unwrap_or_default());
    let args: Vec<String> = sections
        .next()
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .take(MAX_ARGS)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let env: BTreeMap<String, String> = sections
        .next()
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let text = String::from_utf8_lossy(entry);
            let (name, value) = text.split_once('=')?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect();
    let lookup = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();

    let path = Path::new("/fuzz/config.yaml");
    let file = config::parse_config(&yaml, path);
    let overrides = parse_cli(&args).unwrap_or_default();
    for level in [overrides.log_level.as_deref(), Some(yaml.as_ref())]
        .into_iter()
        .flatten()
    {
        let _ = config::normalize_log_level(level);
    }
    let _ = config::valid_endpoint(&yaml);
    let _ = config::valid_account_name(&yaml);
    let _ = config::valid_container_name(&yaml);
    let Ok(file) = file else { return };
    let Ok(resolved) = config::resolve(file, Some(path), &overrides, &lookup) else {
        return;
    };
    // Whatever resolution accepts must be a cache that can start.
    let cache = resolved.cache.clone();
    if let Err(error) = BlobFs::new(Arc::new(MemoryStore::new()), cache) {
        panic!("resolved configuration {resolved:?} cannot start a cache: {error}");
    }
}

/// The overrides of a `mount` command line, through the real clap parser.
fn parse_cli(args: &[String]) -> Option<Overrides> {
    let argv = std::iter::once("blobcache".to_owned()).chain(args.iter().cloned());
    match Cli::try_parse_from(argv).ok()?.command {
        Command::Mount(mount) => Some(mount.overrides()),
        Command::Unmount(_) => None,
    }
}
