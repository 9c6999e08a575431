//! Direct access to Azurite, around the mount rather than through it:
//! creating the container a test mounts, uploading blobs the way other Azure
//! clients do (a single Put Blob, or Put Block + Put Block List with blocks
//! of any sizes), and reading back content and block lists of blobs that
//! blobcache wrote, to check their layout.

use azure_storage::{CloudLocation, StorageCredentials};
use azure_storage_blobs::blob::{BlobBlockType, BlockList};
use azure_storage_blobs::prelude::{BlockId, BlockListType, ClientBuilder, ContainerClient};
use std::sync::atomic::{AtomicU32, Ordering};

/// The well-known development account of Azurite.
pub const ACCOUNT: &str = "devstoreaccount1";
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The blob endpoint, from `BLOBCACHE_AZURITE_ENDPOINT` (set by `scripts/test.sh`).
pub fn endpoint() -> String {
    match std::env::var("BLOBCACHE_AZURITE_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => endpoint.trim_end_matches('/').to_owned(),
        _ => panic!(
            "BLOBCACHE_AZURITE_ENDPOINT is not set. Run the end-to-end tests with \
             `scripts/test.sh`, or start Azurite with `scripts/azurite.sh start` and export \
             BLOBCACHE_AZURITE_ENDPOINT=http://127.0.0.1:10000/devstoreaccount1"
        ),
    }
}

/// One test's container in Azurite, with a runtime to drive the SDK from
/// synchronous test code.
pub struct Azurite {
    runtime: tokio::runtime::Runtime,
    container: ContainerClient,
    endpoint: String,
    name: String,
}

/// Container names are unique per process and test, so reruns and tests
/// never see each other's blobs.
fn container_name(label: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let label: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(30)
        .collect();
    format!("e2e-{label}-{}-{n}", std::process::id())
}

impl Azurite {
    pub fn new_container(label: &str) -> Azurite {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let endpoint = endpoint();
        let name = container_name(label);
        let container = ClientBuilder::with_location(
            CloudLocation::Custom {
                account: ACCOUNT.to_owned(),
                uri: endpoint.clone(),
            },
            StorageCredentials::access_key(ACCOUNT, ACCOUNT_KEY.to_owned()),
        )
        .container_client(name.clone());
        runtime
            .block_on(container.create().into_future())
            .unwrap_or_else(|e| panic!("create container {name} at {endpoint}: {e}"));
        Azurite {
            runtime,
            container,
            endpoint,
            name,
        }
    }

    pub fn container(&self) -> &str {
        &self.name
    }

    /// The `azstorage` section of a config file for this container.
    pub fn azstorage_yaml(&self, account_key: &str) -> String {
        azstorage_yaml(&self.endpoint, &self.name, account_key)
    }

    /// Uploads `data` as one Put Blob request.
    pub fn put_blob(&self, name: &str, data: Vec<u8>) {
        let blob = self.container.blob_client(name);
        self.runtime
            .block_on(blob.put_block_blob(data).into_future())
            .unwrap_or_else(|e| panic!("put blob {name}: {e}"));
    }

    /// Uploads `blocks` with Put Block each, then commits them with Put Block
    /// List, so the blob has exactly these blocks, whatever their sizes.
    pub fn put_blocks(&self, name: &str, blocks: &[Vec<u8>]) {
        let blob = self.container.blob_client(name);
        let mut list = BlockList::default();
        for (i, data) in blocks.iter().enumerate() {
            // Fixed-width ids: Azure wants all ids of a blob to be one length.
            let id = BlockId::new(format!("ext-{i:08}").into_bytes());
            self.runtime
                .block_on(blob.put_block(id.clone(), data.clone()).into_future())
                .unwrap_or_else(|e| panic!("put block {i} of {name}: {e}"));
            list.blocks.push(BlobBlockType::new_uncommitted(id));
        }
        self.runtime
            .block_on(blob.put_block_list(list).into_future())
            .unwrap_or_else(|e| panic!("put block list of {name}: {e}"));
    }

    /// Size of a blob from its properties.
    pub fn size(&self, name: &str) -> u64 {
        let blob = self.container.blob_client(name);
        self.runtime
            .block_on(blob.get_properties().into_future())
            .unwrap_or_else(|e| panic!("get properties of {name}: {e}"))
            .blob
            .properties
            .content_length
    }

    /// The whole content of a blob.
    pub fn get(&self, name: &str) -> Vec<u8> {
        // The SDK reads in ranges, and a range of an empty blob is refused (416).
        if self.size(name) == 0 {
            return Vec::new();
        }
        let blob = self.container.blob_client(name);
        self.runtime
            .block_on(blob.get_content())
            .unwrap_or_else(|e| panic!("get blob {name}: {e}"))
    }

    /// The committed blocks of a blob: (raw id, size), in order.
    pub fn committed_blocks(&self, name: &str) -> Vec<(Vec<u8>, u64)> {
        let blob = self.container.blob_client(name);
        let list = self
            .runtime
            .block_on(
                blob.get_block_list()
                    .block_list_type(BlockListType::Committed)
                    .into_future(),
            )
            .unwrap_or_else(|e| panic!("get block list of {name}: {e}"));
        list.block_with_size_list
            .blocks
            .into_iter()
            .filter_map(|block| match block.block_list_type {
                BlobBlockType::Committed(id) => Some((id.as_ref().to_vec(), block.size_in_bytes)),
                _ => None,
            })
            .collect()
    }
}

/// The `azstorage` section of a config file (blobfuse2 keys).
pub fn azstorage_yaml(endpoint: &str, container: &str, account_key: &str) -> String {
    format!(
        "azstorage:\n  type: block\n  account-name: {ACCOUNT}\n  account-key: {account_key}\n  \
         mode: key\n  endpoint: {endpoint}\n  container: {container}\n"
    )
}
