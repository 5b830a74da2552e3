//! diffusers' DiT layout (`DiTTransformer2DModel`), as written by diffusers itself
//! (`tests/fixtures/gen_diffusers.py` from the `dit_dense` weights): snapshot folder, model
//! folder, f32 file and fp16 variant all read back to the official tensors, the official forward
//! and `convert`; refused with a clear reason: embedder copies that differ, a weights file without
//! its config.json, a truncated file, a folder without weights.

mod common;

use std::collections::HashMap;

use candle_core::Tensor;
use common::*;
use sparsedit::import::{infer_config, read_checkpoint, read_checkpoint_full, ImportOptions};
use sparsedit::model::Model;

fn snapshot() -> std::path::PathBuf {
    fixture_dir("dit_dense_diffusers")
}

fn expect_forward(what: &str, map: sparsedit::model::TensorMap, heads: Option<usize>, tol: f32) {
    let cfg = infer_config(&map, &ImportOptions { heads, semantic_size: None }).unwrap();
    assert_eq!(cfg.num_heads, 4, "{what}: heads from config.json");
    assert_eq!((cfg.input_size, cfg.patch_size, cfg.num_classes, cfg.layout.depth()), (8, 2, 7, 3), "{what}");
    let model = Model::from_tensors(cfg, map).unwrap();
    let inp = load_st(&fixture_dir("dit_dense").join("inputs.safetensors"));
    let exp = load_st(&fixture_dir("dit_dense").join("expected.safetensors"));
    let out = model.forward(&inp["x"], &f32s(&inp["t"]), &i64s(&inp["y"]), 4).unwrap();
    assert_close(&format!("{what}: forward vs the official model"), &f32s(&out), &f32s(&exp["out"]), tol);
}

#[test]
fn every_diffusers_form_reads_back_to_the_official_dit() {
    let official = read_checkpoint(&fixture_dir("dit_dense").join("model.pt")).unwrap();
    let f32_forms = [snapshot(), snapshot().join("transformer"), snapshot().join("transformer/diffusion_pytorch_model.safetensors")];
    for path in &f32_forms {
        let ck = read_checkpoint_full(path).unwrap();
        assert_eq!(ck.heads, Some(4));
        let mut keys: Vec<_> = ck.tensors.keys().cloned().collect();
        keys.sort();
        let mut want: Vec<_> = official.keys().cloned().collect();
        want.sort();
        assert_eq!(keys, want, "{}: the official key set", path.display());
        for (k, v) in &official {
            // pos_embed is computed (the official table, to float rounding); the rest is moved.
            let tol = if k == "pos_embed" { 1e-6 } else { 0.0 };
            assert_close(&format!("{} {k}", path.display()), &f32s(&ck.tensors[k]), &f32s(v), tol);
        }
        expect_forward(&path.display().to_string(), ck.tensors, ck.heads, 1e-4);
    }
    // The fp16 variant: the same model with weights rounded to f16.
    let ck = read_checkpoint_full(&snapshot().join("transformer/diffusion_pytorch_model.fp16.safetensors")).unwrap();
    expect_forward("fp16 variant", ck.tensors, ck.heads, 2e-2);
}

#[test]
fn convert_reads_a_snapshot_folder() {
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("dit.gguf");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sparsedit"))
        .args(["convert", snapshot().to_str().unwrap(), "-o", pack.to_str().unwrap(), "--quant", "q8_0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info = std::process::Command::new(env!("CARGO_BIN_EXE_sparsedit")).args(["info", pack.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("heads: 4") && text.contains("classes: 7"), "{text}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn refused(path: &std::path::Path) -> String {
    match read_checkpoint_full(path) {
        Ok(_) => panic!("{} was accepted", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_diffusers_files_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let src = snapshot().join("transformer");
    // Embedder copies that differ between blocks: not a converted DiT.
    let bad = dir.path().join("differs");
    copy_dir(&src, &bad);
    let file = bad.join("diffusion_pytorch_model.safetensors");
    let mut m: HashMap<String, Tensor> = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    let k = "transformer_blocks.2.norm1.emb.class_embedder.embedding_table.weight";
    m.insert(k.to_string(), (m[k].clone() + 1e-3).unwrap());
    std::fs::remove_file(bad.join("diffusion_pytorch_model.fp16.safetensors")).unwrap();
    candle_core::safetensors::save(&m, &file).unwrap();
    let e = refused(&bad);
    assert!(e.contains("transformer_blocks.2.norm1.emb.class_embedder") && e.contains("differs from block 0"), "{e}");
    // ... and `convert` writes nothing.
    let out = dir.path().join("x.gguf");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_sparsedit")).args(["convert", bad.to_str().unwrap(), "-o", out.to_str().unwrap()]).output().unwrap();
    assert!(!run.status.success() && !out.exists());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    // A weights file alone (renamed, so nothing tells sample_size and heads).
    let alone = dir.path().join("alone.safetensors");
    std::fs::copy(src.join("diffusion_pytorch_model.safetensors"), &alone).unwrap();
    let e = refused(&alone);
    assert!(e.contains("config.json"), "{e}");
    // Truncated weights.
    let trunc = dir.path().join("trunc");
    copy_dir(&src, &trunc);
    std::fs::remove_file(trunc.join("diffusion_pytorch_model.fp16.safetensors")).unwrap();
    let f = trunc.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let e = refused(&trunc);
    assert!(e.contains("safetensors"), "{e}");
    // A folder with no weights; a config of another model class.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(refused(&empty).contains("not a diffusers DiT snapshot"));
    let vae = dir.path().join("vae");
    copy_dir(&src, &vae);
    let cfg = std::fs::read_to_string(vae.join("config.json")).unwrap().replace("DiTTransformer2DModel", "AutoencoderKL");
    std::fs::write(vae.join("config.json"), cfg).unwrap();
    assert!(refused(&vae).contains("AutoencoderKL"));
    let unet = dir.path().join("unet");
    copy_dir(&src, &unet);
    let cfg = std::fs::read_to_string(unet.join("config.json")).unwrap().replace("DiTTransformer2DModel", "UNet2DConditionModel");
    std::fs::write(unet.join("config.json"), cfg).unwrap();
    assert!(refused(&unet).contains("UNet2DConditionModel"));
}

#[test]
fn diffusers_autoencoder_folders_are_latent_decoders() {
    use sparsedit::decoder::{canonical_decoder_tensors, Decoder, DecoderConfig, DecoderOptions};
    // AutoencoderTiny (madebyollin/taesd's diffusers file; written by diffusers from the taesd
    // fixture) and AutoencoderKL (the sdvae fixture folder): their decoders decode as the
    // PyTorch references.
    for (case, folder, opts) in [
        ("taesd", "taesd_diffusers", DecoderOptions::default()),
        ("sdvae", "sdvae", DecoderOptions { norm_groups: Some(4), scaling_factor: None }),
    ] {
        let ck = read_checkpoint_full(&fixture_dir(folder)).unwrap();
        let map = canonical_decoder_tensors(ck.tensors).unwrap();
        let cfg = DecoderConfig::infer(&map, &opts).unwrap().expect("a decoder");
        let dec = Decoder::from_tensors(cfg, map).unwrap();
        let exp = load_st(&fixture_dir(case).join("expected.safetensors"));
        let img = dec.decode(&exp["z"]).unwrap();
        assert_close(&format!("{folder}: decoded image"), &f32s(&img), &f32s(&exp["image"]), 1e-3);
    }
    // The CLI reads the norm groups and scaling factor from the folder's config.json.
    let dir = tempfile::tempdir().unwrap();
    for folder in ["taesd_diffusers", "sdvae"] {
        let pack = dir.path().join(format!("{folder}.gguf"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sparsedit"))
            .args(["convert", fixture_dir(folder).to_str().unwrap(), "-o", pack.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{folder}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn autoencoders_in_memory_become_decoder_packs() {
    use sparsedit::decoder::Decoder;
    use sparsedit::diffusers::decoder_pack_from_bytes;
    use sparsedit::gguf::TensorType;
    // As the page gets them from the Hub: the safetensors bytes (for the SD-VAE only the decoder's
    // tensors, as HTTP ranges fetch them) and config.json.
    for (case, folder) in [("taesd", "taesd_diffusers"), ("sdvae", "sdvae")] {
        let dir = fixture_dir(folder);
        let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let full: HashMap<String, Tensor> = candle_core::safetensors::load(dir.join("diffusion_pytorch_model.safetensors"), &candle_core::Device::Cpu).unwrap();
        let decoder_only: HashMap<String, Tensor> =
            full.iter().filter(|(k, _)| k.starts_with("decoder.") || k.starts_with("post_quant_conv.")).map(|(k, v)| (k.clone(), v.clone())).collect();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("w.safetensors");
        candle_core::safetensors::save(&decoder_only, &path).unwrap();
        let pack = decoder_pack_from_bytes(&std::fs::read(&path).unwrap(), &config, TensorType::F32, folder).unwrap();
        let loaded = sparsedit::pack::load_decoder_pack_bytes(&pack).unwrap();
        let dec = Decoder::from_tensors(loaded.cfg, loaded.tensors).unwrap();
        let exp = load_st(&fixture_dir(case).join("expected.safetensors"));
        let img = dec.decode(&exp["z"]).unwrap();
        assert_close(&format!("{folder} from bytes: decoded image"), &f32s(&img), &f32s(&exp["image"]), 1e-3);
    }
    // A DiT is not an autoencoder; broken bytes are a clear error.
    let dit_cfg = std::fs::read_to_string(snapshot().join("transformer/config.json")).unwrap();
    let e = decoder_pack_from_bytes(b"{}", &dit_cfg, TensorType::F32, "x").unwrap_err().to_string();
    assert!(e.contains("not an autoencoder"), "{e}");
    let taesd_cfg = std::fs::read_to_string(fixture_dir("taesd_diffusers").join("config.json")).unwrap();
    let e = decoder_pack_from_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}", &taesd_cfg, TensorType::F32, "x").unwrap_err().to_string();
    assert!(!e.is_empty());
}
