#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blobcache_fuzz_harness::engine_ops::run(data));
