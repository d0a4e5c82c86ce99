#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = masked_rnn::fuzzing::backward_equals_reference(data) {
        panic!("backward_equals_reference: {e}");
    }
});
