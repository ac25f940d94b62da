//! The parsers under random input, on stable Rust within `cargo test`: generated
//! and mutated messages, arbitrary bytes, and the committed corpus of the
//! cargo-fuzz targets (fuzz/corpus). Each entry point checks its parser's own
//! invariants; a panic anywhere fails the property. Failing inputs proptest
//! finds are kept in proptest-regressions/ and run first every time.

mod gen;

use proptest::prelude::*;
use tern_h1::fuzz::{self, ChunkedVerdict};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: gen::cases(cases),
        ..ProptestConfig::default()
    }
}

/// Every entry point, as the cargo-fuzz targets call them.
fn all_parsers(data: &[u8]) {
    fuzz::request_head(data, tern_h1::MAX_HEAD_BYTES, tern_h1::MAX_HEADERS);
    fuzz::request_head(data, 64, 4);
    fuzz::response(data, false);
    fuzz::response(data, true);
    fuzz::chunked(data, 1);
    fuzz::chunked(data, 7);
}

proptest! {
    #![proptest_config(config(100_000))]

    #[test]
    fn no_parser_panics_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        all_parsers(&data);
    }

    #[test]
    fn no_parser_panics_on_mutated_requests(data in gen::mutated(gen::request_head())) {
        all_parsers(&data);
    }

    #[test]
    fn no_parser_panics_on_mutated_responses(data in gen::mutated(gen::response())) {
        all_parsers(&data);
    }

    /// The chunked decoder reads a body the same however the network cuts it.
    #[test]
    fn chunked_decoding_does_not_depend_on_how_the_input_is_cut(
        body in gen::mutated(gen::chunked_body()),
        step in 1usize..9,
    ) {
        let whole = fuzz::chunked(&body, body.len().max(1));
        let cut = fuzz::chunked(&body, step);
        // The same data and end, or the same refusal (its reason may be found
        // at a different byte).
        match (&whole, &cut) {
            (ChunkedVerdict::Malformed(_), ChunkedVerdict::Malformed(_)) => {}
            _ => prop_assert_eq!(whole, cut),
        }
    }

    /// A well-formed chunked body decodes to exactly its chunks' data.
    #[test]
    fn a_well_formed_chunked_body_decodes_to_its_data(body in gen::chunked_body()) {
        let verdict = fuzz::chunked(&body, 3);
        let ChunkedVerdict::End { data, consumed } = verdict else {
            return Err(TestCaseError::fail(format!("{verdict:?}")));
        };
        prop_assert_eq!(consumed, body.len());
        prop_assert!(data.iter().all(|&b| b == b'd'));
    }
}

/// The cargo-fuzz targets' committed corpus: seeds and every input a longer
/// fuzzing run kept.
#[test]
fn the_fuzz_corpus_runs_clean() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut files = 0;
    for target in ["request_head", "response", "chunked"] {
        let dir = root.join(target);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            all_parsers(&data);
            files += 1;
        }
    }
    assert!(files >= 10, "only {files} corpus files");
}
