//! DPM-Solver++ (2M) against the reference solver (`dpm_solver_pytorch.py`, fixtures by
//! `tests/fixtures/gen_dpm.py`) on a SparseDiT and a DiT with CFG: the model's timestep inputs
//! and the samples of K = 5 (lower-order final step) and K = 12, on the CPU sampler, the GPU
//! sampler (WGSL), the engine and the CLI.

mod common;

use candle_core::Tensor;
use common::*;
use sparsedit::diffusion::{Guidance, Sampler, SamplerKind, SeededNoise};
use sparsedit::engine::{Engine, SampleRequest};
use sparsedit::gguf::TensorType;
use sparsedit::gpu::model::{EncodedMap, GpuModel};
use sparsedit::gpu::sample::{sample_gpu, SampleOptions};
use sparsedit::import::{infer_config, read_checkpoint, ImportOptions};
use sparsedit::model::{Model, TensorMap};
use sparsedit::Config;

const TOL: f32 = 1e-3;
const CASES: [&str; 2] = ["sparse_nondiv", "dit_dense"];

fn load(case: &str) -> (Config, TensorMap) {
    let want = fixture_config(case);
    let map = read_checkpoint(&fixture_dir(case).join("model.pt")).unwrap();
    let cfg = infer_config(&map, &ImportOptions { heads: Some(want.num_heads), semantic_size: Some(want.semantic_size) }).unwrap();
    (cfg, map)
}

fn guidance(cfg: &Config, scale: f64) -> Option<Guidance> {
    Some(Guidance { scale, guided_channels: cfg.official_guided_channels(), null_label: cfg.num_classes as i64 })
}

#[test]
fn cpu_dpm_solver_matches_the_reference_solver() {
    for case in CASES {
        let (cfg, map) = load(case);
        let model = Model::from_tensors(cfg.clone(), map).unwrap();
        let f = load_st(&fixture_dir(case).join("dpm.safetensors"));
        let (z, y, scale) = (f["z"].clone(), i64s(&f["y"]), f32s(&f["cfg_scale"])[0] as f64);
        for k in [5usize, 12] {
            let sampler = Sampler::new(&k.to_string(), SamplerKind::DpmSolverPp, cfg.learn_sigma).unwrap();
            let want_t = f32s(&f[&format!("model_t_k{k}")]);
            let got_t: Vec<f32> = (0..k).map(|i| sampler.model_t(i)).collect();
            assert_close(&format!("{case} K={k} model timesteps"), &got_t, &want_t, 1e-5);
            let mut seen_t = Vec::new();
            let grid = cfg.semantic_size;
            let out = sampler
                .sample(
                    |x, t, yb| {
                        seen_t.push(t[0]);
                        model.forward(x, t, yb, grid)
                    },
                    &z,
                    &y,
                    guidance(&cfg, scale),
                    &mut SeededNoise::new(0),
                    |_| Ok(()),
                )
                .unwrap();
            assert_eq!(seen_t, got_t, "{case} K={k}: one model call per step, at the solver's times");
            assert_close(&format!("{case} K={k} CPU vs reference"), &f32s(&out), &f32s(&f[&format!("sample_k{k}")]), TOL);
        }
    }
}

#[test]
fn gpu_dpm_solver_matches_the_reference_solver() {
    let Some(gpu) = gpu_or_skip() else { return };
    for case in CASES {
        let (cfg, map) = load(case);
        let gm = GpuModel::load(&gpu, cfg.clone(), &EncodedMap { tensors: &map, quant: TensorType::F32 }).unwrap();
        let f = load_st(&fixture_dir(case).join("dpm.safetensors"));
        let (z, y, scale) = (f32s(&f["z"]), i64s(&f["y"]), f32s(&f["cfg_scale"])[0] as f64);
        for k in [5usize, 12] {
            let sampler = Sampler::new(&k.to_string(), SamplerKind::DpmSolverPp, cfg.learn_sigma).unwrap();
            let schedule = sparsedit::config::GridSchedule::Fixed(cfg.semantic_size);
            let mut noise = SeededNoise::new(0);
            let mut steps = 0;
            let fut = sample_gpu(&gpu, &gm, &sampler, &z, &y, guidance(&cfg, scale), &schedule, &mut noise, SampleOptions { preview: true, trace: false }, |s| {
                assert_eq!(s.pred_x0.map(|p| p.len()), Some(z.len()), "the preview is the data prediction");
                steps += 1;
                Ok(true)
            });
            let got = pollster::block_on(fut).unwrap();
            assert_eq!(steps, k);
            assert_close(&format!("{case} K={k} GPU vs reference"), &got, &f32s(&f[&format!("sample_k{k}")]), TOL);
        }
    }
}

#[test]
fn engine_and_cli_sample_with_dpm_solver() {
    let case = "sparse_nondiv";
    let (cfg, map) = load(case);
    let f = load_st(&fixture_dir(case).join("dpm.safetensors"));
    let z0 = f["z"].narrow(0, 0, 1).unwrap(); // row 0 (label y[0]) alone is the same run
    let want = f32s(&f["sample_k5"].narrow(0, 0, 1).unwrap());
    let label = i64s(&f["y"])[0];
    let req = SampleRequest {
        label,
        steps: 5,
        sampler: SamplerKind::DpmSolverPp,
        cfg_scale: 4.0,
        latent: Some(f32s(&z0)),
        ..SampleRequest::default()
    };
    let engine = Engine::from_tensors(None, cfg.clone(), map.clone()).unwrap();
    let mut timesteps = Vec::new();
    let out = pollster::block_on(engine.sample(&req, |s| {
        timesteps.push(s.timestep);
        Ok(true)
    }))
    .unwrap();
    assert_eq!(timesteps, vec![999, 799, 599, 400, 200], "reported steps: the model's inputs, rounded");
    assert_close("engine DPM-Solver++", &out.latent, &want, TOL);
    // A respacing makes no sense for DPM-Solver++: refused before any work.
    let bad = SampleRequest { respacing: Some("ddim5".into()), ..req.clone() };
    let e = pollster::block_on(engine.sample(&bad, |_| Ok(true))).err().expect("refused").to_string();
    assert!(e.contains("DPM-Solver++"), "{e}");
    let one = SampleRequest { steps: 1, ..req.clone() };
    assert!(pollster::block_on(engine.sample(&one, |_| Ok(true))).is_err(), "2M needs 2 steps");

    // The CLI, on both backends.
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("m.gguf");
    let (heads, sem) = (cfg.num_heads.to_string(), cfg.semantic_size.to_string());
    cli_ok(&["convert", s(&fixture_dir(case).join("model.pt")), "-o", s(&pack), "--heads", &heads, "--semantic-size", &sem]);
    let noise = dir.path().join("z.safetensors");
    let zmap: std::collections::HashMap<String, Tensor> = [("z".to_string(), z0.clone())].into_iter().collect();
    candle_core::safetensors::save(&zmap, &noise).unwrap();
    for backend in backends() {
        let lat = dir.path().join(format!("{backend}.safetensors"));
        let label = label.to_string();
        cli_ok(&["sample", "--model", s(&pack), "--class", &label, "--steps", "5", "--sampler", "dpm-solver++", "--noise", s(&noise), "--latent-out", s(&lat), "--backend", backend]);
        let got = f32s(&load_st(&lat)["sample"]);
        assert_close(&format!("CLI DPM-Solver++ ({backend})"), &got, &want, TOL);
    }
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

fn cli_ok(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sparsedit")).args(args).output().unwrap();
    assert!(out.status.success(), "sparsedit {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
