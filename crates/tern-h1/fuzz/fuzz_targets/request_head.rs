//! A client's bytes at the front of the in-task server's read buffer, under the
//! default limits and under tight ones.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tern_h1::fuzz::request_head(data, tern_h1::MAX_HEAD_BYTES, tern_h1::MAX_HEADERS);
    tern_h1::fuzz::request_head(data, 64, 4);
});
