//! Video on the GPU: the WGSL Latte and spatial-temporal SparseDiT against the CPU model and the
//! fixtures of the official Latte code (`tests/fixtures/gen_latte.py`): forward at every grid the
//! fixtures hold, the training-free pooled middle, packs of every type (GPU vs CPU on the same
//! dequantised weights), and whole sampling runs (DDIM with CFG on 4 channels, DDPM with learned
//! sigma and given noise) through `sample_gpu`. Needs a WebGPU adapter (lavapipe in CI); with
//! CI=true a missing adapter is a failure, elsewhere the test says it skipped.

mod common;

use candle_core::Tensor;
use common::gpu_or_skip as gpu;
use common::*;
use sparsedit::config::{GridSchedule, PooledMiddle};
use sparsedit::diffusion::{GivenNoise, Guidance, NoiseSource, Sampler, SamplerKind, SeededNoise};
use sparsedit::engine::{Engine, SampleRequest};
use sparsedit::gguf::TensorType;
use sparsedit::gpu::model::{EncodedMap, GpuModel};
use sparsedit::gpu::sample::{sample_gpu, SampleOptions};
use sparsedit::import::{infer_config, read_checkpoint, ImportOptions};
use sparsedit::model::{Model, TensorMap};
use sparsedit::pack::{load_pack_bytes, write_pack};
use sparsedit::Config;
use std::rc::Rc;

/// GPU vs CPU and GPU vs PyTorch, f32 (as the image models' GPU tests).
const TOL: f32 = 1e-3;
const CASES: [&str; 5] = ["latte_f3_p2", "latte_f8_p4_uncond", "latte_f8_p2_rgb", "sparselatte_f3", "sparselatte_uncond"];

fn load_case(case: &str) -> (Config, TensorMap) {
    let dir = fixture_dir(case);
    let path = ["model.pt", "model.safetensors"].iter().map(|f| dir.join(f)).find(|p| p.exists()).unwrap();
    let map = read_checkpoint(&path).unwrap();
    let want = fixture_config(case);
    let cfg = infer_config(&map, &ImportOptions { heads: Some(want.num_heads), semantic_size: Some(want.semantic_size) }).unwrap();
    assert_eq!(cfg, want, "{case}: inferred architecture");
    (cfg, map)
}

fn gpu_forward(gpu: &sparsedit::gpu::Gpu, gm: &GpuModel, x: &Tensor, t: &[f32], y: &[i64], grid: usize) -> Vec<f32> {
    let plan = gm.plan(gpu, x.dim(0).unwrap(), grid).unwrap();
    gm.forward(gpu, &plan, &f32s(x), t, y).unwrap()
}

#[test]
fn gpu_latte_forward_matches_cpu_and_the_official_code() {
    let Some(gpu) = gpu() else { return };
    let mut pooled_middles = 0;
    for case in CASES {
        let (cfg, map) = load_case(case);
        let gm = GpuModel::load(&gpu, cfg.clone(), &EncodedMap { tensors: &map, quant: TensorType::F32 }).unwrap();
        let mut cpu = Model::from_tensors(cfg.clone(), map).unwrap();
        let inp = load_st(&fixture_dir(case).join("inputs.safetensors"));
        let exp = load_st(&fixture_dir(case).join("expected.safetensors"));
        let (x, t, y) = (inp["x"].clone(), f32s(&inp["t"]), i64s(&inp["y"]));
        let mut grids = vec![(cfg.semantic_size, "out".to_string())];
        grids.extend([3usize, 6].iter().filter(|s| exp.contains_key(&format!("out_s{s}"))).map(|&s| (s, format!("out_s{s}"))));
        for (grid, key) in grids {
            let got = gpu_forward(&gpu, &gm, &x, &t, &y, grid);
            let want_cpu = f32s(&cpu.forward(&x, &t, &y, grid).unwrap());
            assert_close(&format!("{case} grid {grid}: GPU vs CPU"), &got, &want_cpu, TOL);
            assert_close(&format!("{case} grid {grid}: GPU vs PyTorch"), &got, &f32s(&exp[&key]), TOL);
            eprintln!("{case} grid {grid}: GPU vs CPU max relative error {:.2e}", max_rel_err(&got, &want_cpu));
        }
        // The training-free pooled middle on plain Latte weights (latte_f3_p2's starts on a
        // temporal block, where temp_embed goes in).
        for (key, want) in exp.iter().filter(|(k, _)| k.starts_with("out_pm_")) {
            let parts: Vec<usize> = key["out_pm_".len()..].replace('s', "").split('_').map(|v| v.parse().unwrap()).collect();
            let pm = Some(PooledMiddle { start: parts[0], end: parts[1] });
            let mut gm_pm = GpuModel::load(&gpu, cfg.clone(), &EncodedMap { tensors: &checkpoint_of(case), quant: TensorType::F32 }).unwrap();
            gm_pm.set_pooled_middle(pm).unwrap();
            cpu.set_pooled_middle(pm).unwrap();
            let got = gpu_forward(&gpu, &gm_pm, &x, &t, &y, parts[2]);
            assert_close(&format!("{case} {key}: GPU vs PyTorch"), &got, &f32s(want), TOL);
            assert_close(&format!("{case} {key}: GPU vs CPU"), &got, &f32s(&cpu.forward(&x, &t, &y, parts[2]).unwrap()), TOL);
            cpu.set_pooled_middle(None).unwrap();
            pooled_middles += 1;
        }
    }
    assert_eq!(pooled_middles, 3, "pooled-middle outputs in the fixtures");
}

fn checkpoint_of(case: &str) -> TensorMap {
    load_case(case).1
}

#[test]
fn gpu_latte_packs_of_every_type_match_cpu_on_the_same_pack() {
    let Some(gpu) = gpu() else { return };
    for case in ["latte_f3_p2", "sparselatte_uncond"] {
        let (cfg, map) = load_case(case);
        let inp = load_st(&fixture_dir(case).join("inputs.safetensors"));
        let (x, t, y) = (inp["x"].clone(), f32s(&inp["t"]), i64s(&inp["y"]));
        for quant in [TensorType::F16, TensorType::Q8_0, TensorType::Q4_0] {
            let mut bytes = Vec::new();
            write_pack(&mut bytes, &cfg, &map, quant, "test", |_, _| {}).unwrap();
            // The CPU on the dequantised pack, the GPU on the packed weights (dequantised in
            // the linear kernels).
            let loaded = load_pack_bytes(&bytes).unwrap();
            let cpu = Model::from_tensors(loaded.cfg.clone(), loaded.tensors).unwrap();
            let gm = GpuModel::from_pack_bytes(&gpu, &bytes).unwrap();
            let got = gpu_forward(&gpu, &gm, &x, &t, &y, cfg.semantic_size);
            let want = f32s(&cpu.forward(&x, &t, &y, cfg.semantic_size).unwrap());
            eprintln!("{case} {quant:?}: GPU vs CPU max relative error {:.2e}", max_rel_err(&got, &want));
            assert_close(&format!("{case} {quant:?}: GPU vs CPU"), &got, &want, TOL);
        }
    }
}

/// `sample_gpu` against the official loop's fixture (`file` of `case`), rows as in the fixture.
fn check_gpu_sampler(gpu: &sparsedit::gpu::Gpu, case: &str, file: &str, kind: SamplerKind) {
    let (cfg, map) = load_case(case);
    let gm = GpuModel::load(gpu, cfg.clone(), &EncodedMap { tensors: &map, quant: TensorType::F32 }).unwrap();
    let f = load_st(&fixture_dir(case).join(file));
    let (z, y) = (f["z"].clone(), i64s(&f["y"]));
    let scale = f32s(&f["cfg_scale"])[0] as f64;
    let steps = i64s(&f["timesteps"]).len();
    let sampler = Sampler::new(&steps.to_string(), kind, cfg.learn_sigma).unwrap();
    let guidance = (scale > 1.0).then_some(Guidance { scale, guided_channels: 4, null_label: cfg.num_classes as i64 });
    let (per_step, rows) = (z.elem_count(), z.dim(0).unwrap());
    let mut noise: Box<dyn NoiseSource> = match f.get("noise") {
        Some(n) => Box::new(GivenNoise { data: f32s(&n.narrow(1, 0, rows).unwrap()), per_step }),
        None => Box::new(SeededNoise::new(0)),
    };
    let schedule = GridSchedule::Fixed(cfg.semantic_size);
    let mut seen = 0;
    let z = f32s(&z);
    let fut = sample_gpu(gpu, &gm, &sampler, &z, &y, guidance, &schedule, noise.as_mut(), SampleOptions::default(), |_| {
        seen += 1;
        Ok(true)
    });
    let got = pollster::block_on(fut).unwrap();
    assert_eq!(seen, steps);
    assert_close(&format!("{case}/{file} on the GPU"), &got, &f32s(&f["sample"]), 1e-3);
}

#[test]
fn gpu_latte_sampling_matches_the_official_loop() {
    let Some(gpu) = gpu() else { return };
    check_gpu_sampler(&gpu, "latte_f3_p2", "ddim.safetensors", SamplerKind::Ddim { eta: 0.0 });
    // learned sigma: the variance half is channel C.. of every frame
    check_gpu_sampler(&gpu, "latte_f3_p2", "ddpm.safetensors", SamplerKind::Ddpm);
    check_gpu_sampler(&gpu, "latte_f8_p4_uncond", "ddim.safetensors", SamplerKind::Ddim { eta: 0.0 });
    check_gpu_sampler(&gpu, "sparselatte_f3", "ddim.safetensors", SamplerKind::Ddim { eta: 0.0 });
}

#[test]
fn gpu_engine_samples_the_cpu_engines_clip_with_a_trace() {
    let Some(gpu) = gpu() else { return };
    // A seeded run of the sparse Latte with the token view on: same clip on both engines, and the
    // GPU's captured maps are the first frame's rows of every merge / recover block.
    let (cfg, map) = load_case("sparselatte_f3");
    let cpu = Engine::from_tensors(None, cfg.clone(), map.clone()).unwrap();
    let gpu_engine = Engine::from_tensors(Some(Rc::new(gpu)), cfg.clone(), map).unwrap();
    let req = SampleRequest { label: 2, steps: 6, sampler: SamplerKind::Ddim { eta: 0.0 }, cfg_scale: 4.0, trace: true, seed: 11, ..SampleRequest::default() };
    let mut maps = Vec::new();
    let run = |e: &Engine, maps: &mut Vec<usize>| {
        pollster::block_on(e.sample(&req, |s| {
            maps.push(s.attention.len());
            for a in s.attention {
                assert_eq!(a.probs.len(), a.tq * a.tk, "{}: one frame's map", a.name);
                for (q, row) in a.probs.chunks(a.tk).enumerate() {
                    let sum: f32 = row.iter().sum();
                    assert!((sum - 1.0).abs() < 1e-3, "{} row {q} sums to {sum}", a.name);
                }
            }
            Ok(true)
        }))
        .unwrap()
    };
    let want = run(&cpu, &mut maps);
    let cpu_maps = std::mem::take(&mut maps);
    let got = run(&gpu_engine, &mut maps);
    assert_eq!(got.shape, cfg.latent_shape(1));
    assert_eq!(maps, cpu_maps, "merge / recover maps per step on both engines");
    assert!(maps.iter().all(|&m| m > 0), "the sparse Latte has merge / recover blocks");
    assert_close("sparse Latte clip, GPU engine vs CPU engine", &got.latent, &want.latent, 1e-3);
}
