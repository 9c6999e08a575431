//! In-memory backend: a placeholder with the final constructor, so that the
//! rest of the crate compiles until the real backend replaces it.

use super::{
    BlobProperties, BlobStore, BlockId, CommittedBlock, Condition, ETag, Listing, StorageError,
    StorageResult,
};
use async_trait::async_trait;
use bytes::Bytes;

/// A container held in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore {}
    }
}

fn missing(name: &str) -> StorageError {
    StorageError::Other(format!("{name}: this backend is a placeholder"))
}

#[async_trait]
impl BlobStore for MemoryStore {
    fn describe(&self) -> String {
        "in-memory container".to_string()
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
        Ok(())
    }
}
