//! Runs the storage conformance cases against every backend: in memory,
//! in memory with shaping, a local directory, and Azure (Azurite) when
//! `BLOBCACHE_AZURITE_ENDPOINT` is set.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod conformance;

use blobcache::storage::local::LocalStore;
use blobcache::storage::memory::MemoryStore;
use blobcache::storage::BlobStore;
use std::sync::Arc;
use std::time::Duration;

/// A store for one test, with whatever must live as long as it.
struct Backend {
    store: Arc<dyn BlobStore>,
    _dir: Option<tempfile::TempDir>,
    #[cfg(feature = "azure")]
    container: Option<Arc<blobcache::storage::azure::AzureStore>>,
}

impl Backend {
    fn new(store: impl BlobStore, dir: Option<tempfile::TempDir>) -> Backend {
        Backend {
            store: Arc::new(store),
            _dir: dir,
            #[cfg(feature = "azure")]
            container: None,
        }
    }

    async fn finish(self) {
        #[cfg(feature = "azure")]
        if let Some(container) = self.container {
            container.delete_container().await.unwrap();
        }
    }
}

async fn memory() -> Option<Backend> {
    Some(Backend::new(MemoryStore::new(), None))
}

async fn shaped_memory() -> Option<Backend> {
    let store = MemoryStore::with_shaping(Duration::from_micros(200), Some(200 << 20));
    Some(Backend::new(store, None))
}

async fn local() -> Option<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("container")).unwrap();
    Some(Backend::new(store, Some(dir)))
}

#[cfg(feature = "azure")]
async fn azurite() -> Option<Backend> {
    use blobcache::storage::azure::{AzureCredentials, AzureSettings, AzureStore};
    use std::io::Write;
    use std::sync::atomic::{AtomicU32, Ordering};

    const AZURITE_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    static CONTAINERS: AtomicU32 = AtomicU32::new(0);
    static SKIP_NOTICE: std::sync::Once = std::sync::Once::new();

    let Ok(endpoint) = std::env::var("BLOBCACHE_AZURITE_ENDPOINT") else {
        SKIP_NOTICE.call_once(|| {
            // Written past the test harness's capture so that it shows.
            let _ = writeln!(
                std::io::stderr(),
                "Azure conformance suite skipped: BLOBCACHE_AZURITE_ENDPOINT is not set"
            );
        });
        return None;
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let container = format!(
        "conformance-{stamp}-{}-{}",
        std::process::id(),
        CONTAINERS.fetch_add(1, Ordering::Relaxed)
    );
    let store = AzureStore::new(AzureSettings {
        account: "devstoreaccount1".to_owned(),
        container,
        endpoint: Some(endpoint),
        credentials: AzureCredentials::AccountKey(AZURITE_KEY.to_owned()),
    })
    .unwrap();
    store.create_container().await.unwrap();
    let store = Arc::new(store);
    Some(Backend {
        store: store.clone(),
        _dir: None,
        container: Some(store),
    })
}

macro_rules! suite {
    ($backend:ident, $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $case() {
                    if let Some(backend) = super::$backend().await {
                        super::conformance::$case(&*backend.store).await;
                        backend.finish().await;
                    }
                }
            )*
        }
    };
}

macro_rules! all_cases {
    ($backend:ident) => {
        suite!(
            $backend,
            stage_and_commit,
            reuse_committed_blocks,
            conditions,
            etag_changes_on_every_commit,
            ranged_reads,
            block_list_round_trip,
            listing,
            delete,
            copy,
            not_found,
            mismatched_id_lengths,
            hundred_blocks,
            large_blocks,
            check_access,
        );
    };
}

all_cases!(memory);
all_cases!(shaped_memory);
all_cases!(local);
#[cfg(feature = "azure")]
all_cases!(azurite);
