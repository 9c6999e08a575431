//! Behaviour of the engine, one property per test, through the synchronous
//! harness in `common`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![allow(clippy::arithmetic_side_effects, clippy::unreachable)]

use blobcache_engine::*;
use blobcache_testkit::{pattern, Harness};

const BS: u64 = 100;

#[test]
fn written_file_reads_back_and_commits_uniform_blocks() {
    let mut h = Harness::new(BS, 4);
    let data = pattern(1050, 1);
    let f = h.open("a", true, true);
    h.write(f, 0, &data);
    assert_eq!(h.read(f, 0, 2000), data);
    assert_eq!(h.flush(f), Ok(Reply::Done));
    h.release(f);
    assert_eq!(h.store.data("a"), Some(&data[..]));
    h.assert_layout("a", BS);
    assert_eq!(h.read_all("a"), data);
}

#[test]
fn empty_created_file_is_committed_at_flush() {
    let mut h = Harness::new(BS, 2);
    let f = h.open("empty", true, true);
    assert_eq!(h.flush(f), Ok(Reply::Done));
    h.release(f);
    assert_eq!(h.store.data("empty"), Some(&[][..]));
}

#[test]
fn clean_flush_commits_nothing() {
    let mut h = Harness::new(BS, 2);
    h.store.put_blob("x", pattern(250, 2));
    let etag = h.store.blobs["x"].etag.clone();
    let f = h.open("x", true, false);
    assert_eq!(h.flush(f), Ok(Reply::Done));
    h.release(f);
    assert_eq!(h.store.blobs["x"].etag, etag);
}

#[test]
fn blob_put_in_one_piece_reads_back_and_is_reblocked_on_write() {
    let mut h = Harness::new(BS, 3);
    let mut expected = pattern(730, 3);
    h.store.put_blob("one", expected.clone());
    assert_eq!(h.read_all("one"), expected);
    let f = h.open("one", true, false);
    h.write(f, 305, b"hello");
    expected[305..310].copy_from_slice(b"hello");
    assert_eq!(h.flush(f), Ok(Reply::Done));
    h.release(f);
    assert_eq!(h.store.data("one"), Some(&expected[..]));
    h.assert_layout("one", BS);
}

#[test]
fn non_uniform_block_list_is_read_and_rewritten_uniform() {
    let mut h = Harness::new(BS, 3);
    let mut expected = pattern(370, 4);
    h.store.put_blocks("odd", expected.clone(), &[50, 200, 20, 100], 10);
    assert_eq!(h.read_all("odd"), expected);
    let f = h.open("odd", true, false);
    h.write(f, 0, b"Z");
    expected[0] = b'Z';
    assert_eq!(h.flush(f), Ok(Reply::Done));
    h.release(f);
    assert_eq!(h.store.data("odd"), Some(&expected[..]));
    h.assert_layout("odd", BS);
}

#[test]
fn unchanged_committed_blocks_are_reused_not_uploaded() {
    let mut h = Harness::new(BS, 4);
    let f = h.open("r", true, true);
    h.write(f, 0, &pattern(1000, 5));
    h.flush(f).unwrap();
    h.release(f);
    let before = h.engine.stats().bytes_staged;
    let f = h.open("r", true, false);
    h.write(f, 420, b"abc");
    h.flush(f).unwrap();
    h.release(f);
    assert_eq!(
        h.engine.stats().bytes_staged - before,
        BS,
        "only the written block is staged again"
    );
    let mut expected = pattern(1000, 5);
    expected[420..423].copy_from_slice(b"abc");
    assert_eq!(h.store.data("r"), Some(&expected[..]));
}

#[test]
fn eviction_under_pressure_keeps_every_byte() {
    // Two buffers for a file of 30 blocks: dirty blocks are written back
    // and evicted, and read back through a commit.
    let mut h = Harness::new(BS, 2);
    let data = pattern(3000, 6);
    let f = h.open("big", true, true);
    for chunk in 0..30 {
        h.write(f, chunk * 100, &data[chunk as usize * 100..(chunk as usize + 1) * 100]);
    }
    assert_eq!(h.read(f, 1234, 100), data[1234..1334].to_vec());
    h.flush(f).unwrap();
    h.release(f);
    assert_eq!(h.store.data("big"), Some(&data[..]));
    h.assert_layout("big", BS);
    assert_eq!(h.read_all("big"), data);
    assert!(h.engine.occupancy().buffers_allocated <= 2);
}

#[test]
fn truncate_shrinks_and_grows_with_zeros() {
    let mut h = Harness::new(BS, 3);
    let data = pattern(450, 7);
    h.store.put_blob("t", data.clone());
    let f = h.open("t", true, false);
    h.truncate(f, 130).unwrap();
    h.truncate(f, 420).unwrap();
    let mut expected = data[..130].to_vec();
    expected.resize(420, 0);
    assert_eq!(h.read(f, 0, 1000), expected);
    h.flush(f).unwrap();
    h.release(f);
    assert_eq!(h.store.data("t"), Some(&expected[..]));
    h.assert_layout("t", BS);
}

#[test]
fn write_far_past_the_end_leaves_a_hole_of_zeros() {
    let mut h = Harness::new(BS, 2);
    let f = h.open("sparse", true, true);
    h.write(f, 10, b"ab");
    h.write(f, 777, b"cd");
    let mut expected = vec![0u8; 779];
    expected[10..12].copy_from_slice(b"ab");
    expected[777..779].copy_from_slice(b"cd");
    assert_eq!(h.read(f, 0, 1000), expected);
    h.flush(f).unwrap();
    h.release(f);
    assert_eq!(h.store.data("sparse"), Some(&expected[..]));
    h.assert_layout("sparse", BS);
}

#[test]
fn open_with_truncate_empties_the_file() {
    let mut h = Harness::new(BS, 2);
    h.store.put_blob("o", pattern(300, 8));
    let mode = OpenMode {
        write: true,
        truncate: true,
        create: true,
        exclusive: false,
    };
    let Ok(Reply::Opened { handle, size }) = h.call(Request::Open {
        path: "o".into(),
        mode,
        mtime_ns: 1,
    }) else {
        panic!("open failed")
    };
    assert_eq!(size, 0);
    h.write(handle, 0, b"new");
    h.flush(handle).unwrap();
    h.release(handle);
    assert_eq!(h.store.data("o"), Some(&b"new"[..]));
}

#[test]
fn failed_stage_is_sticky_and_nothing_partial_is_committed() {
    let mut h = Harness::new(BS, 4);
    h.store.put_blob("s", pattern(200, 9));
    let before = h.store.blobs["s"].clone();
    let f = h.open("s", true, false);
    let request = h.submit(Request::Write {
        handle: f,
        offset: 0,
        data: pattern(100, 1),
        mtime_ns: 2,
    });
    assert!(
        h.replies.contains_key(&request),
        "a write into a whole block needs no I/O"
    );
    // The full block is staged in the background; that stage fails.
    assert!(matches!(h.pending.front().map(|c| &c.kind), Some(IoKind::Stage { .. })));
    h.fail_one(IoErrorKind::Failed);
    assert!(matches!(h.flush(f), Err(EngineError::WriteFailed { .. })));
    assert!(matches!(
        h.call(Request::Write {
            handle: f,
            offset: 0,
            data: vec![1],
            mtime_ns: 3
        }),
        Err(EngineError::WriteFailed { .. })
    ));
    assert!(matches!(h.flush(f), Err(EngineError::WriteFailed { .. })));
    h.release(f);
    assert_eq!(h.store.blobs["s"].data, before.data);
    assert_eq!(h.store.blobs["s"].etag, before.etag);
    assert_eq!(h.engine.occupancy().pins, 0);
}

#[test]
fn failed_fetch_fails_only_that_read_and_can_be_retried() {
    let mut h = Harness::new(BS, 4);
    let data = pattern(400, 10);
    h.store.put_blob("f", data.clone());
    let f = h.open("f", false, false);
    let request = h.submit(Request::Read {
        handle: f,
        offset: 250,
        len: 10,
    });
    h.fail_one(IoErrorKind::Failed);
    assert!(matches!(h.replies.remove(&request), Some(Err(EngineError::Storage(_)))));
    assert_eq!(h.read(f, 250, 10), data[250..260].to_vec());
    h.release(f);
}

#[test]
fn all_buffers_pinned_makes_a_request_wait_then_fail_in_bounded_time() {
    let mut config = EngineConfig::new(BS, 1);
    config.buffer_wait_timeout_ms = 500;
    config.prefetch_blocks = 0;
    let mut h = Harness::with_config(config);
    h.store.put_blob("p", pattern(400, 11));
    let a = h.open("p", false, false);
    let b = h.open("p", false, false);
    // The first read holds the only buffer while its fetch hangs.
    let first = h.submit(Request::Read {
        handle: a,
        offset: 0,
        len: 10,
    });
    let second = h.submit(Request::Read {
        handle: b,
        offset: 300,
        len: 10,
    });
    assert!(!h.replies.contains_key(&second));
    assert_eq!(h.engine.next_deadline(), Some(Millis(500)));
    h.advance(501);
    assert!(matches!(h.replies.remove(&second), Some(Err(EngineError::TimedOut(_)))));
    h.run_io();
    assert!(matches!(h.replies.remove(&first), Some(Ok(Reply::Data(_)))));
    assert_eq!(h.engine.occupancy().pins, 0);
}

#[test]
fn offsets_past_the_blob_limit_give_file_too_large() {
    let mut h = Harness::new(BS, 2);
    let f = h.open("huge", true, true);
    let max = BS * MAX_BLOCKS_PER_BLOB;
    let result = h.call(Request::Write {
        handle: f,
        offset: max,
        data: vec![1],
        mtime_ns: 1,
    });
    assert!(matches!(result, Err(EngineError::FileTooLarge { .. })));
    let result = h.call(Request::Write {
        handle: f,
        offset: u64::MAX - 1,
        data: vec![1, 2, 3],
        mtime_ns: 1,
    });
    assert!(matches!(result, Err(EngineError::FileTooLarge { .. })));
    assert!(matches!(h.truncate(f, max + 1), Err(EngineError::FileTooLarge { .. })));
    assert_eq!(h.read(f, u64::MAX - 5, 100), Vec::<u8>::new());
    h.release(f);
}

#[test]
fn reused_buffers_never_show_another_files_bytes() {
    let mut h = Harness::new(BS, 1);
    h.store.put_blob("secret", vec![0xAB; 100]);
    assert_eq!(h.read_all("secret"), vec![0xAB; 100]);
    let f = h.open("fresh", true, true);
    h.write(f, 5, b"x");
    h.write(f, 150, b"y");
    let got = h.read(f, 0, 1000);
    let mut expected = vec![0u8; 151];
    expected[5] = b'x';
    expected[150] = b'y';
    assert_eq!(got, expected);
    h.release(f);
}

#[test]
fn open_racing_the_last_release_sees_the_written_data() {
    let mut h = Harness::new(BS, 4);
    let f = h.open("race", true, true);
    h.write(f, 0, b"data");
    // Closed without a flush: the commit runs in the background.
    let release = h.submit(Request::Release { handle: f });
    assert!(h.replies.contains_key(&release));
    let g = h.open("race", false, false);
    assert_eq!(h.read(g, 0, 10), b"data".to_vec());
    h.run_io();
    h.release(g);
    assert_eq!(h.store.data("race"), Some(&b"data"[..]));
    assert_eq!(h.engine.occupancy().open_handles, 0);
}

#[test]
fn unlinked_open_file_is_never_recreated() {
    let mut h = Harness::new(BS, 2);
    let f = h.open("gone", true, true);
    h.write(f, 0, b"abc");
    h.engine.unlink("gone");
    h.store.blobs.remove("gone");
    assert_eq!(h.flush(f), Ok(Reply::Done));
    h.release(f);
    h.run_io();
    assert!(h.store.data("gone").is_none());
}

#[test]
fn blob_changed_by_another_client_is_seen_on_next_open() {
    let mut config = EngineConfig::new(BS, 4);
    config.attribute_timeout_ms = 100;
    let mut h = Harness::with_config(config);
    h.store.put_blob("c", b"old".to_vec());
    assert_eq!(h.read_all("c"), b"old".to_vec());
    h.store.put_blob("c", b"brand new".to_vec());
    h.advance(200);
    assert_eq!(h.read_all("c"), b"brand new".to_vec());
}

#[test]
fn shutdown_commits_dirty_files_and_leaves_nothing_behind() {
    let mut h = Harness::new(BS, 3);
    let f = h.open("s1", true, true);
    h.write(f, 0, &pattern(250, 12));
    h.release(f);
    assert_eq!(h.call(Request::Shutdown), Ok(Reply::Done));
    assert_eq!(h.store.data("s1"), Some(&pattern(250, 12)[..]));
    let occupancy = h.engine.occupancy();
    assert_eq!(
        (occupancy.pins, occupancy.io_pending, occupancy.waiting_requests),
        (0, 0, 0)
    );
}

/// Found by the model test: a read that misses while the file's own commit
/// is in flight must not fetch from the version being replaced.
#[test]
fn read_during_own_commit_never_fetches_the_replaced_version() {
    let mut h = Harness::new(BS, 2);
    let f = h.open("a", true, true);
    h.write(f, 0, &pattern(500, 3));
    h.flush(f).unwrap();
    // Evict everything, then change one block and start a commit.
    h.write(f, 250, b"x");
    let flush = h.submit(Request::Flush { handle: f });
    while !matches!(h.pending.back().map(|c| &c.kind), Some(IoKind::Commit { .. })) {
        assert!(h.complete_one());
    }
    let read = h.submit(Request::Read {
        handle: f,
        offset: 0,
        len: 100,
    });
    h.run_io();
    assert_eq!(h.replies.remove(&flush), Some(Ok(Reply::Done)));
    assert_eq!(
        h.replies.remove(&read),
        Some(Ok(Reply::Data(pattern(500, 3)[..100].to_vec())))
    );
    h.release(f);
}

#[test]
fn blob_replaced_while_open_is_reloaded_not_mixed() {
    let mut h = Harness::new(BS, 1);
    h.store.put_blob("o", pattern(300, 1));
    let f = h.open("o", false, false);
    assert_eq!(h.read(f, 0, 50), pattern(300, 1)[..50].to_vec());
    // Another client replaces the blob; the next miss sees the change and
    // the read is served whole from the new version.
    h.store.put_blob("o", pattern(400, 2));
    assert_eq!(h.read(f, 150, 200), pattern(400, 2)[150..350].to_vec());
    h.release(f);
}

#[test]
fn blob_deleted_while_open_reads_as_stale() {
    let mut h = Harness::new(BS, 1);
    h.store.put_blob("d", pattern(300, 1));
    let f = h.open("d", false, false);
    assert_eq!(h.read(f, 0, 10), pattern(300, 1)[..10].to_vec());
    h.store.blobs.remove("d");
    assert!(matches!(
        h.call(Request::Read {
            handle: f,
            offset: 200,
            len: 10
        }),
        Err(EngineError::Stale(_))
    ));
    h.release(f);
    assert_eq!(h.engine.occupancy().pins, 0);
}

#[test]
fn random_reads_fetch_only_what_they_need() {
    let block = 64 * 1024;
    let mut h = Harness::new(block, 4);
    let data = pattern(40 * block as usize, 4);
    h.store.put_blob("r", data.clone());
    let f = h.open("r", false, false);
    let mut returned = 0u64;
    // A pseudo-random walk of 4 KiB reads, aligned and not.
    let mut offset = 1_234_567u64;
    for _ in 0..200 {
        offset = (offset * 7919 + 104_729) % (data.len() as u64 - 5000);
        let got = h.read(f, offset, 4096);
        assert_eq!(got, data[offset as usize..offset as usize + 4096].to_vec());
        returned += 4096;
    }
    let fetched = h.engine.stats().bytes_fetched;
    assert!(
        fetched <= 3 * returned,
        "fetched {fetched} bytes for {returned} returned"
    );
    // A sequential reader of the same file still gets whole blocks.
    let g = h.open("r", false, false);
    let before = h.engine.stats().bytes_fetched;
    assert_eq!(h.read(g, 0, 1000), data[..1000].to_vec());
    assert!(h.engine.stats().bytes_fetched - before >= block);
    h.release(f);
    h.release(g);
}

#[test]
fn writing_into_a_partly_fetched_block_reads_the_rest_first() {
    let mut h = Harness::new(64 * 1024, 2);
    let data = pattern(200_000, 5);
    h.store.put_blob("w", data.clone());
    let f = h.open("w", true, false);
    // A random read leaves block 1 partly in memory.
    assert_eq!(h.read(f, 100_000, 100), data[100_000..100_100].to_vec());
    h.write(f, 70_000, b"patch");
    let mut expected = data.clone();
    expected[70_000..70_005].copy_from_slice(b"patch");
    h.truncate(f, 130_001).unwrap();
    expected.truncate(130_001);
    h.flush(f).unwrap();
    h.release(f);
    assert_eq!(h.store.data("w"), Some(&expected[..]));
    assert_eq!(h.read_all("w"), expected);
}

#[test]
fn one_adjacent_read_does_not_make_a_random_reader_sequential() {
    let block = 64 * 1024;
    let mut h = Harness::new(block, 16);
    let data = pattern(20 * block as usize, 6);
    h.store.put_blob("k", data.clone());
    let f = h.open("k", false, false);
    // A random read and the kernel's read-ahead right after it.
    let at = 5 * block + 1000;
    assert_eq!(h.read(f, at, 4096), data[at as usize..at as usize + 4096].to_vec());
    assert_eq!(
        h.read(f, at + 4096, 4096),
        data[at as usize + 4096..at as usize + 8192].to_vec()
    );
    h.run_io();
    assert_eq!(h.engine.stats().prefetches, 0);
    assert!(h.engine.stats().bytes_fetched <= 3 * 8192);
    // A reader that keeps going is sequential: whole blocks and read-ahead.
    for step in 2..6 {
        let offset = at + step * 4096;
        assert_eq!(
            h.read(f, offset, 4096),
            data[offset as usize..offset as usize + 4096].to_vec()
        );
    }
    h.run_io();
    assert!(h.engine.stats().prefetches > 0);
    h.release(f);
}

#[test]
fn random_reads_landing_behind_the_previous_one_in_the_same_block_stay_random() {
    let block = 1024 * 1024;
    let mut h = Harness::new(block, 16);
    let data = pattern(8 * block as usize, 9);
    h.store.put_blob("b", data.clone());
    let f = h.open("b", false, false);
    // Three random 4 KiB reads, each some 300-700 KiB behind the previous
    // one inside one large block: far for a reader of 4 KiB pieces.
    for at in [3 * block + 900_000, 3 * block + 500_000, 3 * block + 200_000] {
        let offset = at as usize;
        assert_eq!(h.read(f, at, 4096), data[offset..offset + 4096].to_vec());
        h.run_io();
    }
    assert_eq!(h.engine.stats().prefetches, 0);
    assert!(
        h.engine.stats().bytes_fetched <= 3 * 8192,
        "fetched {} bytes for three 4 KiB reads",
        h.engine.stats().bytes_fetched
    );
    // A sequential reader whose pieces arrive a little out of order, as
    // the kernel's read-ahead threads send them, still counts as one.
    let g = h.open("b", false, false);
    let piece = 128 * 1024;
    for index in [0u64, 2, 1, 3, 5, 4, 6] {
        let offset = (index * piece) as usize;
        assert_eq!(
            h.read(g, index * piece, piece as u32),
            data[offset..offset + piece as usize].to_vec()
        );
        h.run_io();
    }
    assert!(h.engine.stats().prefetches > 0);
    h.release(f);
    h.release(g);
}

#[test]
fn a_block_evicted_to_staged_during_a_write_never_commits_half_of_it() {
    let mut config = EngineConfig::new(BS, 2);
    config.prefetch_blocks = 0;
    let mut h = Harness::with_config(config);
    let f = h.open("t", true, true);
    // Block 1 is written whole and staged, but not committed; block 2 is
    // dirty; block 0 is a hole. Both buffers are held.
    h.write(f, 100, &pattern(100, 1));
    h.run_io();
    h.write(f, 250, &pattern(10, 2));
    let mut before = vec![0; 260];
    before[100..200].copy_from_slice(&pattern(100, 1));
    before[250..260].copy_from_slice(&pattern(10, 2));
    // The write needs a buffer for block 0, which evicts the staged block 1
    // it also covers in part.
    let data = pattern(100, 3);
    let written = match h.call(Request::Write {
        handle: f,
        offset: 50,
        data: data.clone(),
        mtime_ns: 3,
    }) {
        Ok(Reply::Written(n)) => n as usize,
        other => panic!("write: {other:?}"),
    };
    assert!(written > 0 && written <= data.len());
    let mut after = before.clone();
    after[50..50 + written].copy_from_slice(&data[..written]);
    let stored = h.store.data("t").map(<[u8]>::to_vec);
    assert!(
        stored.is_none() || stored.as_ref() == Some(&before) || stored.as_ref() == Some(&after),
        "the store holds part of a write"
    );
    assert_eq!(h.flush(f), Ok(Reply::Done));
    assert_eq!(h.store.data("t"), Some(&after[..]));
    h.release(f);
    assert_eq!(h.read_all("t"), after);
}

/// Found by engine_ops: with the queue of waiting requests full, a release
/// was refused as busy and its handle stayed open after shutdown.
#[test]
fn release_is_taken_even_when_the_queue_is_full() {
    let mut config = EngineConfig::new(BS, 4);
    config.max_waiting_requests = 2;
    let mut h = Harness::with_config(config);
    h.store.put_blob("q", pattern(300, 8));
    let reader = h.open("q", false, false);
    let other = h.open("q", false, false);
    // Two reads waiting for their fetches fill the queue.
    let first = h.submit(Request::Read {
        handle: reader,
        offset: 0,
        len: 10,
    });
    let second = h.submit(Request::Read {
        handle: reader,
        offset: 200,
        len: 10,
    });
    assert_eq!(h.engine.occupancy().waiting_requests, 2);
    let refused = h.submit(Request::Read {
        handle: reader,
        offset: 100,
        len: 10,
    });
    assert!(matches!(h.replies.remove(&refused), Some(Err(EngineError::Busy(2)))));
    let release = h.submit(Request::Release { handle: other });
    assert_eq!(h.replies.remove(&release), Some(Ok(Reply::Done)));
    assert_eq!(h.engine.occupancy().open_handles, 1);
    h.run_io();
    assert_eq!(
        h.replies.remove(&first),
        Some(Ok(Reply::Data(pattern(300, 8)[..10].to_vec())))
    );
    assert_eq!(
        h.replies.remove(&second),
        Some(Ok(Reply::Data(pattern(300, 8)[200..210].to_vec())))
    );
    h.release(reader);
    assert_eq!(h.call(Request::Shutdown), Ok(Reply::Done));
    assert_eq!(h.engine.occupancy().open_handles, 0);
}

#[test]
fn a_read_waiting_on_queued_read_ahead_goes_before_background_work() {
    let mut config = EngineConfig::new(BS, 32);
    config.parallelism = 1;
    config.prefetch_blocks = 4;
    let mut h = Harness::with_config(config);
    let data = pattern(2000, 8);
    h.store.put_blob("r", data.clone());
    let f = h.open("r", false, false);
    // A sequential reader: blocks 0 and 1, with read-ahead of blocks 2 and 3.
    assert_eq!(h.read(f, 0, 100), data[..100].to_vec());
    assert_eq!(h.read(f, 100, 100), data[100..200].to_vec());
    // Two writers whose full blocks queue write-back behind the fetch in flight.
    let writers = [h.open("w1", true, true), h.open("w2", true, true)];
    for (n, w) in writers.into_iter().enumerate() {
        let write = h.submit(Request::Write {
            handle: w,
            offset: 0,
            data: pattern(100, n as u8),
            mtime_ns: 2,
        });
        assert_eq!(h.replies.remove(&write), Some(Ok(Reply::Written(100))));
    }
    // Block 2 is in memory: this read returns at once and widens the
    // read-ahead, queueing blocks 4 to 7 behind the write-back.
    let hit = h.submit(Request::Read {
        handle: f,
        offset: 200,
        len: 100,
    });
    assert_eq!(h.replies.remove(&hit), Some(Ok(Reply::Data(data[200..300].to_vec()))));
    assert_eq!(h.pending.len(), 1, "one command in flight");
    let read = h.submit(Request::Read {
        handle: f,
        offset: 500,
        len: 100,
    });
    h.complete_one();
    match &h.pending.front().map(|c| &c.kind) {
        Some(IoKind::Fetch { offset, .. }) => assert_eq!(*offset, 500, "the block a reader waits for goes first"),
        other => panic!("expected the fetch of block 5 next, got {other:?}"),
    }
    h.complete_one();
    assert_eq!(h.replies.remove(&read), Some(Ok(Reply::Data(data[500..600].to_vec()))));
    h.run_io();
    h.release(f);
}

#[test]
fn shrinking_a_file_stops_the_fetches_of_blocks_past_its_new_end() {
    let mut config = EngineConfig::new(BS, 16);
    config.parallelism = 1;
    config.prefetch_blocks = 4;
    let mut h = Harness::with_config(config);
    let data = pattern(2000, 9);
    h.store.put_blob("t", data.clone());
    let f = h.open("t", true, false);
    assert_eq!(h.read(f, 0, 100), data[..100].to_vec());
    assert_eq!(h.read(f, 100, 100), data[100..200].to_vec());
    let file = h.engine.file_of(f).unwrap();
    // Read-ahead of block 2 is in flight and of blocks 3 to 5 queued.
    assert_eq!(h.engine.activity(file).prefetches, 4);
    h.truncate(f, 150).unwrap();
    // The queued fetch is gone; the one in flight was told to stop.
    assert_eq!(h.engine.activity(file).fetches, 1);
    let mut fetched = Vec::new();
    while let Some(command) = h.pending.front() {
        if let IoKind::Fetch { offset, .. } = command.kind {
            fetched.push(offset);
        }
        h.complete_one();
    }
    assert_eq!(fetched, vec![200], "nothing past the new end is fetched");
    assert_eq!(h.engine.activity(file).fetches, 0);
    assert_eq!(h.read(f, 0, 1000), data[..150].to_vec());
    h.release(f);
}

/// Found by engine_ops: a write past the end grew the file before storing
/// a byte; released while it waited for a fetch, it failed, and the
/// release committed the zeros it had added.
#[test]
fn a_write_failing_after_its_release_leaves_the_file_as_it_was() {
    let mut h = Harness::new(BS, 4);
    let data = pattern(120, 4);
    h.store.put_blob("w", data.clone());
    let etag = h.store.blobs["w"].etag.clone();
    let f = h.open("w", true, false);
    // Block 1 holds stored bytes the write does not cover: it is fetched first.
    let write = h.submit(Request::Write {
        handle: f,
        offset: 130,
        data: pattern(61, 5),
        mtime_ns: 2,
    });
    assert!(!h.replies.contains_key(&write));
    assert_eq!(h.engine.attr("w").map(|a| a.size), Some(120));
    h.release(f);
    h.run_io();
    assert_eq!(h.replies.remove(&write), Some(Err(EngineError::BadHandle(f.0))));
    assert_eq!(h.store.blobs["w"].etag, etag, "nothing was committed");
    assert_eq!(h.read_all("w"), data);
}

#[test]
fn a_write_past_the_end_whose_fetch_fails_leaves_the_size_alone() {
    let mut h = Harness::new(BS, 4);
    let data = pattern(120, 6);
    h.store.put_blob("v", data.clone());
    let f = h.open("v", true, false);
    let write = h.submit(Request::Write {
        handle: f,
        offset: 150,
        data: pattern(10, 7),
        mtime_ns: 2,
    });
    assert!(h.fail_one(IoErrorKind::Failed));
    assert!(matches!(h.replies.remove(&write), Some(Err(EngineError::Storage(_)))));
    assert_eq!(h.engine.attr("v").map(|a| a.size), Some(120));
    assert_eq!(h.flush(f), Ok(Reply::Done));
    h.release(f);
    assert_eq!(h.read_all("v"), data);
}

#[test]
fn a_reader_starting_at_offset_0_gets_read_ahead_with_its_first_miss() {
    let mut config = EngineConfig::new(BS, 32);
    config.parallelism = 4;
    config.prefetch_blocks = 8;
    let mut h = Harness::with_config(config);
    let data = pattern(2000, 10);
    h.store.put_blob("s", data.clone());
    let f = h.open("s", false, false);
    let read = h.submit(Request::Read {
        handle: f,
        offset: 0,
        len: 50,
    });
    // Before block 0 arrives, the requests it leaves idle read ahead.
    let offsets: Vec<u64> = h
        .pending
        .iter()
        .filter_map(|c| match c.kind {
            IoKind::Fetch { offset, .. } => Some(offset),
            _ => None,
        })
        .collect();
    assert_eq!(offsets, vec![0, 100, 200, 300]);
    assert_eq!(h.engine.stats().prefetches, 3);
    h.run_io();
    assert_eq!(h.replies.remove(&read), Some(Ok(Reply::Data(data[..50].to_vec()))));
    // The window keeps growing as the reader goes on.
    assert_eq!(h.read(f, 50, 100), data[50..150].to_vec());
    h.run_io();
    assert!(h.engine.stats().prefetches > 3);
    h.release(f);

    // A first read elsewhere fetches only what it asks for.
    let g = h.open("s", false, false);
    let before = h.engine.stats().prefetches;
    let random = h.submit(Request::Read {
        handle: g,
        offset: 1510,
        len: 20,
    });
    assert_eq!(h.pending.len(), 1);
    h.run_io();
    assert_eq!(
        h.replies.remove(&random),
        Some(Ok(Reply::Data(data[1510..1530].to_vec())))
    );
    assert_eq!(h.engine.stats().prefetches, before);
    h.release(g);
}

/// Found by engine_ops: a truncate of a file was carried out while a write
/// of it waited for a buffer between two blocks, and the write then stored
/// the rest past the new end: a result neither order of the two gives.
#[test]
fn a_truncate_waits_for_a_write_of_its_file_that_is_part_way() {
    let mut config = EngineConfig::new(BS, 2);
    config.prefetch_blocks = 0;
    let mut h = Harness::with_config(config);
    let other = h.open("other", true, true);
    let f = h.open("a", true, true);
    // A full block of another file goes to storage, holding one buffer.
    h.write(other, 0, &pattern(100, 1));
    assert_eq!(h.pending.len(), 1);
    // Block 0 takes the last buffer and is staged too; block 1 waits.
    let write = h.submit(Request::Write {
        handle: f,
        offset: 0,
        data: pattern(200, 2),
        mtime_ns: 2,
    });
    assert!(!h.replies.contains_key(&write), "the write waits for a buffer");
    let truncate = h.submit(Request::Truncate {
        handle: f,
        size: 0,
        mtime_ns: 3,
    });
    assert!(!h.replies.contains_key(&truncate), "the truncate waits for the write");
    h.run_io();
    assert_eq!(h.replies.remove(&write), Some(Ok(Reply::Written(200))));
    assert_eq!(h.replies.remove(&truncate), Some(Ok(Reply::Done)));
    assert_eq!(h.flush(f), Ok(Reply::Done));
    h.release(f);
    h.release(other);
    assert_eq!(h.store.data("a"), Some(&[][..]));
}

/// A change waiting for an earlier change of its file has no deadline of
/// its own: when the earlier write runs out of time waiting for a buffer,
/// the change behind it goes ahead in the same tick instead of failing with
/// it.
#[test]
fn a_change_behind_a_write_that_times_out_goes_ahead() {
    let mut h = Harness::new(BS, 1);
    let f = h.open("a", true, true);
    // Unlinked, its dirty block can be neither staged nor evicted, so the
    // write's second block waits for a buffer with no I/O to wait for.
    h.engine.unlink("a");
    let data = pattern(200, 4);
    let write = h.submit(Request::Write {
        handle: f,
        offset: 0,
        data: data.clone(),
        mtime_ns: 2,
    });
    let truncate = h.submit(Request::Truncate {
        handle: f,
        size: 50,
        mtime_ns: 3,
    });
    assert!(!h.replies.contains_key(&write), "the write waits for a buffer");
    assert!(!h.replies.contains_key(&truncate), "the truncate waits for the write");
    assert!(h.pending.is_empty());
    h.advance(30_000);
    assert_eq!(h.replies.remove(&write), Some(Ok(Reply::Written(100))));
    assert_eq!(h.replies.remove(&truncate), Some(Ok(Reply::Done)));
    assert_eq!(h.read(f, 0, 200), data[..50]);
    h.release(f);
}

#[test]
fn unlink_takes_back_a_commit_not_yet_sent() {
    let mut config = EngineConfig::new(BS, 4);
    config.parallelism = 1;
    let mut h = Harness::with_config(config);
    h.store.put_blob("a", pattern(300, 7));
    let a = h.open("a", false, false);
    // A new file: its commit needs no stage.
    let n = h.open("n", true, true);
    // A read of "a" holds the only I/O slot, so the commit of "n" that its
    // release starts stays queued.
    let read = h.submit(Request::Read {
        handle: a,
        offset: 0,
        len: 10,
    });
    assert_eq!(h.pending.len(), 1);
    let file = h.engine.file_at("n").unwrap();
    let release = h.submit(Request::Release { handle: n });
    assert_eq!(h.replies.remove(&release), Some(Ok(Reply::Done)));
    assert!(h.engine.activity(file).committing);
    h.engine.unlink("n");
    assert!(!h.engine.commit_in_flight(file));
    h.run_io();
    assert!(h.replies.remove(&read).is_some());
    assert!(
        h.store.data("n").is_none(),
        "a commit queued before the unlink recreated the blob"
    );
    h.release(a);
}

#[test]
fn unlink_during_a_commit_in_flight_says_so_until_it_ends() {
    let mut h = Harness::new(BS, 4);
    let n = h.open("n", true, true);
    let file = h.engine.file_at("n").unwrap();
    let release = h.submit(Request::Release { handle: n });
    assert_eq!(h.replies.remove(&release), Some(Ok(Reply::Done)));
    assert_eq!(h.pending.len(), 1);
    h.engine.unlink("n");
    // The shell deletes the blob only once this is false.
    assert!(h.engine.commit_in_flight(file));
    h.run_io();
    assert!(!h.engine.commit_in_flight(file));
}

#[test]
fn a_background_commit_that_fails_lets_go_of_its_fetches() {
    let mut h = Harness::new(BS, 4);
    // Put in one piece: a commit must fetch the blocks it does not hold.
    h.store.put_blob("c", pattern(300, 8));
    let f = h.open("c", true, false);
    h.write(f, 0, b"changed");
    let file = h.engine.file_at("c").unwrap();
    let release = h.submit(Request::Release { handle: f });
    assert_eq!(h.replies.remove(&release), Some(Ok(Reply::Done)));
    assert!(h.engine.activity(file).fetches > 0);
    // The stage of the written block fails: the commit is given up.
    assert!(matches!(h.pending.front().map(|c| &c.kind), Some(IoKind::Stage { .. })));
    h.fail_one(IoErrorKind::Failed);
    assert!(!h.engine.activity(file).committing);
    // Forgotten at once: its fetches are cancelled and only carry their
    // buffers back.
    assert!(
        h.engine.file_at("c").is_none(),
        "the closed file is kept, fetching for a commit given up"
    );
    h.run_io();
    let occupancy = h.engine.occupancy();
    assert_eq!(occupancy.files, 0);
    assert_eq!(occupancy.buffers_free, occupancy.buffers_allocated);
}

#[test]
fn a_fetch_left_by_a_failed_open_stops_when_the_file_is_closed() {
    let mut h = Harness::new(BS, 4);
    h.store.put_blob("t", pattern(250, 9));
    let f = h.open("t", false, false);
    // A random read holds part of the last block.
    assert_eq!(h.read(f, 230, 5), pattern(250, 9)[230..235].to_vec());
    let file = h.engine.file_at("t").unwrap();
    // A truncating open needs the whole block and refetches it...
    let open = h.submit(Request::Open {
        path: "t".into(),
        mode: OpenMode {
            write: true,
            truncate: true,
            create: false,
            exclusive: false,
        },
        mtime_ns: 2,
    });
    // (after loading the block list a writer needs)
    assert!(h.complete_one());
    assert!(!h.replies.contains_key(&open));
    assert_eq!(h.engine.activity(file).fetches, 1);
    // ...and is refused when shutdown begins.
    let shutdown = h.submit(Request::Shutdown);
    assert!(matches!(h.replies.remove(&open), Some(Err(EngineError::ShuttingDown))));
    h.release(f);
    assert!(
        h.engine.file_at("t").is_none(),
        "the closed file is kept, fetching for an open that failed"
    );
    h.run_io();
    assert_eq!(h.replies.remove(&shutdown), Some(Ok(Reply::Done)));
    let occupancy = h.engine.occupancy();
    assert_eq!(occupancy.buffers_free, occupancy.buffers_allocated);
}

#[test]
fn read_ahead_never_brings_back_the_old_content_of_a_dropped_write() {
    let mut config = EngineConfig::new(BS, 3);
    config.prefetch_blocks = 2;
    let mut h = Harness::with_config(config);
    let old = pattern(400, 5);
    h.store.put_blob("d", old.clone());
    let f = h.open("d", true, false);
    assert_eq!(h.read(f, 0, 100), old[..100].to_vec());
    h.run_io();
    // A whole block is written and its stage fails: the file has a sticky
    // error and the block, dirty, can be dropped to free its buffer.
    let written = pattern(100, 6);
    let request = h.submit(Request::Write {
        handle: f,
        offset: 200,
        data: written.clone(),
        mtime_ns: 2,
    });
    assert_eq!(h.replies.remove(&request), Some(Ok(Reply::Written(100))));
    assert_eq!(h.pending.len(), 1);
    h.fail_one(IoErrorKind::Failed);
    // Sequential reads of other blocks go on (those no longer cached fail);
    // read-ahead drops the written block to make room, then is asked for it
    // again.
    for (offset, len) in [
        (0, 50),
        (50, 50),
        (100, 50),
        (150, 50),
        (300, 50),
        (100, 50),
        (150, 50),
        (150, 50),
    ] {
        match h.call(Request::Read { handle: f, offset, len }) {
            Ok(Reply::Data(data)) => assert_eq!(data, old[offset as usize..(offset + u64::from(len)) as usize]),
            other => assert!(matches!(other, Err(EngineError::WriteFailed { .. })), "{other:?}"),
        }
        h.run_io();
    }
    match h.call(Request::Read {
        handle: f,
        offset: 200,
        len: 100,
    }) {
        Ok(Reply::Data(data)) => assert_eq!(data, written, "the read shows the version the write replaced"),
        other => assert!(matches!(other, Err(EngineError::WriteFailed { .. })), "{other:?}"),
    }
    h.release(f);
}

/// Found by shell_ops: a read of an unlinked open file that needed a block
/// no longer in memory failed as an internal inconsistency. Its blob is
/// gone, so it fails as stale, like a read of a file deleted by another
/// client.
#[test]
fn a_read_of_an_unlinked_file_that_needs_storage_fails_as_stale() {
    let mut h = Harness::new(BS, 1);
    let data = pattern(300, 5);
    h.store.put_blob("u", data.clone());
    let f = h.open("u", false, false);
    assert_eq!(h.read(f, 0, 10), data[..10]);
    h.engine.unlink("u");
    h.store.blobs.remove("u");
    // Block 0 is still in memory; block 1 would have to come from storage.
    assert_eq!(h.read(f, 10, 10), data[10..20]);
    let read = h.call(Request::Read {
        handle: f,
        offset: 150,
        len: 10,
    });
    assert!(matches!(read, Err(EngineError::Stale(_))), "{read:?}");
    h.release(f);
}

/// Found by shell_ops: a rename onto the name of an open file whose commit
/// was in flight made that commit fail, and the flush waiting for it, and
/// every later one, reported the failure, though the file had no name left
/// to save it under.
#[test]
fn a_commit_failing_after_its_file_lost_its_name_is_no_error() {
    let mut h = Harness::new(BS, 4);
    let f = h.open("b", true, true);
    h.write(f, 0, &pattern(50, 6));
    let flush = h.submit(Request::Flush { handle: f });
    while !matches!(h.pending.front().map(|c| &c.kind), Some(IoKind::Commit { .. })) {
        assert!(h.complete_one(), "no commit was issued");
    }
    h.engine.unlink("b");
    assert!(h.fail_one(IoErrorKind::PreconditionFailed));
    assert_eq!(h.replies.remove(&flush), Some(Ok(Reply::Done)));
    assert_eq!(h.flush(f), Ok(Reply::Done));
    h.release(f);
    assert_eq!(h.store.data("b"), None);
}

/// Found by engine_ops: a background commit given up after its stage
/// failed ended without I/O, and the shutdown waiting for it was not looked
/// at again: it waited with no I/O pending and no deadline (or, had it
/// one, until the buffer timeout).
#[test]
fn a_shutdown_waiting_for_a_commit_that_is_given_up_is_answered_at_once() {
    let mut h = Harness::new(BS, 4);
    let f = h.open("n", true, true);
    h.write(f, 0, &pattern(50, 7));
    h.release(f);
    assert!(matches!(h.pending.front().map(|c| &c.kind), Some(IoKind::Stage { .. })));
    let shutdown = h.submit(Request::Shutdown);
    assert!(!h.replies.contains_key(&shutdown));
    assert!(h.fail_one(IoErrorKind::Failed));
    assert!(h.replies.contains_key(&shutdown), "the shutdown still waits");
}

/// Found by shell_ops: a read of an unlinked open file whose block exists
/// only as a staged block asked for a commit to read it back, which is
/// given up at once for a file without a name; the read asked again and
/// again without end. Such a block cannot be read back: the read fails as
/// stale at once.
#[test]
fn a_read_of_an_unlinked_file_needing_a_staged_only_block_fails_as_stale() {
    let mut h = Harness::new(BS, 1);
    let f = h.open("s", true, true);
    // Block 0 is staged in the background and then evicted to make room
    // for block 1: it exists only as a staged block.
    h.write(f, 0, &pattern(150, 8));
    h.run_io();
    h.engine.unlink("s");
    let read = h.call(Request::Read {
        handle: f,
        offset: 0,
        len: 10,
    });
    assert!(matches!(read, Err(EngineError::Stale(_))), "{read:?}");
    h.release(f);
    h.run_io();
    assert_eq!(h.store.data("s"), None);
}

#[test]
fn a_flush_during_a_write_commits_all_of_it_or_none() {
    let mut config = EngineConfig::new(BS, 2);
    config.prefetch_blocks = 0;
    let mut h = Harness::with_config(config);
    let f = h.open("w", true, true);
    // Both buffers go to the background stages of the first two blocks,
    // so the write waits for a buffer part-way, and a flush comes in.
    let data = pattern(250, 4);
    let write = h.submit(Request::Write {
        handle: f,
        offset: 0,
        data: data.clone(),
        mtime_ns: 2,
    });
    assert!(!h.replies.contains_key(&write));
    let flush = h.submit(Request::Flush { handle: f });
    h.run_io();
    assert_eq!(h.replies.remove(&write), Some(Ok(Reply::Written(250))));
    assert_eq!(h.replies.remove(&flush), Some(Ok(Reply::Done)));
    assert_eq!(h.store.data("w"), Some(&data[..]));
    h.release(f);
    assert_eq!(h.read_all("w"), data);
}

/// Found by engine_ops: a truncating open of a file that was empty at that
/// moment was answered at once, ahead of a truncate that had arrived
/// before it and waited for a commit; the truncate then made the file
/// longer again, so it ended with the truncate's size rather than empty.
#[test]
fn a_truncating_open_of_an_empty_file_waits_for_an_earlier_change() {
    let mut h = Harness::new(BS, 4);
    let f = h.open("t", true, true);
    let flush = h.submit(Request::Flush { handle: f });
    assert!(!h.replies.contains_key(&flush), "the commit of the new file runs");
    let truncate = h.submit(Request::Truncate {
        handle: f,
        size: 23,
        mtime_ns: 3,
    });
    assert!(!h.replies.contains_key(&truncate), "the truncate waits for the commit");
    let open = h.submit(Request::Open {
        path: "t".into(),
        mode: OpenMode {
            write: true,
            truncate: true,
            create: false,
            exclusive: false,
        },
        mtime_ns: 4,
    });
    h.run_io();
    assert_eq!(h.replies.remove(&truncate), Some(Ok(Reply::Done)));
    let Some(Ok(Reply::Opened { handle: g, .. })) = h.replies.remove(&open) else {
        panic!("the open failed");
    };
    assert_eq!(h.flush(g), Ok(Reply::Done));
    h.release(g);
    h.release(f);
    assert_eq!(h.store.data("t"), Some(&[][..]));
}
