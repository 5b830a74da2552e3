#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sparsedit_fuzz::safetensors_bytes(data);
});
