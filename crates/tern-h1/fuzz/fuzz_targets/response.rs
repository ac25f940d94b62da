//! A machine's answer as the in-task client reads it, to a GET and to a HEAD.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tern_h1::fuzz::response(data, false);
    tern_h1::fuzz::response(data, true);
});
