//! Fuzzing / replay entry points for sparsedit's readers of untrusted files.
//!
//! Each `cargo fuzz` target (`fuzz/fuzz_targets/*.rs`) calls one function here, and the ordinary
//! test suite (`tests/fuzz_corpus.rs`, which includes this file with `#[path]`) replays every
//! corpus file through the same function. They use only sparsedit's public API, and must never
//! panic, hang or allocate without bound: a malformed input is an `Err`, nothing more.
//!
//! Input layout. `safetensors_stream` and `gguf` take two option bytes before the file: byte 0
//! selects the options (config, quantization, announced size / sha256), byte 1 seeds the chunk
//! sizes the file is pushed in (0 = the whole file in one push), as the page pushes a `fetch`
//! body. `safetensors_bytes` and `pickle` take the file as it is.

use sparsedit::convert_stream::ConvertStream;
use sparsedit::gguf::{Gguf, GgufHeader, TensorType};
use sparsedit::stream::{sha256_hex, KeepAll, PackStream};

/// diffusers' `config.json` of a tiny DiT (the seeds' diffusers-layout files match it).
pub const TINY_DIT_CONFIG: &str = r#"{"_class_name": "DiTTransformer2DModel", "sample_size": 4, "patch_size": 2, "num_attention_heads": 2, "attention_head_dim": 4, "num_layers": 1, "in_channels": 4, "out_channels": 8, "num_embeds_ada_norm": 2}"#;

/// An `AutoencoderTiny` (TAESD) `config.json`, for `decoder_pack_from_bytes`.
pub const TAESD_CONFIG: &str = r#"{"_class_name": "AutoencoderTiny", "decoder_block_out_channels": [2, 2, 2, 2], "latent_channels": 4, "out_channels": 3, "num_decoder_blocks": [3, 3, 3, 1], "upsampling_scaling_factor": 2, "scaling_factor": 1.0}"#;

const QUANTS: [TensorType; 4] = [TensorType::F32, TensorType::F16, TensorType::Q8_0, TensorType::Q4_0];

/// The chunk sizes `seed` gives for a file of `len` bytes (0: one chunk). Never 0.
pub fn chunk_sizes(seed: u8, len: usize) -> Vec<usize> {
    if seed == 0 {
        return vec![len];
    }
    let max = 4 * seed as u32;
    let mut state = 0x9e37_79b9u32 ^ seed as u32;
    let (mut sizes, mut left) = (Vec::new(), len);
    while left > 0 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (1 + state % max) as usize;
        let n = n.min(left);
        sizes.push(n);
        left -= n;
    }
    sizes
}

/// Splits `file` into the chunks of [`chunk_sizes`].
fn chunks(seed: u8, file: &[u8]) -> Vec<&[u8]> {
    let mut pos = 0;
    chunk_sizes(seed, file.len())
        .into_iter()
        .map(|n| {
            let c = &file[pos..pos + n];
            pos += n;
            c
        })
        .collect()
}

/// The streaming safetensors -> GGUF converter (`ConvertStream`), as the page runs it.
///
/// Byte 0: bits 0-1 the source `config.json` (none / a tiny diffusers DiT / heads only / not
/// JSON), bits 2-3 the quantization, bit 4 announce the size, bit 5 announce the sha256.
/// Byte 1: chunk-size seed. A conversion that finishes must have emitted a pack that parses.
pub fn safetensors_stream(data: &[u8]) {
    let [opt, seed, file @ ..] = data else { return };
    let config = [None, Some(TINY_DIT_CONFIG), Some(r#"{"num_attention_heads": 2}"#), Some("{not json")][(opt & 3) as usize];
    let quant = QUANTS[((opt >> 2) & 3) as usize];
    let size = (opt & 0x10 != 0).then_some(file.len() as u64);
    let sha = (opt & 0x20 != 0).then(|| sha256_hex(file));
    let Ok(mut c) = ConvertStream::new(config, quant, size, sha.as_deref()) else { return };
    let mut out = Vec::new();
    for chunk in chunks(*seed, file) {
        match c.push(chunk) {
            Ok(bytes) => out.extend(bytes),
            Err(_) => {
                assert!(c.push(b"x").is_err(), "a failed conversion must stay failed");
                return;
            }
        }
    }
    if let Ok(summary) = c.finish() {
        assert_eq!(summary.pack_bytes, out.len() as u64);
        let g = Gguf::parse(&out).expect("a finished conversion emits a pack that parses");
        sparsedit::pack::config_from_header(&g.header).expect("a finished conversion's pack has an architecture");
    }
}

/// Safetensors held in memory: `import::read_safetensors_bytes` (the `safetensors` crate's
/// parser), and the page's decoder import `diffusers::decoder_pack_from_bytes`.
pub fn safetensors_bytes(data: &[u8]) {
    let _ = sparsedit::import::read_safetensors_bytes(data, "fuzz input");
    if let Ok(pack) = sparsedit::diffusers::decoder_pack_from_bytes(data, TAESD_CONFIG, TensorType::Q8_0, "fuzz") {
        sparsedit::pack::load_decoder_pack_bytes(&pack).expect("a decoder pack written from safetensors loads");
    }
}

/// The GGUF reader: whole-buffer (`GgufHeader::parse_prefix`, `Gguf::parse` with every tensor
/// decoded, `pack::load_pack_bytes`, `pack::load_decoder_pack_bytes`) and streaming
/// (`stream::PackStream`, in chunks, decoded at the end).
///
/// Byte 0: bit 0 announce the size, bit 1 announce the sha256. Byte 1: chunk-size seed.
pub fn gguf(data: &[u8]) {
    let [opt, seed, file @ ..] = data else { return };
    let _ = GgufHeader::parse_prefix(file);
    if let Ok(g) = Gguf::parse(file) {
        for t in &g.header.tensors {
            assert_eq!(g.tensor_data(t).len(), t.nbytes);
            let values = g.dequantize_f32(t).expect("a validated tensor decodes");
            assert_eq!(Some(values.len()), t.elem_count());
        }
    }
    let _ = sparsedit::pack::load_pack_bytes(file);
    let _ = sparsedit::pack::load_decoder_pack_bytes(file);

    let size = (opt & 1 != 0).then_some(file.len() as u64);
    let sha = (opt & 2 != 0).then(|| sha256_hex(file));
    let Ok(mut s) = PackStream::new(size, sha.as_deref()) else { return };
    let mut sink = KeepAll::default();
    for chunk in chunks(*seed, file) {
        if s.push(chunk, &mut sink).is_err() {
            assert!(s.push(b"x", &mut sink).is_err(), "a failed load must stay failed");
            return;
        }
    }
    if s.finish(&mut sink).is_ok() {
        let _ = sink.into_tensor_map();
    }
}

/// The PyTorch checkpoint reader (`import::read_checkpoint_full`: the zip container, the pickle,
/// strided views), on `data` written to a temporary `model.pt`; then the architecture inference
/// the CLI's `convert` runs on what it read.
pub fn pickle(data: &[u8]) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("sparsedit-fuzz-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let path = dir.join("model.pt");
    std::fs::write(&path, data).expect("a temporary file");
    let r = sparsedit::import::read_checkpoint_full(&path);
    let _ = std::fs::remove_dir_all(&dir);
    if let Ok(ck) = r {
        let _ = sparsedit::import::infer_config(&ck.tensors, &sparsedit::import::ImportOptions::default());
    }
}
