#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = masked_rnn::fuzzing::onnx_gru_rnn_equals_reference(data) {
        panic!("onnx_gru_rnn_equals_reference: {e}");
    }
});
