#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blobcache_fuzz_harness::block_list::run(data));
