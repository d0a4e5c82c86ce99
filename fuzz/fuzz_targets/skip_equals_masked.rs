#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = masked_rnn::fuzzing::skip_equals_masked(data) {
        panic!("skip_equals_masked: {e}");
    }
});
