#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = masked_rnn::fuzzing::keras_gru_rnn_equals_reference(data) {
        panic!("keras_gru_rnn_equals_reference: {e}");
    }
});
