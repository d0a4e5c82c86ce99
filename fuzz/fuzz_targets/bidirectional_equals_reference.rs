#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = masked_rnn::fuzzing::bidirectional_equals_reference(data) {
        panic!("bidirectional_equals_reference: {e}");
    }
});
