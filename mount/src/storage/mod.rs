//! The storage interface: what the cache needs from a blob service, and the
//! backends that provide it (local directory, in-memory, Azure).
//!
//! Every backend gives the same semantics, those of Azure block blobs:
//! blocks are staged under an id and only become visible when a block list
//! naming them is committed; a commit replaces the whole blob atomically and
//! gives it a new ETag; conditional operations fail with
//! [`StorageError::PreconditionFailed`] when the condition does not hold.

use async_trait::async_trait;
use bytes::Bytes;
use std::time::{Duration, SystemTime};

pub mod local;
pub mod memory;

#[cfg(feature = "azure")]
pub mod azure;

/// An opaque version tag of one committed state of a blob.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ETag(pub String);

/// Raw bytes of a block id (backends encode it as base64 on the wire).
/// All ids of one blob have the same length.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub Vec<u8>);

/// Properties of a committed blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobProperties {
    pub size: u64,
    pub etag: ETag,
    pub last_modified: SystemTime,
    /// A zero-length blob marking a directory (metadata `hdi_isfolder=true`).
    pub is_dir_marker: bool,
}

/// One committed block of a blob, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedBlock {
    pub id: BlockId,
    pub size: u64,
}

/// A condition on the current state of a blob for a write or a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// No condition.
    None,
    /// The blob must exist with exactly this ETag.
    IfMatch(ETag),
    /// The blob must not exist.
    IfNotExists,
}

/// An entry of a listing: a blob directly under the prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedBlob {
    /// Full blob name (including the prefix).
    pub name: String,
    pub properties: BlobProperties,
}

/// One level of a hierarchical listing (`prefix` + delimiter `/`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Blobs whose name has no `/` after the prefix, sorted by name.
    pub blobs: Vec<ListedBlob>,
    /// Sub-prefixes ending in `/` (virtual directories), sorted, without duplicates.
    pub prefixes: Vec<String>,
}

/// Errors from a storage backend. Only [`StorageError::NotFound`] means that a
/// blob is definitely gone; every other error leaves its existence unknown.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("blob not found: {0}")]
    NotFound(String),
    #[error("condition not met (the blob changed or already exists): {0}")]
    PreconditionFailed(String),
    #[error("access denied by storage (check the credentials): {0}")]
    Forbidden(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("storage is throttling requests: {message}")]
    Throttled {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("transient storage error: {0}")]
    Transient(String),
    #[error("storage request timed out")]
    Timeout,
    #[error("invalid request to storage: {0}")]
    Invalid(String),
    #[error("storage error: {0}")]
    Other(String),
}

impl StorageError {
    /// Whether retrying the same request may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StorageError::Throttled { .. } | StorageError::Transient(_) | StorageError::Timeout
        )
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

/// Longest block id the service accepts, in bytes before encoding.
const MAX_BLOCK_ID_LEN: usize = 64;

/// Refuses block ids the service would refuse, as every backend must.
fn check_block_id(id: &BlockId) -> StorageResult<()> {
    if id.0.is_empty() || id.0.len() > MAX_BLOCK_ID_LEN {
        return Err(StorageError::Invalid(format!(
            "block id must be 1 to {MAX_BLOCK_ID_LEN} bytes, got {}",
            id.0.len()
        )));
    }
    Ok(())
}

/// What the cache needs from a blob container. Blob names use `/` as the
/// directory separator and never start with `/`.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// A short human description, e.g. `local directory /srv/data`.
    fn describe(&self) -> String;

    /// Properties of a blob, or `NotFound`.
    async fn get_properties(&self, name: &str) -> StorageResult<BlobProperties>;

    /// The committed block list. A blob put in one piece (Put Blob) has an
    /// empty list even when it holds data.
    async fn get_block_list(&self, name: &str) -> StorageResult<Vec<CommittedBlock>>;

    /// Reads `buf.len()` bytes starting at `offset` into `buf` from the blob,
    /// which must satisfy `condition`. Returns the number of bytes read, which
    /// is less than `buf.len()` only at the end of the blob.
    async fn read_range(&self, name: &str, offset: u64, buf: &mut [u8], condition: &Condition) -> StorageResult<usize>;

    /// Stages an uncommitted block.
    async fn put_block(&self, name: &str, id: &BlockId, data: Bytes) -> StorageResult<()>;

    /// Commits the blob as the concatenation of the named blocks (each either
    /// staged or already committed to this blob), atomically. Returns the new ETag.
    async fn put_block_list(&self, name: &str, blocks: &[BlockId], condition: &Condition) -> StorageResult<ETag>;

    /// Creates or replaces a blob in one request (small blobs and directory markers).
    async fn put_blob(
        &self,
        name: &str,
        data: Bytes,
        is_dir_marker: bool,
        condition: &Condition,
    ) -> StorageResult<ETag>;

    /// Deletes a blob, or `NotFound`.
    async fn delete_blob(&self, name: &str) -> StorageResult<()>;

    /// One level of the hierarchy under `prefix` (empty, or ending in `/`).
    async fn list(&self, prefix: &str) -> StorageResult<Listing>;

    /// Copies a committed blob to a new name (replacing it), keeping its
    /// content; the copy's block list may differ from the source's.
    async fn copy_blob(&self, from: &str, to: &str) -> StorageResult<ETag>;

    /// Whether the container can be reached with the given credentials;
    /// used at mount time to fail early with a clear message.
    async fn check_access(&self) -> StorageResult<()>;
}
