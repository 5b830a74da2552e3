//! The CPU model and sampler against the PyTorch reference fixtures (tests/fixtures/gen.py):
//! checkpoints imported through the real import path, forward, forward-with-CFG, other sparse
//! grid sizes, DDIM / DDPM loops, and the dit-to-sparsedit conversion.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use sparsedit::diffusion::{default_respacing, GivenNoise, Guidance, Sampler, SamplerKind, SeededNoise};
use sparsedit::import::{dit_to_sparsedit, infer_config, read_checkpoint, ImportOptions};
use sparsedit::model::Model;
use sparsedit::config::PooledMiddle;
use sparsedit::{Config, Layout};

const FORWARD_TOL: f32 = 1e-4;

/// Import a case's checkpoint the way `sparsedit convert` does and check the inferred config.
fn load_case(case: &str) -> (Config, Model) {
    let dir = fixture_dir(case);
    let want = fixture_config(case);
    let path = ["model.pt", "model.safetensors", "dense.pt"].iter().map(|f| dir.join(f)).find(|p| p.exists()).unwrap();
    let map = read_checkpoint(&path).unwrap();
    let opts = ImportOptions { heads: Some(want.num_heads), semantic_size: Some(want.semantic_size) };
    let cfg = infer_config(&map, &opts).unwrap();
    if case != "dit_to_sparsedit" {
        assert_eq!(cfg, want, "{case}: inferred architecture");
    }
    let model = Model::from_tensors(cfg.clone(), map).unwrap();
    (cfg, model)
}

fn inputs(case: &str) -> (Tensor, Vec<f32>, Vec<i64>, f64) {
    let inp = load_st(&fixture_dir(case).join("inputs.safetensors"));
    let t = f32s(&inp["t"]);
    (inp["x"].clone(), t, i64s(&inp["y"]), f32s(&inp["cfg_scale"])[0] as f64)
}

fn check_forward(case: &str, model: &Model, cfg: &Config) {
    let (x, t, y, scale) = inputs(case);
    let exp = load_st(&fixture_dir(case).join("expected.safetensors"));
    let out = model.forward(&x, &t, &y, cfg.semantic_size).unwrap();
    assert_close(&format!("{case} forward"), &f32s(&out), &f32s(&exp["out"]), FORWARD_TOL);
    let out_cfg = model.forward_with_cfg(&x, &t, &y, scale, 3, cfg.semantic_size).unwrap();
    assert_close(&format!("{case} forward_with_cfg"), &f32s(&out_cfg), &f32s(&exp["out_cfg"]), FORWARD_TOL);
    for s in [3usize, 6] {
        if let Some(want) = exp.get(&format!("out_s{s}")) {
            let out = model.forward(&x, &t, &y, s).unwrap();
            assert_close(&format!("{case} forward at grid {s}"), &f32s(&out), &f32s(want), FORWARD_TOL);
        }
    }
}

#[test]
fn sparse_nondivisible_pooling_pt_under_ema() {
    let (cfg, model) = load_case("sparse_nondiv");
    check_forward("sparse_nondiv", &model, &cfg);
}

#[test]
fn sparse_patch4_grayscale_fixed_sigma_safetensors() {
    let (cfg, model) = load_case("sparse_p4_gray");
    assert!(!cfg.learn_sigma);
    check_forward("sparse_p4_gray", &model, &cfg);
}

#[test]
fn sparse_pool_8_to_3() {
    let (cfg, model) = load_case("sparse_8to3");
    check_forward("sparse_8to3", &model, &cfg);
}

#[test]
fn dense_dit() {
    let (cfg, model) = load_case("dit_dense");
    assert!(matches!(cfg.layout, Layout::Dense { depth: 3 }));
    check_forward("dit_dense", &model, &cfg);
}

#[test]
fn dense_dit_with_1000_classes() {
    let (cfg, model) = load_case("dit_1000_classes");
    assert_eq!((cfg.num_classes, cfg.null_label()), (1000, Some(1000)));
    check_forward("dit_1000_classes", &model, &cfg);
}

#[test]
fn training_free_pooled_middle_matches_reference() {
    // gen.py's DenseDiT.forward_pooled_middle: blocks 2..5 of 6 on AdaptiveAvgPool2d(s) of the
    // 8x8 grid (overlapping windows at s = 3), update brought back by 'nearest' interpolation.
    let case = "dit_pooled_middle";
    let (cfg, mut model) = load_case(case);
    let (x, t, y, _) = inputs(case);
    let exp = load_st(&fixture_dir(case).join("expected.safetensors"));
    // Off: the plain dense model, whatever the grid.
    let out = model.forward(&x, &t, &y, 3).unwrap();
    assert_close("dit_pooled_middle dense", &f32s(&out), &f32s(&exp["out"]), FORWARD_TOL);
    model.set_pooled_middle(Some(PooledMiddle { start: 2, end: 5 })).unwrap();
    for s in [3usize, 4] {
        let out = model.forward(&x, &t, &y, s).unwrap();
        assert_close(&format!("dit_pooled_middle 2:5 at s = {s}"), &f32s(&out), &f32s(&exp[&format!("out_pm_2_5_s{s}")]), FORWARD_TOL);
    }
    // At the dense grid the pooled middle is off (pooling 8 -> 8 is the identity anyway).
    let out = model.forward(&x, &t, &y, cfg.grid()).unwrap();
    assert_close("dit_pooled_middle at s = n", &f32s(&out), &f32s(&exp["out"]), FORWARD_TOL);
    // Bad ranges are argument errors.
    for (a, b) in [(3, 3), (4, 2), (2, 7)] {
        let e = model.set_pooled_middle(Some(PooledMiddle { start: a, end: b })).unwrap_err();
        assert!(e.to_string().contains("pooled middle"), "{e}");
    }
}

#[test]
fn dit_to_sparsedit_conversion_matches_reference() {
    let case = "dit_to_sparsedit";
    let want = fixture_config(case);
    let dense = read_checkpoint(&fixture_dir(case).join("dense.pt")).unwrap();
    let opts = ImportOptions { heads: Some(want.num_heads), semantic_size: Some(want.semantic_size) };
    let dense_cfg = infer_config(&dense, &opts).unwrap();
    let Layout::Sparse(layout) = want.layout else { panic!("fixture layout") };
    let (cfg, sparse) = dit_to_sparsedit(&dense, &dense_cfg, layout).unwrap();
    assert_eq!(cfg, want);
    let expected = load_st(&fixture_dir(case).join("expected_sparse.safetensors"));
    let mut names: Vec<_> = sparse.keys().cloned().collect();
    names.sort();
    let mut want_names: Vec<_> = expected.keys().cloned().collect();
    want_names.sort();
    assert_eq!(names, want_names, "converted key set");
    for n in &names {
        assert_eq!(sparse[n].dims(), expected[n].dims(), "{n} shape");
        assert_eq!(f32s(&sparse[n]), f32s(&expected[n]), "{n} values");
    }
    let model = Model::from_tensors(cfg.clone(), sparse).unwrap();
    check_forward(case, &model, &cfg);
}

fn check_sampler(case: &str, file: &str, kind: SamplerKind, respacing: &str, tol: f32) {
    let (cfg, model) = load_case(case);
    let f = load_st(&fixture_dir(case).join(file));
    let z = f["z"].clone();
    let y = i64s(&f["y"]);
    let scale = f32s(&f["cfg_scale"])[0] as f64;
    let sampler = Sampler::new(respacing, kind, cfg.learn_sigma).unwrap();
    let want_t: Vec<usize> = i64s(&f["timesteps"]).iter().map(|&v| v as usize).collect();
    assert_eq!(sampler.diffusion.timestep_map, want_t, "{case}/{file}: respaced timesteps");
    let guidance = Some(Guidance { scale, guided_channels: 3, null_label: cfg.num_classes as i64 });
    let per_step = z.elem_count();
    let mut noise: Box<dyn sparsedit::diffusion::NoiseSource> = match f.get("noise") {
        Some(n) => Box::new(GivenNoise { data: f32s(n), per_step }),
        None => Box::new(SeededNoise::new(0)),
    };
    let grid = cfg.semantic_size;
    let mut steps = 0;
    let sample = sampler
        .sample(|x, t, y| model.forward(x, t, y, grid), &z, &y, guidance, noise.as_mut(), |_| {
            steps += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(steps, want_t.len());
    let (got, want) = (f32s(&sample), f32s(&f["sample"]));
    let (i, err) = worst(&got, &want);
    eprintln!("{case}/{file} ({respacing}): max relative error {err:.3e} at index {i} (got {}, want {})", got[i], want[i]);
    assert_close(&format!("{case}/{file}"), &got, &want, tol);
}

/// The index and size of the largest relative error, in `assert_close`'s measure
/// (|a - b| / max(|b|, rms(want))).
fn worst(got: &[f32], want: &[f32]) -> (usize, f32) {
    let rms = (want.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / want.len().max(1) as f64).sqrt() as f32;
    let rel = got.iter().zip(want).map(|(a, b)| (a - b).abs() / b.abs().max(rms).max(1e-30));
    rel.enumerate().fold((0, 0.0), |m, (i, e)| if e > m.1 { (i, e) } else { m })
}

#[test]
fn ddim_10_steps_with_cfg() {
    check_sampler("sparse_nondiv", "ddim.safetensors", SamplerKind::Ddim { eta: 0.0 }, "ddim10", 1e-3);
    check_sampler("sparse_p4_gray", "ddim.safetensors", SamplerKind::Ddim { eta: 0.0 }, "ddim10", 1e-3);
}

#[test]
fn ddim_default_respacing_matches_the_official_default() {
    // The official sample.py samples with create_diffusion(str(K)): respacing "K", steps up to
    // t = 999, for DDIM too (gen.py's ddim_default: respacing "10", eta 0, CFG 4).
    let respacing = default_respacing(10);
    assert_eq!(respacing, "10");
    check_sampler("sparse_nondiv", "ddim_default.safetensors", SamplerKind::Ddim { eta: 0.0 }, &respacing, 1e-3);
    check_sampler("sparse_p4_gray", "ddim_default.safetensors", SamplerKind::Ddim { eta: 0.0 }, &respacing, 1e-3);
}

#[test]
fn ddim_eta_with_given_noise() {
    check_sampler("sparse_nondiv", "ddim_eta.safetensors", SamplerKind::Ddim { eta: 0.5 }, "ddim10", 1e-3);
    check_sampler("sparse_p4_gray", "ddim_eta.safetensors", SamplerKind::Ddim { eta: 0.5 }, "ddim10", 1e-3);
}

#[test]
fn ddpm_learned_and_fixed_variance_with_given_noise() {
    check_sampler("sparse_nondiv", "ddpm.safetensors", SamplerKind::Ddpm, "5", 1e-3);
    check_sampler("sparse_p4_gray", "ddpm.safetensors", SamplerKind::Ddpm, "5", 1e-3);
}

#[test]
fn diffusion_tables_match_numpy() {
    let f = load_st(&fixture_dir("").join("diffusion.safetensors"));
    for name in ["250", "ddim10", "ddim50", "7,3"] {
        let d = sparsedit::diffusion::Diffusion::new(name).unwrap();
        let want_t: Vec<usize> = i64s(&f[&format!("timesteps_{name}")]).iter().map(|&v| v as usize).collect();
        assert_eq!(d.timestep_map, want_t, "timesteps {name}");
        let want_b: Vec<f64> = f[&format!("betas_{name}")].to_vec1().unwrap();
        for (i, (a, b)) in d.betas.iter().zip(&want_b).enumerate() {
            assert!((a - b).abs() <= 1e-12 * b.abs(), "betas {name}[{i}]: {a} vs {b}");
        }
    }
    let d = sparsedit::diffusion::Diffusion::new("1000").unwrap();
    let ac: Vec<f64> = f["alphas_cumprod"].to_vec1().unwrap();
    let plv: Vec<f64> = f["posterior_log_variance_clipped"].to_vec1().unwrap();
    for i in 0..1000 {
        assert!((d.alphas_cumprod[i] - ac[i]).abs() <= 1e-12 * ac[i], "alphas_cumprod[{i}]");
        assert!((d.posterior_log_variance_clipped[i] - plv[i]).abs() <= 1e-10 * plv[i].abs(), "posterior_log_variance_clipped[{i}]");
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let (cfg, model) = load_case("sparse_8to3");
    let x = Tensor::ones((1, cfg.in_channels, cfg.input_size, cfg.input_size), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = model.forward(&x, &[10.0], &[cfg.num_classes as i64 + 1], 3).unwrap_err().to_string();
    assert!(err.contains("out of range"), "{err}");
    let err = model.forward(&x, &[10.0], &[-1], 3).unwrap_err().to_string();
    assert!(err.contains("out of range"), "{err}");
    let bad = Tensor::ones((1, cfg.in_channels, 7, 7), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(model.forward(&bad, &[10.0], &[0], 3).unwrap_err().to_string().contains("shape"));
    assert!(model.forward(&x, &[10.0, 2.0], &[0], 3).is_err());
    assert!(model.forward(&x, &[f32::NAN], &[0], 3).is_err());
    assert!(model.forward(&x, &[1.0], &[0], 0).is_err());
    assert!(model.forward_with_cfg(&x, &[1.0], &[0], 4.0, 3, 3).is_err());
}

#[test]
fn wrong_checkpoint_keys_are_listed() {
    let dir = fixture_dir("sparse_8to3");
    let mut map = read_checkpoint(&dir.join("model.pt")).unwrap();
    let cfg = infer_config(&map, &ImportOptions { heads: Some(4), semantic_size: Some(3) }).unwrap();
    map.remove("normal_blocks.0.attn.qkv.bias");
    map.insert("bogus.weight".into(), Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap());
    let err = Model::from_tensors(cfg.clone(), map).err().unwrap().to_string();
    assert!(err.contains("normal_blocks.0.attn.qkv.bias") && err.contains("bogus.weight"), "{err}");
    // A wrong shape names the tensor.
    let mut map = read_checkpoint(&dir.join("model.pt")).unwrap();
    map.insert("final_layer.linear.bias".into(), Tensor::zeros(5, candle_core::DType::F32, &Device::Cpu).unwrap());
    let err = Model::from_tensors(cfg, map).err().unwrap().to_string();
    assert!(err.contains("final_layer.linear.bias"), "{err}");
}

#[test]
fn strided_views_in_a_checkpoint_are_read_as_views() {
    let dir = fixture_dir("dit_dense");
    let plain = read_checkpoint(&dir.join("model.pt")).unwrap();
    let strided = read_checkpoint(&dir.join("model_strided.pt")).unwrap();
    assert_eq!(plain.len(), strided.len());
    for (name, t) in &plain {
        assert_eq!(f32s(t), f32s(&strided[name]), "{name}");
    }
}
