//! Transfers through our own storage backend with no FUSE and no cache in
//! between: the limit a mount over the same backend can reach.

use crate::{Target, AZURITE_ACCOUNT, AZURITE_KEY};
use azure_storage::{CloudLocation, StorageCredentials};
use azure_storage_blobs::prelude::{ClientBuilder, PublicAccess};
use blobcache::storage::azure::{AzureCredentials, AzureSettings, AzureStore};
use blobcache::storage::{BlobStore, BlockId, Condition};
use bytes::Bytes;
use futures::StreamExt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn run(task: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(task)
}

fn store(target: &Target) -> Result<AzureStore, String> {
    AzureStore::new(AzureSettings {
        account: AZURITE_ACCOUNT.to_string(),
        container: target.container.clone(),
        endpoint: Some(target.endpoint.clone()),
        credentials: AzureCredentials::AccountKey(AZURITE_KEY.to_string()),
    })
    .map_err(|e| e.to_string())
}

fn report(bytes: u64, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    let mib = bytes as f64 / f64::from(1u32 << 20);
    println!(
        "{{\"bytes\": {bytes}, \"seconds\": {seconds:.4}, \"mib_per_s\": {:.2}}}",
        mib / seconds.max(1e-9)
    );
}

pub async fn setup(target: Target) -> Result<(), String> {
    let credentials = StorageCredentials::access_key(AZURITE_ACCOUNT, AZURITE_KEY.to_string());
    let location = CloudLocation::Custom {
        account: AZURITE_ACCOUNT.to_string(),
        uri: target.endpoint.clone(),
    };
    ClientBuilder::with_location(location, credentials)
        .container_client(target.container.clone())
        .create()
        .public_access(PublicAccess::Container)
        .await
        .map_err(|e| format!("cannot create container {}: {e}", target.container))
}

pub async fn upload(target: Target, name: String, file: PathBuf, block_mb: u64, parallel: usize) -> Result<(), String> {
    let store = Arc::new(store(&target)?);
    // Read before the clock starts: this measures the upload, not the disk.
    let data = Bytes::from(std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?);
    let block = usize::try_from(block_mb << 20).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let ids: Vec<BlockId> = (0..data.len().div_ceil(block))
        .map(|i| BlockId(format!("bench-{i:08}").into_bytes()))
        .collect();
    let stages = ids.iter().enumerate().map(|(i, id)| {
        let store = store.clone();
        let start = i * block;
        let piece = data.slice(start..data.len().min(start + block));
        let name = name.clone();
        let id = id.clone();
        async move { store.put_block(&name, &id, piece).await }
    });
    let mut results = futures::stream::iter(stages).buffer_unordered(parallel.max(1));
    while let Some(result) = results.next().await {
        result.map_err(|e| format!("put block: {e}"))?;
    }
    store
        .put_block_list(&name, &ids, &Condition::None)
        .await
        .map_err(|e| format!("put block list: {e}"))?;
    report(data.len() as u64, started.elapsed());
    Ok(())
}

pub async fn download(target: Target, name: String, range_mb: u64, parallel: usize) -> Result<(), String> {
    let store = Arc::new(store(&target)?);
    let size = store
        .get_properties(&name)
        .await
        .map_err(|e| format!("{name}: {e}"))?
        .size;
    let range = range_mb << 20;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers = (0..parallel.max(1)).map(|_| {
        let store = store.clone();
        let next = next.clone();
        let name = name.clone();
        tokio::spawn(async move {
            // One buffer per worker, reused: like the cache, which reads into pool buffers.
            let mut buf = vec![0u8; usize::try_from(range).unwrap_or(usize::MAX)];
            let mut total = 0u64;
            loop {
                let offset = next.fetch_add(range, Ordering::Relaxed);
                if offset >= size {
                    return Ok::<u64, String>(total);
                }
                let len = usize::try_from(range.min(size - offset)).unwrap_or(usize::MAX);
                let read = store
                    .read_range(&name, offset, &mut buf[..len], &Condition::None)
                    .await
                    .map_err(|e| format!("read at {offset}: {e}"))?;
                total += read as u64;
            }
        })
    });
    let mut total = 0u64;
    for worker in futures::future::join_all(workers).await {
        total += worker.map_err(|e| e.to_string())??;
    }
    if total != size {
        return Err(format!("read {total} bytes of {size}"));
    }
    report(total, started.elapsed());
    Ok(())
}

pub async fn copy(target: Target, from: String, to: String) -> Result<(), String> {
    store(&target)?
        .copy_blob(&from, &to)
        .await
        .map(|_| ())
        .map_err(|e| format!("copy {from} -> {to}: {e}"))
}

pub async fn wait_blob(target: Target, name: String, size: u64, timeout_s: u64) -> Result<(), String> {
    let store = store(&target)?;
    let started = Instant::now();
    loop {
        if let Ok(properties) = store.get_properties(&name).await {
            if properties.size == size {
                println!("{:.4}", started.elapsed().as_secs_f64());
                return Ok(());
            }
        }
        if started.elapsed() > Duration::from_secs(timeout_s) {
            return Err(format!("{name} did not reach {size} bytes in {timeout_s} s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
