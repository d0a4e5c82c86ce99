#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = masked_rnn::fuzzing::seq_view(data) {
        panic!("seq_view: {e}");
    }
});
