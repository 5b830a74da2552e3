//! Replays the committed `cargo fuzz` corpora (`fuzz/corpus/<target>/`) and the regression
//! inputs (`fuzz/regressions/<target>/`) through the fuzz targets' own entry functions
//! (`fuzz/src/lib.rs`, included below): no input may panic (errors are fine). Fails when a
//! target's corpus is missing or empty. See README.md, "Fuzzing".
//!
//! `make_fuzz_seeds` (ignored) writes the seed files the corpora were grown from.

mod common;

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz_entry;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sparsedit::config::{Config, Layout, SparseLayout};
use sparsedit::gguf::{MetaValue, TensorType};
use sparsedit::model::TensorMap;
use common::diffusers_dit_shapes;

const TARGETS: [(&str, fn(&[u8])); 4] = [
    ("safetensors_stream", fuzz_entry::safetensors_stream),
    ("safetensors_bytes", fuzz_entry::safetensors_bytes),
    ("gguf", fuzz_entry::gguf),
    ("pickle", fuzz_entry::pickle),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

#[test]
fn fuzz_corpus_replays_without_panic() {
    let mut total = 0;
    for (target, run) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(target));
        assert!(!corpus.is_empty(), "fuzz/corpus/{target}/ is missing or empty");
        let regressions = files(&fuzz_dir().join("regressions").join(target));
        for path in corpus.iter().chain(&regressions) {
            let data = std::fs::read(path).unwrap();
            let r = std::panic::catch_unwind(|| run(&data));
            assert!(r.is_ok(), "{target}: {} panicked", path.display());
            total += 1;
        }
    }
    eprintln!("replayed {total} fuzz inputs");
}

// ---------------------------------------------------------------------------------------------
// Regressions found by the fuzzers (each also has its input under fuzz/regressions/)
// ---------------------------------------------------------------------------------------------

/// A pack header (valid metadata) with one tensor claiming `bytes` bytes of F32.
fn pack_header_claiming(bytes: usize) -> Vec<u8> {
    let meta = sparsedit::pack::config_metadata(&tiny_dit(8), "huge");
    let shape = [bytes / 4];
    let entries = [sparsedit::gguf::TensorEntry { name: "x_embedder.proj.bias", shape: &shape, ty: TensorType::F32 }];
    sparsedit::gguf::header_bytes(&meta, &entries).unwrap().0
}

/// The streaming pack loader, without an announced size (or with a lying one), took a header's
/// word for a tensor's size and reserved it whole when its first byte arrived: a 100 GB claim
/// was a 100 GB allocation (an abort). Now the claim is refused with the header, and a tensor's
/// buffer only grows with the bytes that actually arrive.
#[test]
fn pack_stream_refuses_a_huge_tensor_claim_before_allocating() {
    use sparsedit::stream::{KeepAll, PackStream};
    let header = pack_header_claiming(100 << 30);
    for size in [None, Some(header.len() as u64 + (100 << 30))] {
        let mut s = PackStream::new(size, None).unwrap();
        let mut sink = KeepAll::default();
        let r = s.push(&header, &mut sink).and_then(|()| s.push(&[0u8; 4096], &mut sink));
        let e = r.expect_err("a 100 GB tensor is refused").to_string();
        assert!(e.contains("x_embedder.proj.bias") && e.contains("bytes"), "{e}");
    }
    // Below the limit, the buffer grows with the data only (here: 1 GiB claimed, 4 KiB sent).
    let header = pack_header_claiming(1 << 30);
    let mut s = PackStream::new(None, None).unwrap();
    let mut sink = KeepAll::default();
    s.push(&header, &mut sink).unwrap();
    s.push(&[0u8; 4096], &mut sink).unwrap();
    let e = s.finish(&mut sink).expect_err("truncated").to_string();
    assert!(e.contains("ends inside tensor"), "{e}");
}

/// candle's pickle reader allocated a tensor of the shape a pickle claims before reading its
/// storage (`vec![0f32; elem_count]`), and the strided gather reserved an index per claimed
/// element: a 500-byte .pt claiming 2^34 elements was a 64 GiB allocation (an abort). Now every
/// view must lie inside the storage bytes actually there, before anything is allocated for it.
#[test]
fn pickle_views_beyond_their_storage_are_refused_before_allocating() {
    for (file, what) in [("huge-contiguous.pt", "reaches past"), ("huge-broadcast.pt", "elements, its storage"), ("huge-fortran.pt", "reaches past"), ("past-storage.pt", "reaches past")] {
        let path = fuzz_dir().join("regressions/pickle").join(file);
        let e = sparsedit::import::read_checkpoint_full(&path).err().unwrap_or_else(|| panic!("{file} is refused")).to_string();
        assert!(e.contains(what), "{file}: {e}");
    }
}

/// candle's pickle reader allocates a `BinUnicode` string's claimed length (up to 4 GiB) before
/// reading it: a .pt whose `data.pkl` claims a 4 GiB string was a 4 GiB allocation (found by the
/// `pickle` fuzzer). The opcodes are now walked first and such a length is refused.
#[test]
fn pickle_string_longer_than_its_pickle_is_refused() {
    // the fuzzer's input (its data.pkl also fails its CRC, which reading it whole now notices)
    let path = fuzz_dir().join("regressions/pickle/string-length-past-pickle.pt");
    assert!(sparsedit::import::read_checkpoint_full(&path).is_err());
    // the same claim in an intact archive
    let path = fuzz_dir().join("regressions/pickle/string-length-4g.pt");
    let e = sparsedit::import::read_checkpoint_full(&path).err().expect("refused").to_string();
    assert!(e.contains("4294967295-byte string") && e.contains("runs past the"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------------

/// A tiny dense DiT of width `hidden` (2 heads, 1 block, 4x4 latents of 4 channels, 2 classes).
fn tiny_dit(hidden: usize) -> Config {
    Config {
        input_size: 4,
        patch_size: 2,
        in_channels: 4,
        hidden_size: hidden,
        num_heads: 2,
        mlp_hidden: 4 * hidden,
        num_classes: 2,
        class_null: true,
        learn_sigma: true,
        layout: Layout::Dense { depth: 1 },
        semantic_size: 1,
        num_frames: None,
        trained_rates: None,
        pooled_middle: None,
    }
}

fn tiny_sparse() -> Config {
    let mut c = tiny_dit(8);
    c.input_size = 8;
    c.layout = Layout::Sparse(SparseLayout { num_poolingformer: 1, num_sdtm: 1, group: [1, 1, 1, 0], num_top: 1 });
    c.semantic_size = 2;
    c
}

fn tiny_latte() -> Config {
    let mut c = tiny_dit(8);
    c.num_frames = Some(2);
    c.layout = Layout::Dense { depth: 2 };
    c
}

fn safetensors_of(map: &TensorMap) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    candle_core::safetensors::save(map, &p).unwrap();
    std::fs::read(p).unwrap()
}

/// diffusers' layout of a tiny DiT matching `fuzz_entry::TINY_DIT_CONFIG` (width 8, 1 block).
fn tiny_diffusers_dit() -> TensorMap {
    let v = diffusers_dit_shapes(8, 2, 1, 2);
    let mut map = TensorMap::new();
    for (k, (name, shape)) in v.into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = (0..n).map(|i| ((i * 7 + k * 13) % 17) as f32 / 17.0 - 0.5).collect();
        map.insert(name, Tensor::from_vec(vals, shape, &Device::Cpu).unwrap());
    }
    map
}

/// The tiny TAESD decoder of `fuzz_entry::TAESD_CONFIG`: the fixture's diffusers TAESD with
/// every 16-channel dim cut to 2.
fn tiny_taesd() -> TensorMap {
    let path = common::fixture_dir("taesd_diffusers").join("diffusion_pytorch_model.safetensors");
    let full = sparsedit::import::read_safetensors_bytes(&std::fs::read(path).unwrap(), "taesd").unwrap();
    let mut map = TensorMap::new();
    for (name, t) in full {
        if !name.starts_with("decoder.") {
            continue;
        }
        let mut t = t;
        for d in 0..t.rank() {
            if t.dim(d).unwrap() == 16 {
                t = t.narrow(d, 0, 2).unwrap();
            }
        }
        map.insert(name, t.contiguous().unwrap());
    }
    map
}

fn cast(map: &TensorMap, dtype: candle_core::DType) -> TensorMap {
    map.iter().map(|(k, v)| (k.clone(), v.to_dtype(dtype).unwrap())).collect()
}

/// Writes the seed inputs into `fuzz/corpus/<target>/seed-*` (run before fuzzing; `cargo fuzz
/// cmin` then keeps what adds coverage). The pickle seeds come from `fuzz/make_pickle_seeds.py`,
/// which turns the `official-*.safetensors` written here into PyTorch zip checkpoints.
#[test]
#[ignore]
fn make_fuzz_seeds() {
    use candle_core::DType;
    let corpus = fuzz_dir().join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let d = corpus.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("seed-{name}")), bytes).unwrap();
    };
    let raw = fuzz_dir().join("seeds-raw");
    std::fs::create_dir_all(&raw).unwrap();

    // safetensors: diffusers' layout (with TINY_DIT_CONFIG: option bits 0-1 = 1), official
    // layouts (no config / heads only), in the page's chunkings.
    let diff = tiny_diffusers_dit();
    let (f16, bf16, f32) = (safetensors_of(&cast(&diff, DType::F16)), safetensors_of(&cast(&diff, DType::BF16)), safetensors_of(&diff));
    write("safetensors_stream", "diffusers-f16", &[&[0x01 | 0x10 | 0x20, 0][..], &f16].concat());
    write("safetensors_stream", "diffusers-bf16-q8-chunks", &[&[0x01 | 0x08, 7][..], &bf16].concat());
    write("safetensors_stream", "diffusers-f32-f16-chunks", &[&[0x01 | 0x04 | 0x10, 200][..], &f32].concat());
    for (name, cfg) in [("dit", tiny_dit(8)), ("sparse", tiny_sparse()), ("latte", tiny_latte())] {
        let t = sparsedit::bench::random_tensors(&cfg, 1).unwrap();
        let st = safetensors_of(&cast(&t, DType::F16));
        write("safetensors_stream", &format!("official-{name}"), &[&[0x02, 31][..], &st].concat());
        std::fs::write(raw.join(format!("official-{name}.safetensors")), safetensors_of(&t)).unwrap();
        if name == "dit" {
            write("safetensors_bytes", "official-dit", &st);
        }
    }
    write("safetensors_bytes", "taesd", &safetensors_of(&cast(&tiny_taesd(), DType::F16)));
    write("safetensors_bytes", "fixture-inputs", &std::fs::read(common::fixture_dir("dit_dense").join("inputs.safetensors")).unwrap());

    // GGUF: model packs (dense, sparse, video; F32 / Q8_0 / Q4_0), a decoder pack, and a plain
    // GGUF file with every tensor type and metadata kind.
    for (name, cfg, quant, opt, seed) in [
        ("dit-f32", tiny_dit(8), TensorType::F32, 3u8, 0u8),
        ("dit32-q8", tiny_dit(32), TensorType::Q8_0, 1, 13),
        ("dit32-q4", tiny_dit(32), TensorType::Q4_0, 0, 255),
        ("sparse-f16", tiny_sparse(), TensorType::F16, 2, 5),
        ("latte-f32", tiny_latte(), TensorType::F32, 0, 1),
    ] {
        let t = sparsedit::bench::random_tensors(&cfg, 2).unwrap();
        let mut out = Vec::new();
        sparsedit::pack::write_pack(&mut out, &cfg, &t, quant, "seed", |_, _| {}).unwrap();
        write("gguf", name, &[&[opt, seed][..], &out].concat());
    }
    let pack = sparsedit::diffusers::decoder_pack_from_bytes(&safetensors_of(&tiny_taesd()), fuzz_entry::TAESD_CONFIG, TensorType::Q8_0, "seed").unwrap();
    write("gguf", "taesd-decoder", &[&[1u8, 64][..], &pack].concat());
    let vals: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
    let enc = |v: &[f32], ty| std::borrow::Cow::Owned(sparsedit::gguf::encode(v, ty).unwrap());
    use sparsedit::gguf::TensorToWrite;
    let meta = vec![
        ("general.name".to_string(), MetaValue::String("tiny".into())),
        ("general.alignment".to_string(), MetaValue::U32(32)),
        ("a.labels".to_string(), MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(-2)])),
        ("a.nested".to_string(), MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::U8(1)]), MetaValue::Array(vec![])])),
        ("a.f".to_string(), MetaValue::F64(1.5)),
        ("a.b".to_string(), MetaValue::Bool(true)),
        ("a.u".to_string(), MetaValue::U64(7)),
    ];
    let tensors = [
        TensorToWrite { name: "a.f32", shape: &[2, 3], ty: TensorType::F32, data: enc(&vals[..6], TensorType::F32) },
        TensorToWrite { name: "b.q8", shape: &[1, 32], ty: TensorType::Q8_0, data: enc(&vals[..32], TensorType::Q8_0) },
        TensorToWrite { name: "c.f16", shape: &[3], ty: TensorType::F16, data: enc(&vals[..3], TensorType::F16) },
        TensorToWrite { name: "d.q4", shape: &[32], ty: TensorType::Q4_0, data: enc(&vals[32..], TensorType::Q4_0) },
    ];
    let g = sparsedit::gguf::write_to_vec(&meta, &tensors).unwrap();
    write("gguf", "all-types", &[&[0u8, 3][..], &g].concat());

    // The regression input of `pack_stream_refuses_a_huge_tensor_claim_before_allocating`.
    let reg = fuzz_dir().join("regressions/gguf");
    std::fs::create_dir_all(&reg).unwrap();
    std::fs::write(reg.join("huge-tensor-claim"), [&[0u8, 0][..], &pack_header_claiming(100 << 30), &[0u8; 4096]].concat()).unwrap();

    // The seeds are valid: each converts / loads.
    for p in files(&corpus.join("safetensors_stream")) {
        let data = std::fs::read(&p).unwrap();
        let config = [None, Some(fuzz_entry::TINY_DIT_CONFIG), Some(r#"{"num_attention_heads": 2}"#)][(data[0] & 3) as usize];
        let mut c = sparsedit::convert_stream::ConvertStream::new(config, TensorType::Q8_0, None, None).unwrap();
        c.push(&data[2..]).unwrap();
        c.finish().unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    for p in files(&corpus.join("gguf")) {
        let data = std::fs::read(&p).unwrap();
        sparsedit::gguf::Gguf::parse(&data[2..]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}

/// The pickle seeds `fuzz/make_pickle_seeds.py` writes are valid checkpoints (run after it).
#[test]
#[ignore]
fn pickle_seeds_load() {
    let want = sparsedit::import::read_safetensors_bytes(&std::fs::read(fuzz_dir().join("seeds-raw/official-dit.safetensors")).unwrap(), "dit").unwrap();
    for p in files(&fuzz_dir().join("corpus/pickle")).into_iter().filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("seed-")) {
        let ck = sparsedit::import::read_checkpoint_full(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if name.starts_with("seed-dit") {
            assert_eq!(ck.tensors.len(), want.len(), "{name}");
            for (k, t) in &want {
                let got = ck.tensors[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(got, t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), "{name} {k}");
            }
        }
        eprintln!("{name}: {} tensors", ck.tensors.len());
    }
}
