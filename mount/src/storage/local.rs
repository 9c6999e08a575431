//! Local directory backend: a placeholder with the final constructor, so
//! that the rest of the crate compiles until the real backend replaces it.

use super::{
    BlobProperties, BlobStore, BlockId, CommittedBlock, Condition, ETag, Listing, StorageError,
    StorageResult,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::path::PathBuf;

/// A container kept in a local directory.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn open(root: impl Into<PathBuf>) -> StorageResult<LocalStore> {
        Ok(LocalStore { root: root.into() })
    }
}

fn missing(name: &str) -> StorageError {
    StorageError::Other(format!("{name}: this backend is a placeholder"))
}

#[async_trait]
impl BlobStore for LocalStore {
    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
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
