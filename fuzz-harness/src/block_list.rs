//! The `block_list` target: committed block lists as storage may return
//! them (ids of any length, sizes that are not uniform or do not add up to
//! the blob, up to and past the 50,000-block limit), decoded from the local
//! backend's sidecar format and loaded into an engine that then reads,
//! overwrites and commits the blob. Whatever the list, reads give the
//! blob's bytes and the commit stores exactly the written content.

use arbitrary::{Arbitrary, Unstructured};
use blobcache::storage::local::decode_blocklist;
use blobcache::storage::{self, CommittedBlock, ETag};
use blobcache_engine::{BlockId, EngineConfig, EngineError, Reply, BLOCK_ID_LEN};
use blobcache_testkit::{pattern, Harness, StoredBlob};

/// Most entries of a list built entry by entry.
const MAX_LISTED: usize = 64;
/// Lists of the huge kind have this many entries plus up to 16.
const HUGE_LIST: usize = 50_000;

#[derive(Arbitrary, Debug)]
enum Shape {
    /// Entry by entry: each id length and size chosen by the input.
    Listed(Vec<(u8, u16)>),
    /// `count` blocks of the block size (the last one shorter by `short`),
    /// with ids of `id_len` bytes.
    Uniform { count: u8, short: u8, id_len: u8 },
    /// 50,000 or more one-byte blocks: the service's limit and just past it.
    /// Only when `gate` is 0xA5, so that random inputs seldom pay for one.
    Huge { gate: u8, extra: u8, id_len: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    block_size: u8,
    shape: Shape,
    /// Bytes added to or removed from the blob size the list implies.
    size_skew: i8,
    write_at: u16,
    write_len: u8,
    reads: Vec<(u16, u8)>,
}

fn block_id(index: usize, len: usize) -> Vec<u8> {
    // The index first, so that ids of one list are distinct when long enough.
    let mut id: Vec<u8> = index
        .to_le_bytes()
        .into_iter()
        .chain(std::iter::repeat(0xEE))
        .take(len)
        .collect();
    if let Some(last) = id.last_mut() {
        *last = 0xEE;
    }
    id
}

fn blocks_of(input: &Input, block_size: u64) -> Vec<(Vec<u8>, u64)> {
    match &input.shape {
        Shape::Listed(entries) => entries
            .iter()
            .take(MAX_LISTED)
            .enumerate()
            .map(|(i, &(id_len, size))| (block_id(i, usize::from(id_len % 70)), u64::from(size % 512)))
            .collect(),
        Shape::Uniform { count, short, id_len } => {
            let count = usize::from(*count % 40);
            let id_len = if id_len % 4 == 0 {
                usize::from(*id_len % 70)
            } else {
                BLOCK_ID_LEN
            };
            (0..count)
                .map(|i| {
                    let size = if i + 1 == count {
                        block_size.saturating_sub(u64::from(*short) % block_size)
                    } else {
                        block_size
                    };
                    (block_id(i, id_len), size)
                })
                .collect()
        }
        Shape::Huge { gate, extra, id_len } if *gate == 0xA5 => {
            let id_len = if id_len % 2 == 0 {
                BLOCK_ID_LEN
            } else {
                usize::from(*id_len % 70)
            };
            (0..HUGE_LIST + usize::from(extra % 17))
                .map(|i| (block_id(i, id_len), 1))
                .collect()
        }
        Shape::Huge { .. } => vec![],
    }
}

pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(crate::bounded(data));
    let Ok(input) = Input::arbitrary(&mut u) else { return };
    let block_size = match input.shape {
        Shape::Huge { gate: 0xA5, .. } => 1,
        _ => u64::from(input.block_size % 64) + 1,
    };
    let blocks = blocks_of(&input, block_size);
    let listed: u64 = blocks.iter().map(|b| b.1).sum();
    let size = listed.saturating_add_signed(i64::from(input.size_skew));
    let content = pattern(usize::try_from(size).unwrap_or(0), 3);

    // The list goes through the sidecar decoder on its way to the engine.
    let etag = ETag("\"v1\"".to_owned());
    let committed: Vec<CommittedBlock> = blocks
        .iter()
        .map(|(id, size)| CommittedBlock {
            id: storage::BlockId(id.clone()),
            size: *size,
        })
        .collect();
    let text = crate::parsers::encode_sidecar(&etag, &committed);
    let decoded = decode_blocklist(text.as_bytes(), &etag);
    assert_eq!(decoded.ok().flatten().as_ref(), Some(&committed), "sidecar round trip");

    let mut config = EngineConfig::new(block_size, 4);
    config.parallelism = 3;
    config.buffer_wait_timeout_ms = u64::MAX / 4;
    let mut h = Harness::with_config(config);
    h.store.blobs.insert(
        "f".to_owned(),
        StoredBlob {
            etag: etag.0.clone(),
            data: content.clone(),
            blocks: committed.into_iter().map(|b| (BlockId(b.id.0), b.size)).collect(),
        },
    );
    let handle = h.open("f", true, false);
    for (offset, len) in input.reads.iter().take(8) {
        let offset = u64::from(*offset) % (size + 1);
        let got = h.read(handle, offset, u32::from(*len));
        let start = offset as usize;
        let end = (start + usize::from(*len)).min(content.len());
        assert_eq!(got, content[start..end], "read at {offset}+{len}");
    }
    // A write to a blob whose list cannot be reused restages every block:
    // bounded here so that one input stays fast.
    let reusable = blocks.len() as u64 == size.div_ceil(block_size)
        && blocks.iter().enumerate().all(|(i, (id, len))| {
            id.len() == BLOCK_ID_LEN && *len == size.saturating_sub(i as u64 * block_size).min(block_size)
        });
    let write_len = if reusable || size.div_ceil(block_size) <= 512 {
        input.write_len
    } else {
        0
    };
    let mut expected = content;
    if write_len > 0 {
        let offset = usize::from(input.write_at) % (expected.len() + 1);
        let data = vec![0x5A; usize::from(write_len)];
        let written = h.call(blobcache_engine::Request::Write {
            handle,
            offset: offset as u64,
            data: data.clone(),
            mtime_ns: 2,
        });
        let past_limit = (offset + data.len()) as u64 > h.engine.max_file_size();
        match written {
            Ok(Reply::Written(n)) if n as usize == data.len() => {}
            Err(EngineError::FileTooLarge { .. }) if past_limit => {
                h.release(handle);
                h.run_io();
                return;
            }
            other => panic!("write of {} bytes at {offset}: {other:?}", data.len()),
        }
        if expected.len() < offset + data.len() {
            expected.resize(offset + data.len(), 0);
        }
        expected[offset..offset + data.len()].copy_from_slice(&data);
    }
    let flushed = h.flush(handle);
    h.release(handle);
    h.run_io();
    if flushed.is_ok() && write_len > 0 {
        assert_eq!(h.store.data("f"), Some(&expected[..]), "committed content");
        h.assert_layout("f", block_size);
    }
}
