//! A chunked body, fed to the decoder in pieces whose size the first byte picks:
//! the verdict must not depend on it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let whole = tern_h1::fuzz::chunked(body, body.len().max(1));
    let cut = tern_h1::fuzz::chunked(body, usize::from(step % 16) + 1);
    if !matches!(
        (&whole, &cut),
        (
            tern_h1::fuzz::ChunkedVerdict::Malformed(_),
            tern_h1::fuzz::ChunkedVerdict::Malformed(_)
        )
    ) {
        assert_eq!(whole, cut);
    }
});
