#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = masked_rnn::fuzzing::torch_gru_rnn_equals_reference(data) {
        panic!("torch_gru_rnn_equals_reference: {e}");
    }
});
