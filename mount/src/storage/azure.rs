//! Azure Blob Storage backend: a placeholder with the final constructor and
//! settings, so that the rest of the crate compiles until the real backend
//! replaces it.

use super::{
    BlobProperties, BlobStore, BlockId, CommittedBlock, Condition, ETag, Listing, StorageError,
    StorageResult,
};
use async_trait::async_trait;
use bytes::Bytes;

/// How to authenticate to the storage account.
pub enum AzureCredentials {
    AccountKey(String),
    Sas(String),
}

/// Where the container is and how to reach it.
pub struct AzureSettings {
    pub account: String,
    pub container: String,
    pub endpoint: Option<String>,
    pub credentials: AzureCredentials,
}

/// A container in an Azure storage account.
pub struct AzureStore {
    account: String,
    container: String,
}

impl AzureStore {
    pub fn new(settings: AzureSettings) -> StorageResult<AzureStore> {
        Ok(AzureStore {
            account: settings.account,
            container: settings.container,
        })
    }
}

fn missing(name: &str) -> StorageError {
    StorageError::Other(format!("{name}: this backend is a placeholder"))
}

#[async_trait]
impl BlobStore for AzureStore {
    fn describe(&self) -> String {
        format!("Azure container {}/{}", self.account, self.container)
    }

    async fn get_properties(&self, name: &str) -> StorageResult<BlobProperties> {
        Err(missing(name))
    }
    async fn get_block_list(&self, name: &str) -> StorageResult<Vec<CommittedBlock>> {
        Err(missing(name))
    }
    async fn read_range(
        &self,
        name: &str,
        _offset: u64,
        _buf: &mut [u8],
        _condition: &Condition,
    ) -> StorageResult<usize> {
        Err(missing(name))
    }
    async fn put_block(&self, name: &str, _id: &BlockId, _data: Bytes) -> StorageResult<()> {
        Err(missing(name))
    }
    async fn put_block_list(
        &self,
        name: &str,
        _blocks: &[BlockId],
        _condition: &Condition,
    ) -> StorageResult<ETag> {
        Err(missing(name))
    }
    async fn put_blob(
        &self,
        name: &str,
        _data: Bytes,
        _is_dir_marker: bool,
        _condition: &Condition,
    ) -> StorageResult<ETag> {
        Err(missing(name))
    }
    async fn delete_blob(&self, name: &str) -> StorageResult<()> {
        Err(missing(name))
    }
    async fn list(&self, prefix: &str) -> StorageResult<Listing> {
        Err(missing(prefix))
    }
    async fn copy_blob(&self, from: &str, _to: &str) -> StorageResult<ETag> {
        Err(missing(from))
    }
    async fn check_access(&self) -> StorageResult<()> {
        Err(StorageError::Other(
            "the Azure backend is a placeholder".to_string(),
        ))
    }
}
