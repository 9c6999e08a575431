//! The `parsers` target: text the project reads from outside that is not
//! configuration: the local backend's block-list sidecar files and
//! `/proc/self/mountinfo` lines. Decoders must never panic, and what they
//! accept must survive re-encoding.

use blobcache::cli::mountinfo;
use blobcache::storage::local::decode_blocklist;
use blobcache::storage::{CommittedBlock, ETag};
use std::path::Path;

const SIDECAR_HEADER: &str = "blobcache-blocklist 1";

/// The sidecar text for `blocks` recorded under `etag`, in the format the
/// local backend writes.
pub fn encode_sidecar(etag: &ETag, blocks: &[CommittedBlock]) -> String {
    use std::fmt::Write as _;
    let mut text = format!("{SIDECAR_HEADER}\netag {}\n", etag.0);
    for block in blocks {
        for byte in &block.id.0 {
            let _ = write!(text, "{byte:02x}");
        }
        let _ = writeln!(text, " {}", block.size);
    }
    text
}

pub fn run(data: &[u8]) {
    let data = crate::bounded(data);
    let etag = ETag("\"0x1\"".to_owned());
    if let Ok(Some(blocks)) = decode_blocklist(data, &etag) {
        let again = decode_blocklist(encode_sidecar(&etag, &blocks).as_bytes(), &etag);
        assert_eq!(again.ok().flatten().as_ref(), Some(&blocks), "sidecar round trip");
    }
    // The same bytes as the body of a sidecar with a valid header.
    let mut framed = format!("{SIDECAR_HEADER}\netag {}\n", etag.0).into_bytes();
    framed.extend_from_slice(data);
    let _ = decode_blocklist(&framed, &etag);

    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        if let Some(entry) = mountinfo::parse_line(line) {
            let _ = entry.is_fuse();
        }
    }
    let _ = mountinfo::find_in(&text, Path::new("/mnt/blobcache"));
}
