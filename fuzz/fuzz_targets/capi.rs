#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = masked_rnn::capi::fuzz_capi(data) {
        panic!("capi: {e}");
    }
});
