//! An in-memory container with the semantics of Azure block blobs, for tests
//! and simulation, with optional latency and bandwidth shaping so that the
//! cache can be exercised against a slow store.

use super::{
    BlobProperties, BlobStore, BlockId, CommittedBlock, Condition, ETag, ListedBlob, Listing, StorageError,
    StorageResult,
};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Azure refuses block lists longer than this.
const MAX_BLOCKS_PER_BLOB: usize = 50_000;

/// One committed version of a blob.
#[derive(Clone, Debug)]
struct Committed {
    data: Bytes,
    /// Block ids with the range of `data` each one covers.
    blocks: Vec<(BlockId, std::ops::Range<usize>)>,
    etag: ETag,
    last_modified: SystemTime,
    is_dir_marker: bool,
}

impl Committed {
    fn properties(&self) -> BlobProperties {
        BlobProperties {
            size: u64::try_from(self.data.len()).unwrap_or(u64::MAX),
            etag: self.etag.clone(),
            last_modified: self.last_modified,
            is_dir_marker: self.is_dir_marker,
        }
    }

    fn block(&self, id: &BlockId) -> Option<Bytes> {
        self.blocks
            .iter()
            .find(|(block_id, _)| block_id == id)
            .and_then(|(_, range)| self.data.get(range.clone()))
            .map(|slice| self.data.slice_ref(slice))
    }
}

/// A blob name as Azure sees it: staged blocks can exist before (and
/// without) any committed version.
#[derive(Debug, Default)]
struct Entry {
    committed: Option<Committed>,
    uncommitted: BTreeMap<BlockId, Bytes>,
}

#[derive(Debug, Default)]
struct State {
    blobs: BTreeMap<String, Entry>,
    etag_counter: u64,
}

impl State {
    fn next_etag(&mut self) -> ETag {
        self.etag_counter = self.etag_counter.saturating_add(1);
        ETag(format!("\"0x{:016X}\"", self.etag_counter))
    }

    fn committed(&self, name: &str) -> Option<&Committed> {
        self.blobs.get(name).and_then(|e| e.committed.as_ref())
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Shaping {
    latency: Duration,
    bytes_per_sec: Option<u64>,
}

impl Shaping {
    fn transfer_time(&self, bytes: usize) -> Duration {
        let Some(rate) = self.bytes_per_sec.filter(|r| *r > 0) else {
            return Duration::ZERO;
        };
        let nanos = u128::try_from(bytes)
            .unwrap_or(u128::MAX)
            .saturating_mul(1_000_000_000)
            .checked_div(u128::from(rate))
            .unwrap_or(0);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Half the latency is spent before the request takes effect and half
    /// after, so that concurrent requests can interleave as they would on
    /// a network; bodies take their transfer time on their side of it.
    fn request_delay(&self, request_bytes: usize) -> Duration {
        self.half_latency().saturating_add(self.transfer_time(request_bytes))
    }

    fn half_latency(&self) -> Duration {
        self.latency.checked_div(2).unwrap_or_default()
    }

    fn response_delay(&self, response_bytes: usize) -> Duration {
        self.latency
            .saturating_sub(self.half_latency())
            .saturating_add(self.transfer_time(response_bytes))
    }
}

/// An in-memory blob container.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    shaping: Shaping,
}

fn check_condition(
    name: &str,
    current: Option<&Committed>,
    condition: &Condition,
    for_read: bool,
) -> StorageResult<()> {
    match (condition, current) {
        (Condition::None, _) => Ok(()),
        (Condition::IfMatch(expected), Some(c)) if &c.etag == expected => Ok(()),
        (Condition::IfMatch(_), None) if for_read => Err(StorageError::NotFound(name.to_owned())),
        (Condition::IfMatch(expected), _) => Err(StorageError::PreconditionFailed(format!(
            "{name} does not have ETag {}",
            expected.0
        ))),
        (Condition::IfNotExists, None) if for_read => Err(StorageError::NotFound(name.to_owned())),
        (Condition::IfNotExists, None) => Ok(()),
        (Condition::IfNotExists, Some(_)) => Err(StorageError::PreconditionFailed(format!("{name} already exists"))),
    }
}

fn check_name(name: &str) -> StorageResult<()> {
    if name.is_empty() || name.starts_with('/') {
        return Err(StorageError::Invalid(format!("invalid blob name {name:?}")));
    }
    Ok(())
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// A store whose every request takes `latency`, plus the time to move its
    /// body at `bytes_per_sec` when given (each request gets that rate for
    /// itself, as one HTTP stream would).
    pub fn with_shaping(latency: Duration, bytes_per_sec: Option<u64>) -> MemoryStore {
        MemoryStore {
            state: Mutex::default(),
            shaping: Shaping { latency, bytes_per_sec },
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters to a test double, so carry on.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn delay(duration: Duration) {
        if !duration.is_zero() {
            tokio::time::sleep(duration).await;
        }
    }

    async fn before(&self, request_bytes: usize) {
        Self::delay(self.shaping.request_delay(request_bytes)).await;
    }

    async fn after(&self, response_bytes: usize) {
        Self::delay(self.shaping.response_delay(response_bytes)).await;
    }

    fn commit(
        state: &mut State,
        name: &str,
        data: Bytes,
        blocks: Vec<(BlockId, std::ops::Range<usize>)>,
        is_dir_marker: bool,
    ) -> ETag {
        let etag = state.next_etag();
        let entry = state.blobs.entry(name.to_owned()).or_default();
        entry.uncommitted.clear();
        entry.committed = Some(Committed {
            data,
            blocks,
            etag: etag.clone(),
            last_modified: SystemTime::now(),
            is_dir_marker,
        });
        etag
    }
}

#[async_trait]
impl BlobStore for MemoryStore {
    fn describe(&self) -> String {
        "in-memory container".to_owned()
    }

    async fn get_properties(&self, name: &str) -> StorageResult<BlobProperties> {
        self.before(0).await;
        let result = self
            .lock()
            .committed(name)
            .map(Committed::properties)
            .ok_or_else(|| StorageError::NotFound(name.to_owned()));
        self.after(0).await;
        result
    }

    async fn get_block_list(&self, name: &str) -> StorageResult<Vec<CommittedBlock>> {
        self.before(0).await;
        let result = self
            .lock()
            .committed(name)
            .map(|c| {
                c.blocks
                    .iter()
                    .map(|(id, range)| CommittedBlock {
                        id: id.clone(),
                        size: u64::try_from(range.len()).unwrap_or(u64::MAX),
                    })
                    .collect()
            })
            .ok_or_else(|| StorageError::NotFound(name.to_owned()));
        self.after(0).await;
        result
    }

    async fn read_range(&self, name: &str, offset: u64, buf: &mut [u8], condition: &Condition) -> StorageResult<usize> {
        self.before(0).await;
        let data = {
            let state = self.lock();
            let current = state.committed(name);
            check_condition(name, current, condition, true)?;
            let current = current.ok_or_else(|| StorageError::NotFound(name.to_owned()))?;
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(current.data.len());
            let end = start.saturating_add(buf.len()).min(current.data.len());
            current.data.slice(start..end)
        };
        self.after(data.len()).await;
        let dest = buf
            .get_mut(..data.len())
            .ok_or_else(|| StorageError::Other("read longer than the buffer".to_owned()))?;
        dest.copy_from_slice(&data);
        Ok(data.len())
    }

    async fn put_block(&self, name: &str, id: &BlockId, data: Bytes) -> StorageResult<()> {
        check_name(name)?;
        super::check_block_id(id)?;
        self.before(data.len()).await;
        {
            let mut state = self.lock();
            let entry = state.blobs.entry(name.to_owned()).or_default();
            let existing_len = entry
                .uncommitted
                .keys()
                .next()
                .or_else(|| {
                    entry
                        .committed
                        .as_ref()
                        .and_then(|c| c.blocks.first().map(|(id, _)| id))
                })
                .map(|other| other.0.len());
            if let Some(len) = existing_len.filter(|len| *len != id.0.len()) {
                return Err(StorageError::Invalid(format!(
                    "block id of {} bytes for {name}, whose other block ids have {len}",
                    id.0.len()
                )));
            }
            entry.uncommitted.insert(id.clone(), data);
        }
        self.after(0).await;
        Ok(())
    }

    async fn put_block_list(&self, name: &str, blocks: &[BlockId], condition: &Condition) -> StorageResult<ETag> {
        check_name(name)?;
        if blocks.len() > MAX_BLOCKS_PER_BLOB {
            return Err(StorageError::Invalid(format!(
                "{} blocks for {name}, more than {MAX_BLOCKS_PER_BLOB}",
                blocks.len()
            )));
        }
        if let Some(first) = blocks.first() {
            if let Some(other) = blocks.iter().find(|id| id.0.len() != first.0.len()) {
                return Err(StorageError::Invalid(format!(
                    "block ids of different lengths ({} and {}) for {name}",
                    first.0.len(),
                    other.0.len()
                )));
            }
        }
        self.before(0).await;
        let etag = {
            let mut state = self.lock();
            let current = state.committed(name);
            check_condition(name, current, condition, false)?;
            let entry = state.blobs.get(name);
            let mut parts = Vec::with_capacity(blocks.len());
            for id in blocks {
                let part = entry
                    .and_then(|e| {
                        e.uncommitted
                            .get(id)
                            .cloned()
                            .or_else(|| e.committed.as_ref().and_then(|c| c.block(id)))
                    })
                    .ok_or_else(|| {
                        StorageError::Invalid(format!(
                            "block {} of {name} is neither staged nor committed",
                            hex(&id.0)
                        ))
                    })?;
                parts.push((id.clone(), part));
            }
            let total = parts
                .iter()
                .try_fold(0usize, |acc, (_, p)| acc.checked_add(p.len()))
                .ok_or_else(|| StorageError::Invalid(format!("{name} would be too large")))?;
            let mut data = BytesMut::with_capacity(total);
            let mut layout = Vec::with_capacity(parts.len());
            for (id, part) in parts {
                let start = data.len();
                data.extend_from_slice(&part);
                layout.push((id, start..data.len()));
            }
            Self::commit(&mut state, name, data.freeze(), layout, false)
        };
        self.after(0).await;
        Ok(etag)
    }

    async fn put_blob(
        &self,
        name: &str,
        data: Bytes,
        is_dir_marker: bool,
        condition: &Condition,
    ) -> StorageResult<ETag> {
        check_name(name)?;
        if is_dir_marker && !data.is_empty() {
            return Err(StorageError::Invalid(format!("directory marker {name} must be empty")));
        }
        self.before(data.len()).await;
        let etag = {
            let mut state = self.lock();
            check_condition(name, state.committed(name), condition, false)?;
            Self::commit(&mut state, name, data, Vec::new(), is_dir_marker)
        };
        self.after(0).await;
        Ok(etag)
    }

    async fn delete_blob(&self, name: &str) -> StorageResult<()> {
        self.before(0).await;
        {
            let mut state = self.lock();
            if state.committed(name).is_none() {
                return Err(StorageError::NotFound(name.to_owned()));
            }
            state.blobs.remove(name);
        }
        self.after(0).await;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> StorageResult<Listing> {
        if !(prefix.is_empty() || prefix.ends_with('/')) {
            return Err(StorageError::Invalid(format!(
                "listing prefix {prefix:?} must be empty or end with /"
            )));
        }
        self.before(0).await;
        let listing = {
            let state = self.lock();
            let mut listing = Listing::default();
            let under = state
                .blobs
                .range(prefix.to_owned()..)
                .take_while(|(name, _)| name.starts_with(prefix));
            for (name, entry) in under {
                let Some(committed) = &entry.committed else {
                    continue;
                };
                let rest = name.get(prefix.len()..).unwrap_or_default();
                if let Some(slash) = rest.find('/') {
                    let end = prefix.len().saturating_add(slash).saturating_add(1);
                    push_prefix(&mut listing.prefixes, name.get(..end).unwrap_or(name));
                } else if committed.is_dir_marker {
                    push_prefix(&mut listing.prefixes, &format!("{name}/"));
                } else {
                    listing.blobs.push(ListedBlob {
                        name: name.clone(),
                        properties: committed.properties(),
                    });
                }
            }
            listing.prefixes.sort();
            listing.prefixes.dedup();
            listing
        };
        self.after(0).await;
        Ok(listing)
    }

    async fn copy_blob(&self, from: &str, to: &str) -> StorageResult<ETag> {
        check_name(to)?;
        self.before(0).await;
        let etag = {
            let mut state = self.lock();
            let source = state
                .committed(from)
                .cloned()
                .ok_or_else(|| StorageError::NotFound(from.to_owned()))?;
            Self::commit(&mut state, to, source.data, source.blocks, source.is_dir_marker)
        };
        self.after(0).await;
        Ok(etag)
    }

    async fn check_access(&self) -> StorageResult<()> {
        Ok(())
    }
}

/// Prefixes arrive in name order, so a duplicate is usually the last one.
fn push_prefix(prefixes: &mut Vec<String>, prefix: &str) {
    if prefixes.last().map(String::as_str) != Some(prefix) {
        prefixes.push(prefix.to_owned());
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn shaping_delays_requests_by_latency_and_size() {
        let store = MemoryStore::with_shaping(Duration::from_millis(20), Some(10_000_000));
        let start = Instant::now();
        store
            .put_blob("a", Bytes::from(vec![0u8; 1_000_000]), false, &Condition::None)
            .await
            .unwrap();
        assert!(start.elapsed() >= Duration::from_millis(120));

        let start = Instant::now();
        store.get_properties("a").await.unwrap();
        let small = start.elapsed();
        assert!(small >= Duration::from_millis(20));
        assert!(small < Duration::from_millis(100));

        let start = Instant::now();
        let mut buf = vec![0u8; 500_000];
        store.read_range("a", 0, &mut buf, &Condition::None).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(70));
    }

    #[test]
    fn transfer_time_without_rate_is_zero() {
        let shaping = Shaping::default();
        assert_eq!(shaping.transfer_time(1 << 30), Duration::ZERO);
        let fast = Shaping {
            latency: Duration::ZERO,
            bytes_per_sec: Some(1 << 20),
        };
        assert_eq!(fast.transfer_time(1 << 20), Duration::from_secs(1));
    }
}
