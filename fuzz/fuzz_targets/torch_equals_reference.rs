#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = masked_rnn::fuzzing::torch_equals_reference(data) {
        panic!("torch_equals_reference: {e}");
    }
});
