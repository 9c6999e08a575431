//! One test per engine-level fault of the block cache audit
//! (`block_cache_audit.md`), each showing that the fault cannot happen here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![allow(clippy::arithmetic_side_effects)]

use blobcache_engine::*;
use blobcache_testkit::{pattern, Harness};

const BS: u64 = 100;

/// 1.1: two engines side by side share nothing.
#[test]
fn audit_1_1_two_engines_in_one_process_are_independent() {
    let mut first = Harness::new(BS, 2);
    let mut second = Harness::new(BS, 2);
    let f = first.open("same-name", true, true);
    first.write(f, 0, b"first");
    let g = second.open("same-name", true, true);
    second.write(g, 0, b"second!");
    assert_eq!(first.read(f, 0, 100), b"first".to_vec());
    assert_eq!(second.read(g, 0, 100), b"second!".to_vec());
    first.release(f);
    second.release(g);
}

/// 1.2: an inconsistent input (a completion the engine never asked for, or
/// one of the wrong kind) becomes an error; nothing panics and the engine
/// keeps serving.
#[test]
fn audit_1_2_inconsistent_inputs_become_errors_not_panics() {
    let mut h = Harness::new(BS, 2);
    h.store.put_blob("x", pattern(300, 1));
    let f = h.open("x", false, false);
    // A completion for an id never issued: ignored, its buffer is not adopted.
    h.engine.complete(
        Millis(0),
        IoCompletion {
            id: IoId(999_999),
            buffer: Some(vec![0; 7]),
            result: Ok(IoDone::Staged),
        },
    );
    h.engine.check_invariants().unwrap();
    // A fetch answered as if it were a commit: the waiting read fails, the engine stays up.
    let request = h.submit(Request::Read {
        handle: f,
        offset: 0,
        len: 10,
    });
    let command = h.pending.pop_front().expect("a fetch");
    let IoKind::Fetch { buffer, .. } = command.kind else {
        panic!("expected a fetch")
    };
    h.engine.complete(
        Millis(0),
        IoCompletion {
            id: command.id,
            buffer: Some(buffer),
            result: Ok(IoDone::Committed { etag: "?".into() }),
        },
    );
    while let Some(effect) = h.engine.poll_effect() {
        if let Effect::Reply { request: id, result } = effect {
            h.replies.insert(id.0, result);
        }
    }
    match h.replies.remove(&request) {
        Some(Err(EngineError::Storage(message))) => assert!(message.contains("inconsistent"), "{message}"),
        other => panic!("expected a storage error, got {other:?}"),
    }
    h.engine.check_invariants().unwrap();
    assert_eq!(h.read(f, 0, 10), pattern(300, 1)[..10].to_vec());
    h.release(f);
}

/// 1.3: an open racing the last release of the same file gets the file with
/// everything written through the released handle; no handle is lost.
#[test]
fn audit_1_3_open_racing_last_release_keeps_the_file_whole() {
    let mut h = Harness::new(BS, 4);
    let f = h.open("r", true, true);
    h.write(f, 0, &pattern(250, 2));
    let release = h.submit(Request::Release { handle: f });
    let open = h.submit(Request::Open {
        path: "r".into(),
        mode: OpenMode {
            write: true,
            truncate: false,
            create: false,
            exclusive: false,
        },
        mtime_ns: 1,
    });
    assert!(h.replies.contains_key(&release));
    let Some(Ok(Reply::Opened { handle, size })) = h.replies.remove(&open) else {
        panic!("open failed")
    };
    assert_eq!(size, 250);
    assert_eq!(h.read(handle, 0, 1000), pattern(250, 2));
    h.run_io();
    h.release(handle);
    h.run_io();
    assert_eq!(h.store.data("r"), Some(&pattern(250, 2)[..]));
    assert_eq!(h.engine.occupancy().open_handles, 0);
}

/// 1.4: a block removed (by truncation) while a request waits on it and its
/// buffer is out with a fetch: the buffer comes back to the pool, the pin
/// goes away, nothing leaks.
#[test]
fn audit_1_4_block_removed_while_pinned_does_not_leak() {
    let mut h = Harness::new(BS, 2);
    h.store.put_blob("p", pattern(500, 3));
    let reader = h.open("p", false, false);
    let writer = h.open("p", true, false);
    let read = h.submit(Request::Read {
        handle: reader,
        offset: 420,
        len: 50,
    });
    assert_eq!(h.engine.occupancy().pins, 1);
    let truncate = h.submit(Request::Truncate {
        handle: writer,
        size: 100,
        mtime_ns: 1,
    });
    h.run_io();
    assert_eq!(h.replies.remove(&truncate), Some(Ok(Reply::Done)));
    // The read sees the file as it is now: past the end, nothing.
    assert_eq!(h.replies.remove(&read), Some(Ok(Reply::Data(vec![]))));
    let occupancy = h.engine.occupancy();
    assert_eq!((occupancy.pins, occupancy.io_pending), (0, 0));
    assert_eq!(occupancy.buffers_free, occupancy.buffers_allocated);
    h.release(reader);
    h.release(writer);
}

/// 2.1: a failed stage is remembered as an error of the file, returned to
/// every later write, truncate and flush, and never turned into a commit.
#[test]
fn audit_2_1_write_errors_are_sticky() {
    let mut h = Harness::new(BS, 4);
    let f = h.open("s", true, true);
    h.write(f, 0, &pattern(100, 4));
    h.fail_one(IoErrorKind::Failed);
    for _ in 0..3 {
        assert!(matches!(h.flush(f), Err(EngineError::WriteFailed { .. })));
    }
    assert!(matches!(h.truncate(f, 5), Err(EngineError::WriteFailed { .. })));
    h.release(f);
    h.run_io();
    assert!(h.store.data("s").is_none(), "nothing partial is committed");
}

/// 2.2: closing a file cancels its read-ahead; the buffers come back.
#[test]
fn audit_2_2_close_cancels_prefetch() {
    let mut config = EngineConfig::new(BS, 8);
    config.prefetch_blocks = 4;
    let mut h = Harness::with_config(config);
    h.store.put_blob("c", pattern(2000, 5));
    let f = h.open("c", false, false);
    let read = h.submit(Request::Read {
        handle: f,
        offset: 0,
        len: 50,
    });
    h.complete_one();
    assert!(matches!(h.replies.remove(&read), Some(Ok(Reply::Data(_)))));
    let prefetches = h.pending.len();
    assert!(prefetches > 0, "a sequential reader gets read-ahead");
    let stats_before = h.engine.occupancy();
    assert!(stats_before.io_pending > 0);
    let file = h.engine.file_of(f).unwrap();
    assert_eq!(h.engine.activity(file).prefetches, prefetches);
    let release = h.submit(Request::Release { handle: f });
    assert_eq!(h.replies.remove(&release), Some(Ok(Reply::Done)));
    // Prefetches already issued were asked to stop; completing them returns buffers.
    h.run_io();
    assert_eq!(h.engine.activity(file), FileActivity::default());
    let occupancy = h.engine.occupancy();
    assert_eq!(occupancy.io_pending, 0);
    assert_eq!(occupancy.buffers_free + cached_blocks(&h), occupancy.buffers_allocated);
}

fn cached_blocks(h: &Harness) -> usize {
    let occupancy = h.engine.occupancy();
    occupancy.buffers_allocated - occupancy.buffers_free
}

/// 2.3: when every buffer is in use, a request waits for a bounded time and
/// then fails with a clear error; nothing spins.
#[test]
fn audit_2_3_all_buffers_pinned_is_a_bounded_wait() {
    let mut config = EngineConfig::new(BS, 1);
    config.buffer_wait_timeout_ms = 1000;
    config.prefetch_blocks = 0;
    let mut h = Harness::with_config(config);
    let f = h.open("d", true, true);
    // The only buffer holds a dirty block whose stage hangs.
    h.write(f, 0, &pattern(100, 6));
    let write = h.submit(Request::Write {
        handle: f,
        offset: 100,
        data: vec![1; 100],
        mtime_ns: 2,
    });
    assert!(!h.replies.contains_key(&write));
    h.advance(999);
    assert!(!h.replies.contains_key(&write));
    h.advance(2);
    match h.replies.remove(&write) {
        Some(Err(EngineError::TimedOut(message))) => assert!(message.contains("buffer"), "{message}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

/// 2.5: offsets and sizes past the blob limit are refused with EFBIG; no
/// arithmetic overflows.
#[test]
fn audit_2_5_huge_offsets_are_refused() {
    let mut h = Harness::new(BS, 2);
    let f = h.open("h", true, true);
    for offset in [BS * MAX_BLOCKS_PER_BLOB, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
        let result = h.call(Request::Write {
            handle: f,
            offset,
            data: vec![7; 3],
            mtime_ns: 1,
        });
        assert!(
            matches!(result, Err(EngineError::FileTooLarge { .. })),
            "{offset}: {result:?}"
        );
        assert_eq!(h.read(f, offset, u32::MAX), Vec::<u8>::new());
    }
    assert!(matches!(h.truncate(f, u64::MAX), Err(EngineError::FileTooLarge { .. })));
    // The last byte that fits is fine.
    h.write(f, BS * MAX_BLOCKS_PER_BLOB - 1, b"z");
    h.release(f);
}

/// 2.8: buffers are reused without zeroing whole blocks, yet no byte of one
/// file, or of an older version, shows through another.
#[test]
fn audit_2_8_reused_buffers_never_leak_bytes() {
    let mut h = Harness::new(BS, 1);
    h.store.put_blob("old", vec![0xEE; 250]);
    assert_eq!(h.read_all("old"), vec![0xEE; 250]);
    let f = h.open("new", true, true);
    h.write(f, 30, b"abc");
    h.truncate(f, 90).unwrap();
    h.write(f, 150, b"q");
    let mut expected = vec![0u8; 151];
    expected[30..33].copy_from_slice(b"abc");
    expected[150] = b'q';
    assert_eq!(h.read(f, 0, 1000), expected);
    h.flush(f).unwrap();
    h.release(f);
    assert_eq!(h.store.data("new"), Some(&expected[..]));
}

/// The handle race: two handles of one file flushing at once make at most
/// one commit, and a flush with nothing to save commits nothing.
#[test]
fn audit_handle_race_concurrent_flushes_make_one_commit() {
    let mut h = Harness::new(BS, 4);
    let a = h.open("dup", true, true);
    let b = h.open("dup", true, false);
    h.write(a, 0, b"hello");
    let first = h.submit(Request::Flush { handle: a });
    let second = h.submit(Request::Flush { handle: b });
    h.run_io();
    assert_eq!(h.replies.remove(&first), Some(Ok(Reply::Done)));
    assert_eq!(h.replies.remove(&second), Some(Ok(Reply::Done)));
    assert_eq!(h.engine.stats().commits, 1);
    assert_eq!(h.flush(b), Ok(Reply::Done));
    assert_eq!(h.engine.stats().commits, 1);
    h.release(a);
    h.release(b);
    assert_eq!(h.store.data("dup"), Some(&b"hello"[..]));
}
