//! The browser CPU path's own f32 matmul (`sparsedit::matmul`, the kernel wasm32 uses by
//! default) run natively with the same tiling: official forwards and a DDIM loop against the
//! PyTorch fixtures to the usual bounds, and the kernel against candle's matmul at DiT-XL/2's
//! widths. Its own file: the kernel choice is process-wide.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use sparsedit::diffusion::{Guidance, Sampler, SamplerKind, SeededNoise};
use sparsedit::import::{infer_config, read_checkpoint, ImportOptions};
use sparsedit::matmul::{kernel, linear, set_kernel, Kernel};
use sparsedit::model::Model;
use sparsedit::Config;

fn load(case: &str) -> (Config, Model) {
    set_kernel(Kernel::Lanes4);
    let dir = fixture_dir(case);
    let want = fixture_config(case);
    let path = ["model.pt", "model.safetensors"].iter().map(|f| dir.join(f)).find(|p| p.exists()).unwrap();
    let map = read_checkpoint(&path).unwrap();
    let cfg = infer_config(&map, &ImportOptions { heads: Some(want.num_heads), semantic_size: Some(want.semantic_size) }).unwrap();
    (cfg.clone(), Model::from_tensors(cfg, map).unwrap())
}

#[test]
fn official_forwards_through_the_lanes4_kernel() {
    for case in ["dit_dense", "sparse_nondiv", "sparse_p4_gray", "latte_f3_p2", "sparselatte_f3"] {
        let (cfg, model) = load(case);
        assert_eq!(kernel(), Kernel::Lanes4);
        let inp = load_st(&fixture_dir(case).join("inputs.safetensors"));
        let exp = load_st(&fixture_dir(case).join("expected.safetensors"));
        let (x, t, y) = (inp["x"].clone(), f32s(&inp["t"]), i64s(&inp["y"]));
        let out = model.forward(&x, &t, &y, cfg.semantic_size).unwrap();
        assert_close(&format!("{case} forward (lanes4)"), &f32s(&out), &f32s(&exp["out"]), 1e-4);
        if let Some(want) = exp.get("out_cfg") {
            let scale = f32s(&inp["cfg_scale"])[0] as f64;
            let got = model.forward_with_cfg(&x, &t, &y, scale, cfg.official_guided_channels(), cfg.semantic_size).unwrap();
            assert_close(&format!("{case} forward_with_cfg (lanes4)"), &f32s(&got), &f32s(want), 1e-4);
        }
    }
}

#[test]
fn ddim_10_steps_through_the_lanes4_kernel() {
    let (cfg, model) = load("sparse_nondiv");
    let f = load_st(&fixture_dir("sparse_nondiv").join("ddim.safetensors"));
    let sampler = Sampler::new("ddim10", SamplerKind::Ddim { eta: 0.0 }, cfg.learn_sigma).unwrap();
    let guidance = Some(Guidance { scale: f32s(&f["cfg_scale"])[0] as f64, guided_channels: 3, null_label: cfg.num_classes as i64 });
    let sample = sampler
        .sample(|x, t, y| model.forward(x, t, y, cfg.semantic_size), &f["z"], &i64s(&f["y"]), guidance, &mut SeededNoise::new(0), |_| Ok(()))
        .unwrap();
    assert_close("sparse_nondiv ddim10 (lanes4)", &f32s(&sample), &f32s(&f["sample"]), 1e-3);
}

#[test]
fn lanes4_equals_candle_matmul_at_dit_xl_widths() {
    // (rows, in, out): DiT-XL/2's qkv and fc1 with a few odd rows, and a tail of columns.
    for &(rows, k, n) in &[(7, 1152, 3456), (5, 1152, 4608), (9, 4608, 1152), (6, 1152, 1155)] {
        let x = random_nonzero(1, rows * k, 1.0);
        let w = random_nonzero(2, k * n, 0.05);
        let b = random_nonzero(3, n, 0.5);
        let got = linear(&x, &w, Some(&b), rows, k, n);
        let (xt, wt, bt) = (
            Tensor::from_vec(x, (rows, k), &Device::Cpu).unwrap(),
            Tensor::from_vec(w, (k, n), &Device::Cpu).unwrap(),
            Tensor::from_vec(b, n, &Device::Cpu).unwrap(),
        );
        let want = xt.matmul(&wt).unwrap().broadcast_add(&bt).unwrap();
        assert_close(&format!("linear ({rows}, {k}) x ({k}, {n})"), &got, &f32s(&want), 1e-5);
    }
}
