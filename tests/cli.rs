//! The `sparsedit` command line end to end: convert official-layout checkpoints to packs, run
//! forward and sample through the packs, and refuse bad input with status 2 and one line.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use common::*;


fn convert(case: &str, ckpt: &str, quant: &str, dir: &Path) -> std::path::PathBuf {
    let cfg = fixture_config(case);
    let out = dir.join(format!("{case}-{quant}.gguf"));
    let heads = cfg.num_heads.to_string();
    let sem = cfg.semantic_size.to_string();
    let stdout = ok(&["convert", s(&fixture_dir(case).join(ckpt)), "-o", s(&out), "--quant", quant, "--heads", &heads, "--semantic-size", &sem]);
    assert!(stdout.contains("max abs err") && stdout.contains("wrote"), "{stdout}");
    out
}

fn forward_out(pack: &Path, case: &str, dir: &Path, tag: &str) -> HashMap<String, Tensor> {
    forward_on(pack, case, dir, tag, "auto")
}

fn forward_on(pack: &Path, case: &str, dir: &Path, tag: &str, backend: &str) -> HashMap<String, Tensor> {
    let out = dir.join(format!("{case}-{tag}-{backend}-out.safetensors"));
    ok(&["forward", "--model", s(pack), "--inputs", s(&fixture_dir(case).join("inputs.safetensors")), "--out", s(&out), "--backend", backend]);
    load_st(&out)
}

#[test]
fn convert_forward_matches_reference_for_every_case() {
    let dir = tempfile::tempdir().unwrap();
    for (case, ckpt) in [
        ("sparse_nondiv", "model.pt"),
        ("sparse_p4_gray", "model.safetensors"),
        ("sparse_8to3", "model.pt"),
        ("dit_dense", "model.pt"),
    ] {
        let pack = convert(case, ckpt, "f32", dir.path());
        let want = load_st(&fixture_dir(case).join("expected.safetensors"));
        for backend in backends() {
            let got = forward_on(&pack, case, dir.path(), "f32", backend);
            let tol = if backend == "cpu" { 1e-4 } else { 1e-3 };
            assert_close(&format!("{case} cli forward ({backend})"), &f32s(&got["out"]), &f32s(&want["out"]), tol);
            assert_close(&format!("{case} cli forward cfg ({backend})"), &f32s(&got["out_cfg"]), &f32s(&want["out_cfg"]), tol);
        }
    }
}

#[test]
fn quantized_packs_stay_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let case = "sparse_nondiv";
    let want = load_st(&fixture_dir(case).join("expected.safetensors"));
    let want_out = f32s(&want["out"]);
    let mut sizes = Vec::new();
    for (quant, tol) in [("f16", 1e-3), ("q8_0", 2e-2), ("q4_0", 1e-1)] {
        let pack = convert(case, "model.pt", quant, dir.path());
        sizes.push(std::fs::metadata(&pack).unwrap().len());
        let got = forward_out(&pack, case, dir.path(), quant);
        let err = max_rel_err(&f32s(&got["out"]), &want_out);
        eprintln!("{quant}: max per-element relative error {err:.3e}");
        assert_close_to_scale(&format!("{case} {quant} forward"), &f32s(&got["out"]), &want_out, tol);
    }
    assert!(sizes[1] < sizes[0] && sizes[2] < sizes[1], "pack sizes f16 > q8_0 > q4_0: {sizes:?}");
}

#[test]
fn info_describes_the_pack() {
    let dir = tempfile::tempdir().unwrap();
    let pack = convert("sparse_nondiv", "model.pt", "q8_0", dir.path());
    let text = ok(&["info", s(&pack)]);
    assert!(text.contains("architecture: sparsedit"), "{text}");
    assert!(text.contains("dumbbell_blocks.1.token_recover_blocks.0"), "{text}");
    assert!(text.contains("Q8_0"), "{text}");
    let dense = convert("dit_dense", "model.pt", "f32", dir.path());
    assert!(ok(&["info", s(&dense)]).contains("architecture: dit"));
}

#[test]
fn trained_rates_travel_with_the_pack() {
    // convert --trained-rates records the fine-tuning schedule; it survives a pack -> pack
    // convert, `info` shows it, and `sample --schedule trained` is that schedule exactly.
    let dir = tempfile::tempdir().unwrap();
    let case = "sparse_nondiv";
    let cfg = fixture_config(case);
    let (heads, sem) = (cfg.num_heads.to_string(), cfg.semantic_size.to_string());
    let f32_pack = dir.path().join("rates-f32.gguf");
    let ckpt = fixture_dir(case).join("model.pt");
    ok(&["convert", s(&ckpt), "-o", s(&f32_pack), "--heads", &heads, "--semantic-size", &sem, "--trained-rates", "0.3:0.75"]);
    let pack = dir.path().join("rates-q8.gguf");
    ok(&["convert", s(&f32_pack), "-o", s(&pack), "--quant", "q8_0"]);
    let text = ok(&["info", s(&pack)]);
    assert!(text.contains("fine-tuned with the timestep schedule 0.3:0.75"), "{text}");
    let f = load_st(&fixture_dir(case).join("ddim.safetensors"));
    let noise = dir.path().join("z.safetensors");
    let z0: HashMap<String, Tensor> = [("z".to_string(), f["z"].narrow(0, 0, 1).unwrap())].into_iter().collect();
    candle_core::safetensors::save(&z0, &noise).unwrap();
    let sample = |schedule: &str, tag: &str| {
        let latent = dir.path().join(format!("{tag}.safetensors"));
        let args = ["sample", "--model", s(&pack), "--class", "1", "--steps", "4", "--sampler", "ddim", "--noise", s(&noise)];
        ok(&[&args[..], &["--schedule", schedule, "--latent-out", s(&latent), "--backend", "cpu"]].concat());
        f32s(&load_st(&latent)["sample"])
    };
    let (trained, given, fixed) = (sample("trained", "trained"), sample("0.3:0.75", "given"), sample("0.0:0.0", "dense-rate"));
    assert_eq!(trained, given, "--schedule trained is the recorded rates");
    assert_ne!(trained, fixed, "the schedule reaches the model");
    // Refused: rates on a dense model, bad rates, `trained` on a pack that records none.
    let dense = fixture_dir("dit_dense").join("model.pt");
    let dense_heads = fixture_config("dit_dense").num_heads.to_string();
    let err = fails(&["convert", s(&dense), "-o", s(&dir.path().join("d.gguf")), "--heads", &dense_heads, "--trained-rates", "0.3:0.75"]);
    assert!(err.contains("dense"), "{err}");
    let err = fails(&["convert", s(&ckpt), "-o", s(&dir.path().join("b.gguf")), "--heads", &heads, "--trained-rates", "0.9:0.5"]);
    assert!(err.contains("r_min <= r_max"), "{err}");
    let plain = convert(case, "model.pt", "f32", dir.path());
    let err = fails(&["sample", "--model", s(&plain), "--class", "1", "--steps", "2", "--schedule", "trained"]);
    assert!(err.contains("records no training schedule"), "{err}");
}

#[test]
fn dit_to_sparsedit_command_matches_reference() {
    let dir = tempfile::tempdir().unwrap();
    let case = "dit_to_sparsedit";
    let out = dir.path().join("converted.gguf");
    ok(&["dit-to-sparsedit", s(&fixture_dir(case).join("dense.pt")), "-o", s(&out), "--layout", "1,1,1:2:1:0,1", "--heads", "3", "--semantic-size", "2"]);
    let got = forward_out(&out, case, dir.path(), "conv");
    let want = load_st(&fixture_dir(case).join("expected.safetensors"));
    assert_close("dit-to-sparsedit forward", &f32s(&got["out"]), &f32s(&want["out"]), 1e-4);
}

#[test]
fn sample_reproduces_reference_ddim_from_given_noise() {
    let dir = tempfile::tempdir().unwrap();
    for case in ["sparse_nondiv", "sparse_p4_gray"] {
        let pack = convert(case, if case == "sparse_p4_gray" { "model.safetensors" } else { "model.pt" }, "f32", dir.path());
        let f = load_st(&fixture_dir(case).join("ddim.safetensors"));
        // Rows are independent: sample row 0 alone with its label.
        let z0 = f["z"].narrow(0, 0, 1).unwrap();
        let label = i64s(&f["y"])[0].to_string();
        let scale = f32s(&f["cfg_scale"])[0].to_string();
        let noise = dir.path().join(format!("{case}-z.safetensors"));
        let m: HashMap<String, Tensor> = [("z".to_string(), z0)].into_iter().collect();
        candle_core::safetensors::save(&m, &noise).unwrap();
        for backend in backends() {
            let latent = dir.path().join(format!("{case}-{backend}-sample.safetensors"));
            // ddim.safetensors was sampled with respacing "ddim10" (the default is "10" since).
            ok(&[
                "sample", "--model", s(&pack), "--class", &label, "--steps", "10", "--sampler", "ddim", "--respacing", "ddim10", "--cfg", &scale,
                "--noise", s(&noise), "--latent-out", s(&latent), "--backend", backend,
            ]);
            let got = load_st(&latent);
            let want = f["sample"].narrow(0, 0, 1).unwrap();
            assert_close(&format!("{case} cli ddim ({backend})"), &f32s(&got["sample"]), &f32s(&want), 1e-3);
        }
    }
}

#[test]
fn sample_defaults_match_the_official_ddim() {
    // No --sampler / --respacing: DDIM on respacing "10" (create_diffusion("10") of the official
    // sample.py, steps up to t = 999), eta 0; gen.py's ddim_default fixture, row 0 with its label.
    let dir = tempfile::tempdir().unwrap();
    for (case, ckpt) in [("sparse_nondiv", "model.pt"), ("sparse_p4_gray", "model.safetensors")] {
        let pack = convert(case, ckpt, "f32", dir.path());
        let f = load_st(&fixture_dir(case).join("ddim_default.safetensors"));
        let label = i64s(&f["y"])[0].to_string();
        let scale = f32s(&f["cfg_scale"])[0].to_string();
        let noise = dir.path().join(format!("{case}-z-default.safetensors"));
        let z0: HashMap<String, Tensor> = [("z".to_string(), f["z"].narrow(0, 0, 1).unwrap())].into_iter().collect();
        candle_core::safetensors::save(&z0, &noise).unwrap();
        let want = f32s(&f["sample"].narrow(0, 0, 1).unwrap());
        for backend in backends() {
            let latent = dir.path().join(format!("{case}-{backend}-default.safetensors"));
            let args = ["sample", "--model", s(&pack), "--class", &label, "--steps", "10", "--cfg", &scale, "--noise", s(&noise), "--latent-out", s(&latent), "--backend", backend];
            let out = sparsedit(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "sparsedit {args:?} failed: {stderr}");
            assert!(stderr.contains("10 steps (10)"), "the default respacing is \"10\": {stderr}");
            let got = f32s(&load_st(&latent)["sample"]);
            let (i, err) = worst(&got, &want);
            eprintln!("{case} cli default ddim ({backend}): max relative error {err:.3e} at index {i} (got {}, want {})", got[i], want[i]);
            assert_close(&format!("{case} cli default ddim ({backend})"), &got, &want, 1e-3);
        }
    }
}

/// The index and size of the largest relative error, in `assert_close`'s measure
/// (|a - b| / max(|b|, rms(want))).
fn worst(got: &[f32], want: &[f32]) -> (usize, f32) {
    let rms = (want.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / want.len().max(1) as f64).sqrt() as f32;
    let rel = got.iter().zip(want).map(|(a, b)| (a - b).abs() / b.abs().max(rms).max(1e-30));
    rel.enumerate().fold((0, 0.0), |m, (i, e)| if e > m.1 { (i, e) } else { m })
}

#[test]
fn sample_writes_png_for_pixel_models_and_is_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let pack = convert("sparse_p4_gray", "model.safetensors", "q8_0", dir.path());
    let run = |seed: &str, name: &str| {
        let png = dir.path().join(name);
        let lat = dir.path().join(format!("{name}.safetensors"));
        ok(&["sample", "--model", s(&pack), "--class", "1", "--steps", "4", "--seed", seed, "--num", "2", "--schedule", "0.3:0.6", "--out", s(&png), "--latent-out", s(&lat)]);
        let img = std::fs::read(&png).unwrap();
        assert_eq!(&img[1..4], b"PNG");
        f32s(&load_st(&lat)["sample"])
    };
    let a = run("7", "a.png");
    let b = run("7", "b.png");
    let c = run("8", "c.png");
    assert_eq!(a, b, "same seed, same sample");
    assert_ne!(a, c, "different seed, different sample");
}

#[test]
fn gpu_and_cpu_samplers_agree_for_a_seed() {
    let b = backends();
    if b.len() < 2 {
        eprintln!("skipped: no GPU adapter");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pack = convert("sparse_nondiv", "model.pt", "q8_0", dir.path());
    let run = |backend: &str, sampler: &str| {
        let lat = dir.path().join(format!("{backend}-{sampler}.safetensors"));
        ok(&["sample", "--model", s(&pack), "--class", "2", "--steps", "6", "--sampler", sampler, "--eta", "0.3", "--seed", "11", "--num", "2", "--schedule", "0.2:0.8", "--latent-out", s(&lat), "--backend", backend]);
        f32s(&load_st(&lat)["sample"])
    };
    for sampler in ["ddpm", "ddim"] {
        let (c, g) = (run("cpu", sampler), run("gpu", sampler));
        assert_close(&format!("{sampler}: GPU vs CPU sample, same seed"), &g, &c, 1e-3);
    }
}

#[test]
fn random_pack_is_seeded_and_loads() {
    // Full-size layouts without the real checkpoints: random weights with the official names.
    let dir = tempfile::tempdir().unwrap();
    let make = |seed: &str, quant: &str, name: &str| {
        let p = dir.path().join(name);
        ok(&["random-pack", "--preset", "sparsedit-tiny", "--quant", quant, "--seed", seed, "-o", s(&p)]);
        std::fs::read(&p).unwrap()
    };
    // --quant takes any case, as the pack's own type names (Q8_0).
    let (a, b, c) = (make("3", "q8_0", "a.gguf"), make("3", "Q8_0", "b.gguf"), make("4", "q8_0", "c.gguf"));
    assert_eq!(a, b, "same seed, same pack");
    assert_ne!(a, c, "another seed, other weights");
    let info = ok(&["info", s(&dir.path().join("a.gguf"))]);
    assert!(info.contains("sparsedit-tiny-random-seed3") && info.contains("Q8_0"), "{info}");
    let png = dir.path().join("x.png");
    ok(&["sample", "--model", s(&dir.path().join("a.gguf")), "--class", "2", "--steps", "2", "--backend", "cpu", "--out", s(&png)]);
    let err = fails(&["random-pack", "--preset", "dit-xl9", "-o", s(&dir.path().join("z.gguf"))]);
    assert!(err.contains("unknown preset"), "{err}");
    assert!(!dir.path().join("z.gguf").exists());
}

#[test]
fn random_pack_decoders_have_the_published_sizes() {
    // TAESD at its published width: seeded, loads, decodes a latent to 8x its size.
    let dir = tempfile::tempdir().unwrap();
    let taesd = dir.path().join("taesd.gguf");
    ok(&["random-pack", "--preset", "taesd", "--quant", "f32", "--seed", "5", "-o", s(&taesd)]);
    let info = ok(&["info", s(&taesd)]);
    assert!(info.contains("architecture: taesd") && info.contains("parameters: 1222531 "), "{info}");
    let z = dir.path().join("z.safetensors");
    let zt = Tensor::from_vec(random_nonzero(9, 4 * 3 * 5, 1.0), (1, 4, 3, 5), &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("z".to_string(), zt)]), &z).unwrap();
    let img = dir.path().join("img.safetensors");
    ok(&["decode", "--decoder", s(&taesd), "--latents", s(&z), "--out", s(&img), "--backend", "cpu"]);
    let out = candle_core::safetensors::load(&img, &Device::Cpu).unwrap();
    assert_eq!(out["image"].dims(), [1, 3, 24, 40]);
    // The SD-VAE decoder's layout: the published parameter count (no weights are written).
    let sd = sparsedit::decoder::DecoderConfig::preset("sdvae").unwrap();
    let params: usize = sd.expected_tensors().unwrap().iter().map(|(_, shape)| shape.iter().product::<usize>()).sum();
    assert_eq!(params, 49_490_199);
    let err = fails(&["random-pack", "--preset", "taesd2", "-o", s(&dir.path().join("x.gguf"))]);
    assert!(err.contains("unknown preset"), "{err}");
}

#[test]
fn flops_json_matches_official_log() {
    let text = ok(&["flops", "--preset", "sparsedit-xl2-256", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let modules = v["modules"].as_array().unwrap();
    let get = |name: &str| modules.iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("{name}"))["linear_macs"].as_u64().unwrap();
    assert!((get("dumbbell_blocks.0") as f64 / 1e9 - 12.967).abs() < 5e-4);
    assert!((get("normal_blocks.0") as f64 / 1e9 - 4.087).abs() < 5e-4);
    assert!((get("final_layer") as f64 / 1e6 - 13.271).abs() < 5e-3);
    let total = v["total_linear_macs"].as_u64().unwrap() as f64 / 1e9;
    assert!((total - 67.6).abs() < 0.1, "{total}");
    let dense: serde_json::Value = serde_json::from_str(&ok(&["flops", "--preset", "dit-xl2-256", "--json"])).unwrap();
    let all = (dense["total_linear_macs"].as_u64().unwrap() + dense["total_attention_macs"].as_u64().unwrap()) as f64 / 1e9;
    assert!((all - 118.6).abs() < 0.15, "{all}");
    let table = ok(&["flops", "--preset", "sparsedit-xl2-512"]);
    assert!(table.contains("poolingformer_blocks.1"), "{table}");
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let pack = convert("sparse_8to3", "model.pt", "q4_0", dir.path());
    let bytes = std::fs::read(&pack).unwrap();
    // Truncated pack.
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = fails(&["info", s(&cut)]);
    assert!(err.contains("GGUF"), "{err}");
    let inputs = fixture_dir("sparse_8to3").join("inputs.safetensors");
    let out = dir.path().join("o.safetensors");
    fails(&["forward", "--model", s(&cut), "--inputs", s(&inputs), "--out", s(&out)]);
    assert!(!out.exists(), "no output on failure");
    // Not a pack at all.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"this is not a model").unwrap();
    fails(&["info", s(&junk)]);
    // Missing file, unsupported quant type, out-of-range class, bad schedule, no --heads.
    fails(&["info", s(&dir.path().join("nope.gguf"))]);
    let ckpt = fixture_dir("sparse_8to3").join("model.pt");
    let err = fails(&["convert", s(&ckpt), "-o", s(&dir.path().join("x.gguf")), "--quant", "q5_1", "--heads", "4"]);
    assert!(err.to_lowercase().contains("q5_1"), "{err}");
    let err = fails(&["convert", s(&ckpt), "-o", s(&dir.path().join("x.gguf"))]);
    assert!(err.contains("--heads"), "{err}");
    let err = fails(&["sample", "--model", s(&pack), "--class", "11", "--steps", "2"]);
    assert!(err.contains("out of range 0..=10") && err.contains("10 = null label"), "{err}");
    fails(&["sample", "--model", s(&pack), "--class", "-1", "--steps", "2"]);
    // The null label is a class like the others (an unconditional sample), as on the page.
    ok(&["sample", "--model", s(&pack), "--class", "10", "--steps", "2", "--backend", "cpu"]);
    fails(&["sample", "--model", s(&pack), "--class", "1", "--steps", "2", "--schedule", "0.9:0.1"]);
    let err = fails(&["sample", "--model", s(&pack), "--class", "1", "--steps", "2", "--sampler", "euler"]);
    assert!(err.contains("'euler'") && err.contains("ddim, ddpm"), "{err}");
    let err = fails(&["sample", "--model", s(&pack), "--class", "1", "--steps", "2", "--backend", "tpu"]);
    assert!(err.contains("'tpu'") && err.contains("gpu, cpu, auto"), "{err}");
    fails(&["sample", "--model", s(&pack), "--steps", "2"]);
    // Wrong input shapes / labels.
    let bad = dir.path().join("bad.safetensors");
    let x = Tensor::ones((1, 4, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    let t = Tensor::new(&[3i64], &Device::Cpu).unwrap();
    let y = Tensor::new(&[2i64], &Device::Cpu).unwrap();
    let m: HashMap<String, Tensor> = [("x".into(), x), ("t".into(), t), ("y".into(), y)].into_iter().collect();
    candle_core::safetensors::save(&m, &bad).unwrap();
    let err = fails(&["forward", "--model", s(&pack), "--inputs", s(&bad), "--out", s(&out)]);
    assert!(err.contains("shape"), "{err}");
    // A corrupted checkpoint.
    let broken = dir.path().join("broken.pt");
    let mut ck = std::fs::read(&ckpt).unwrap();
    ck.truncate(ck.len() / 2);
    std::fs::write(&broken, &ck).unwrap();
    fails(&["convert", s(&broken), "-o", s(&dir.path().join("y.gguf")), "--heads", "4"]);
    assert!(!dir.path().join("y.gguf").exists());
}

#[test]
fn video_convert_forward_sample_through_packs() {
    // Official Latte checkpoints (`.pt` with ema / safetensors) and the crate's sparse Latte:
    // convert -> forward (rank-5 x) and sample --noise z (n, F, C, H, W) -> --latent-out of the
    // same rank, as the official loop (CFG on 4 channels, DDIM "10").
    let dir = tempfile::tempdir().unwrap();
    for (case, ckpt) in [("latte_f3_p2", "model.pt"), ("latte_f8_p4_uncond", "model.safetensors"), ("sparselatte_f3", "model.safetensors")] {
        let pack = convert(case, ckpt, "f32", dir.path());
        let info = ok(&["info", s(&pack)]);
        assert!(info.contains("frames of") && info.contains("(temporal: over the frames"), "{info}");
        let want = load_st(&fixture_dir(case).join("expected.safetensors"));
        // what `forward` writes (other grids and the pooled middle are tests/latte.rs's and
        // tests/gpu_latte.rs's), on the CPU and on the GPU (lavapipe in CI)
        for backend in common::backends() {
            let tol = if backend == "cpu" { 1e-4 } else { 1e-3 };
            let got = forward_on(&pack, case, dir.path(), "f32", backend);
            for k in ["out", "out_cfg"].into_iter().filter(|k| want.contains_key(*k)) {
                assert_close(&format!("{case} cli forward {k} ({backend})"), &f32s(&got[k]), &f32s(&want[k]), tol);
            }
        }
        let f = load_st(&fixture_dir(case).join("ddim.safetensors"));
        let noise = dir.path().join(format!("{case}-z.safetensors"));
        let z0: HashMap<String, Tensor> = [("z".to_string(), f["z"].narrow(0, 0, 1).unwrap())].into_iter().collect();
        candle_core::safetensors::save(&z0, &noise).unwrap();
        for backend in common::backends() {
            let latent = dir.path().join(format!("{case}-{backend}-sample.safetensors"));
            let label = i64s(&f["y"])[0].to_string();
            let scale = f32s(&f["cfg_scale"])[0].to_string();
            let mut args = vec!["sample", "--model", s(&pack), "--steps", "10", "--sampler", "ddim", "--cfg", &scale, "--noise", s(&noise)];
            args.extend(["--latent-out", s(&latent), "--backend", backend]);
            if fixture_config(case).is_class_conditional() {
                args.extend(["--class", &label]);
            }
            ok(&args);
            let got = load_st(&latent)["sample"].clone();
            let want = f["sample"].narrow(0, 0, 1).unwrap();
            assert_eq!(got.dims(), want.dims(), "{case}: --latent-out keeps (n, F, C, H, W)");
            assert_close(&format!("{case} cli video ddim ({backend})"), &f32s(&got), &f32s(&want), 1e-3);
        }
    }
    // A pack back to f32 safetensors under the official names (what train/ reads), exact for f32.
    let st = dir.path().join("sparselatte_f3.safetensors");
    ok(&["convert", s(&dir.path().join("sparselatte_f3-f32.gguf")), "-o", s(&st)]);
    let (back, orig) = (load_st(&st), load_st(&fixture_dir("sparselatte_f3").join("model.safetensors")));
    assert_eq!(back.len(), orig.len());
    for (k, v) in &orig {
        assert_close(&format!("safetensors export {k}"), &f32s(&back[k]), &f32s(v), 0.0);
    }
    let err = fails(&["convert", s(&dir.path().join("sparselatte_f3-f32.gguf")), "-o", s(&st), "--quant", "q8_0"]);
    assert!(err.contains("f32 tensors"), "{err}");
    // bench times a video pack against its counterpart (dense Latte vs sparse Latte).
    let table = ok(&["bench", "--model", s(&dir.path().join("sparselatte_f3-f32.gguf")), "--backend", "cpu", "--steps", "2", "--repeats", "1"]);
    assert!(table.contains("| Latte, ") && table.contains("| sparse Latte ") && table.contains("F=3"), "{table}");
    // Clear one-line errors: an image batch to a video pack, a missing --class, a clip of the wrong shape.
    let pack = dir.path().join("latte_f3_p2-f32.gguf");
    let err = fails(&["forward", "--model", s(&pack), "--inputs", s(&fixture_dir("sparse_nondiv").join("inputs.safetensors")), "--out", s(&dir.path().join("o.safetensors"))]);
    assert!(err.contains("(B, F, C, H, W)"), "{err}");
    let err = fails(&["sample", "--model", s(&pack), "--steps", "2"]);
    assert!(err.contains("--class is required"), "{err}");
    let z = dir.path().join("latte_f3_p2-z.safetensors");
    let err = fails(&["sample", "--model", s(&dir.path().join("latte_f8_p4_uncond-f32.gguf")), "--steps", "2", "--noise", s(&z)]);
    assert!(err.contains("z has shape"), "{err}");
}

#[test]
fn video_sample_writes_a_strip_png_and_a_looping_gif() {
    // A pixel-space Latte (3 channels, F = 8, 12 px): --out draws one row per clip with its
    // frames left to right, --gif one GIF frame per clip frame; both equal --latent-out's pixels.
    let dir = tempfile::tempdir().unwrap();
    let pack = convert("latte_f8_p2_rgb", "model.safetensors", "f32", dir.path());
    let (png, gif, lat) = (dir.path().join("c.png"), dir.path().join("c.gif"), dir.path().join("c.safetensors"));
    ok(&["sample", "--model", s(&pack), "--class", "1", "--steps", "3", "--num", "2", "--backend", "cpu", "--out", s(&png), "--gif", s(&gif), "--zoom", "2", "--latent-out", s(&lat)]);
    let z = load_st(&lat)["sample"].clone(); // (2, 8, 3, 12, 12)
    assert_eq!(z.dims(), &[2, 8, 3, 12, 12]);
    let to_u8 = |v: f32| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
    let zs = f32s(&z);
    let px = |clip: usize, frame: usize, ch: usize, y: usize, x: usize| zs[((((clip * 8 + frame) * 3 + ch) * 12) + y) * 12 + x];
    let strip = image::open(&png).unwrap().to_rgb8();
    assert_eq!(strip.dimensions(), (8 * 12 * 2, 2 * 12 * 2), "8 frames across, 2 clips down, zoom 2");
    for (clip, frame, y, x) in [(0, 0, 0, 0), (1, 7, 11, 11), (0, 5, 3, 9), (1, 2, 6, 1)] {
        let got = strip.get_pixel(((frame * 12 + x) * 2 + 1) as u32, ((clip * 12 + y) * 2) as u32);
        for ch in 0..3 {
            assert_eq!(got[ch], to_u8(px(clip, frame, ch, y, x)), "strip clip {clip} frame {frame} ({y}, {x}) ch {ch}");
        }
    }
    use image::AnimationDecoder;
    let dec = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(std::fs::File::open(&gif).unwrap())).unwrap();
    let frames = dec.into_frames().collect_frames().unwrap();
    assert_eq!(frames.len(), 8, "one GIF frame per clip frame");
    assert_eq!(frames[0].buffer().dimensions(), (2 * 12 * 2, 12 * 2), "the clips side by side");
    assert_eq!(frames[3].delay().numer_denom_ms(), (100, 1), "10 fps");
    // GIF keeps 256 colours per frame: a clip's colours come back close, not exact.
    let g = frames[3].buffer().get_pixel(((12 + 4) * 2) as u32, (7 * 2) as u32);
    for ch in 0..3 {
        let want = to_u8(px(1, 3, ch, 7, 4)) as i32;
        assert!((g[ch] as i32 - want).abs() <= 24, "gif clip 1 frame 3 ch {ch}: {} vs {want}", g[ch]);
    }
    // --gif on an image model is refused before any sampling.
    let img = convert("sparse_nondiv", "model.pt", "f32", dir.path());
    let err = fails(&["sample", "--model", s(&img), "--class", "1", "--steps", "2", "--gif", s(&dir.path().join("x.gif"))]);
    assert!(err.contains("--gif needs a video model"), "{err}");
}
