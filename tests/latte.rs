//! Video on the CPU: Latte against fixtures made by the official Latte code (models/latte.py and
//! its diffusion, `tests/fixtures/gen_latte.py`) and the crate's spatial-temporal SparseDiT
//! against the PyTorch reference of its design: checkpoints through the import path, forward,
//! forward-with-CFG (Latte guides the first 4 channels on dim 2), other grids, DDIM with CFG,
//! DDPM with learned sigma and given noise, packs of every type, and bad inputs.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use sparsedit::blocks::{Axis, BlockKind};
use sparsedit::diffusion::{GivenNoise, Guidance, NoiseSource, Sampler, SamplerKind, SeededNoise};
use sparsedit::engine::{Engine, SampleRequest};
use sparsedit::gguf::{Gguf, TensorType};
use sparsedit::import::{dit_to_sparsedit, infer_config, parse_layout, read_checkpoint, ImportOptions};
use sparsedit::model::{Model, TensorMap};
use sparsedit::pack::{config_from_header, load_pack_bytes, write_pack};
use sparsedit::Config;

const FORWARD_TOL: f32 = 1e-4;
const SAMPLE_TOL: f32 = 1e-3;
const CASES: [&str; 5] = ["latte_f3_p2", "latte_f8_p4_uncond", "latte_f8_p2_rgb", "sparselatte_f3", "sparselatte_uncond"];

fn checkpoint(case: &str) -> TensorMap {
    let dir = fixture_dir(case);
    let path = ["model.pt", "model.safetensors"].iter().map(|f| dir.join(f)).find(|p| p.exists()).unwrap();
    read_checkpoint(&path).unwrap()
}

/// Import a case's checkpoint as `sparsedit convert` does and check the inferred architecture.
fn load_case(case: &str) -> (Config, Model) {
    let want = fixture_config(case);
    let map = checkpoint(case);
    let cfg = infer_config(&map, &ImportOptions { heads: Some(want.num_heads), semantic_size: Some(want.semantic_size) }).unwrap();
    assert_eq!(cfg, want, "{case}: inferred architecture");
    (cfg.clone(), Model::from_tensors(cfg, map).unwrap())
}

fn check_forward(case: &str, model: &Model, cfg: &Config) {
    let inp = load_st(&fixture_dir(case).join("inputs.safetensors"));
    let exp = load_st(&fixture_dir(case).join("expected.safetensors"));
    let (x, t, y) = (inp["x"].clone(), f32s(&inp["t"]), i64s(&inp["y"]));
    assert_eq!(x.rank(), 5);
    let out = model.forward(&x, &t, &y, cfg.semantic_size).unwrap();
    assert_eq!(out.dims(), exp["out"].dims(), "{case}: output shape (B, F, c_out, H, W)");
    assert_close(&format!("{case} forward"), &f32s(&out), &f32s(&exp["out"]), FORWARD_TOL);
    if let Some(want) = exp.get("out_cfg") {
        let scale = f32s(&inp["cfg_scale"])[0] as f64;
        assert_eq!(cfg.official_guided_channels(), 4);
        let got = model.forward_with_cfg(&x, &t, &y, scale, cfg.official_guided_channels(), cfg.semantic_size).unwrap();
        assert_close(&format!("{case} forward_with_cfg"), &f32s(&got), &f32s(want), FORWARD_TOL);
    }
    for s in [3usize, 6] {
        if let Some(want) = exp.get(&format!("out_s{s}")) {
            let out = model.forward(&x, &t, &y, s).unwrap();
            assert_close(&format!("{case} forward at grid {s}"), &f32s(&out), &f32s(want), FORWARD_TOL);
        }
    }
}

#[test]
fn official_latte_and_sparse_latte_forward() {
    for case in CASES {
        let (cfg, model) = load_case(case);
        check_forward(case, &model, &cfg);
    }
}

fn check_sampler(case: &str, file: &str, kind: SamplerKind) {
    let (cfg, model) = load_case(case);
    let f = load_st(&fixture_dir(case).join(file));
    let (z, y) = (f["z"].clone(), i64s(&f["y"]));
    let scale = f32s(&f["cfg_scale"])[0] as f64;
    let want_t: Vec<usize> = i64s(&f["timesteps"]).iter().map(|&v| v as usize).collect();
    // sample.py's create_diffusion(str(K))
    let sampler = Sampler::new(&want_t.len().to_string(), kind, cfg.learn_sigma).unwrap();
    assert_eq!(sampler.diffusion.timestep_map, want_t, "{case}/{file}: respaced timesteps");
    let guidance = (scale > 1.0).then_some(Guidance { scale, guided_channels: 4, null_label: cfg.num_classes as i64 });
    let per_step = z.elem_count();
    let mut noise: Box<dyn NoiseSource> = match f.get("noise") {
        // (steps, rows, F, C, H, W); with CFG the rows are [z; z] and the first half drives x.
        Some(n) => {
            let first = n.narrow(1, 0, z.dim(0).unwrap()).unwrap();
            Box::new(GivenNoise { data: f32s(&first), per_step })
        }
        None => Box::new(SeededNoise::new(0)),
    };
    let grid = cfg.semantic_size;
    let sample = sampler.sample(|x, t, y| model.forward(x, t, y, grid), &z, &y, guidance, noise.as_mut(), |_| Ok(())).unwrap();
    assert_eq!(sample.dims(), f["sample"].dims());
    assert_close(&format!("{case}/{file}"), &f32s(&sample), &f32s(&f["sample"]), SAMPLE_TOL);
}

#[test]
fn official_latte_sampling() {
    check_sampler("latte_f3_p2", "ddim.safetensors", SamplerKind::Ddim { eta: 0.0 });
    // learned sigma: the variance half is channel C.. of every frame (split on dim 2)
    check_sampler("latte_f3_p2", "ddpm.safetensors", SamplerKind::Ddpm);
    check_sampler("latte_f8_p4_uncond", "ddim.safetensors", SamplerKind::Ddim { eta: 0.0 });
    check_sampler("sparselatte_f3", "ddim.safetensors", SamplerKind::Ddim { eta: 0.0 });
}

#[test]
fn engine_samples_clips_with_the_official_defaults() {
    let (cfg, _) = load_case("latte_f3_p2");
    let engine = Engine::from_tensors(None, cfg.clone(), checkpoint("latte_f3_p2")).unwrap();
    // Latte's ucf101_sample.yaml: DDPM, 250 steps, CFG 7 on the first 4 channels.
    let official = SampleRequest::official_for(&cfg);
    assert_eq!((official.steps, official.sampler, official.cfg_scale), (250, SamplerKind::Ddpm, 7.0));
    let plan = official.plan(&cfg).unwrap();
    assert_eq!(plan.guidance.unwrap().guided_channels, 4);
    // The engine's DDIM run from the fixture's z equals the official loop.
    let f = load_st(&fixture_dir("latte_f3_p2").join("ddim.safetensors"));
    let y = i64s(&f["y"]); // rows are independent: row 0 alone is the same run
    let req = SampleRequest {
        label: y[0],
        steps: 10,
        sampler: SamplerKind::Ddim { eta: 0.0 },
        cfg_scale: 4.0,
        latent: Some(f32s(&f["z"].narrow(0, 0, 1).unwrap())),
        ..SampleRequest::default()
    };
    let mut steps = 0;
    let out = pollster::block_on(engine.sample(&req, |_| {
        steps += 1;
        Ok(true)
    }))
    .unwrap();
    assert_eq!((steps, out.shape.clone()), (10, cfg.latent_shape(1)));
    let want = f["sample"].narrow(0, 0, 1).unwrap();
    assert_close("engine DDIM clip", &out.latent, &f32s(&want), SAMPLE_TOL);
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let e: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let r: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (e / r.max(1e-300)).sqrt()
}

fn pack_bytes(cfg: &Config, map: &TensorMap, ty: TensorType) -> Vec<u8> {
    let mut bytes = Vec::new();
    write_pack(&mut bytes, cfg, map, ty, "test", |_, _| {}).unwrap();
    bytes
}

#[test]
fn latte_packs_of_every_type() {
    for case in ["latte_f3_p2", "latte_f8_p4_uncond", "sparselatte_f3"] {
        let (cfg, model) = load_case(case);
        let inp = load_st(&fixture_dir(case).join("inputs.safetensors"));
        let (x, t, y) = (inp["x"].clone(), f32s(&inp["t"]), i64s(&inp["y"]));
        let want = f32s(&model.forward(&x, &t, &y, cfg.semantic_size).unwrap());
        // relative L2 error of the whole output (4-bit weights in a random 14-block model move
        // the output of a random 14-block width-32 model by ~20%: measured 2.4e-2 .. 2.1e-1)
        for (ty, tol) in [(TensorType::F32, 1e-6), (TensorType::F16, 2e-3), (TensorType::Q8_0, 2e-2), (TensorType::Q4_0, 0.3)] {
            let bytes = pack_bytes(&cfg, &checkpoint(case), ty);
            let g = Gguf::parse(&bytes).unwrap();
            assert_eq!(config_from_header(&g.header).unwrap(), cfg, "{case} {ty:?}: pack metadata");
            let pack = load_pack_bytes(&bytes).unwrap();
            let m = Model::from_tensors(pack.cfg.clone(), pack.tensors).unwrap();
            let got = f32s(&m.forward(&x, &t, &y, cfg.semantic_size).unwrap());
            let l2 = rel_l2(&got, &want);
            eprintln!("{case} pack {ty:?}: relative L2 error {l2:.2e}");
            assert!(l2 <= tol && got.iter().all(|v| v.is_finite()), "{case} pack {ty:?}: relative L2 error {l2:.3e} > {tol:.0e}");
        }
    }
}

#[test]
fn the_pair_walk() {
    let cfg = fixture_config("sparselatte_f3");
    let b = cfg.blocks(4);
    let got: Vec<(BlockKind, Axis, usize)> = b.iter().map(|s| (s.kind, s.axis, s.side)).collect();
    use Axis::*;
    use BlockKind::*;
    let mut want = vec![(Poolingformer, Spatial, 6), (Normal, Temporal, 6)];
    for _ in 0..2 {
        want.extend([(Merge, Spatial, 4), (Semantic, Temporal, 4), (Semantic, Spatial, 4), (Semantic, Temporal, 4)]);
        want.extend([(Recover, Spatial, 6), (Normal, Temporal, 6), (Normal, Spatial, 6), (Normal, Temporal, 6)]);
    }
    want.extend([(Normal, Spatial, 6), (Normal, Temporal, 6)]);
    assert_eq!(got, want);
    assert_eq!(b[3].prefix, "dumbbell_blocks.0.token_merge_blocks.1");
    // An odd count cannot pair up.
    let mut bad = cfg.clone();
    bad.layout = sparsedit::Layout::Dense { depth: 3 };
    assert!(bad.validate().unwrap_err().to_string().contains("pairs"));
    // The XL preset: 28 blocks, spatial / temporal alternating.
    let xl = Config::preset("sparselatte-xl2-ucf101").unwrap();
    let walk = xl.blocks(8);
    assert_eq!(walk.len(), 28);
    assert!(walk.iter().enumerate().all(|(i, s)| (s.axis == Temporal) == (i % 2 == 1)));
}

#[test]
fn dense_latte_initialises_sparse_latte() {
    // The paper initialises SparseDiT from DiT; the same rule for Latte: spatial blocks as in
    // dit-to-sparsedit, temporal partners copied, temp_embed kept.
    let (dense_cfg, _) = load_case("latte_f8_p4_uncond");
    let layout = parse_layout("2,1,2:0:2:0,0").unwrap();
    let (cfg, sparse) = dit_to_sparsedit(&checkpoint("latte_f8_p4_uncond"), &dense_cfg, layout).unwrap();
    assert!(cfg.is_video() && sparse.contains_key("temp_embed"));
    assert!(sparse.contains_key("dumbbell_blocks.0.token_merge_blocks.1.attn.qkv.weight"));
    assert!(sparse.contains_key("poolingformer_blocks.0.attn.v.weight"));
    let model = Model::from_tensors(cfg.clone(), sparse).unwrap();
    // At the dense grid (s = n, identity pooling) the merge / recover init reproduces dense
    // attention exactly except for the Poolingformer, so only check the run is sound.
    let inp = load_st(&fixture_dir("latte_f8_p4_uncond").join("inputs.safetensors"));
    let out = model.forward(&inp["x"], &f32s(&inp["t"]), &i64s(&inp["y"]), 2).unwrap();
    assert!(f32s(&out).iter().all(|v| v.is_finite()));
}

#[test]
fn bad_video_inputs_are_clear_errors() {
    let (cfg, model) = load_case("latte_f3_p2");
    let (c, i, f) = (cfg.in_channels, cfg.input_size, cfg.frames());
    let dev = Device::Cpu;
    // an image batch to a video model
    let img = Tensor::zeros((1, c, i, i), DType::F32, &dev).unwrap();
    let err = model.forward(&img, &[1.0], &[0], 2).unwrap_err().to_string();
    assert!(err.contains("(B, F, C, H, W)") && err.contains(&format!("(B, {f}, {c}, {i}, {i})")), "{err}");
    // the wrong frame count (temp_embed has F rows)
    let clip = Tensor::zeros((1, f + 1, c, i, i), DType::F32, &dev).unwrap();
    assert!(model.forward(&clip, &[1.0], &[0], 2).unwrap_err().to_string().contains("shape"));
    // labels beyond the null label
    let ok = Tensor::zeros((1, f, c, i, i), DType::F32, &dev).unwrap();
    assert!(model.forward(&ok, &[1.0], &[cfg.num_classes as i64 + 1], 2).unwrap_err().to_string().contains("out of range"));
    // an unconditional model has no null label to guide with
    let (ucfg, _) = load_case("latte_f8_p4_uncond");
    let req = SampleRequest { cfg_scale: 4.0, ..SampleRequest::default() };
    assert!(req.plan(&ucfg).err().unwrap().to_string().contains("null label"));
    assert_eq!(SampleRequest::official_for(&ucfg).cfg_scale, 1.0);
    // a missing temp_embed is named
    let mut map = checkpoint("latte_f3_p2");
    map.remove("temp_embed");
    assert!(Model::from_tensors(cfg.clone(), map).err().unwrap().to_string().contains("temp_embed"));
    // a truncated pack
    let bytes = pack_bytes(&cfg, &checkpoint("latte_f3_p2"), TensorType::Q8_0);
    assert!(load_pack_bytes(&bytes[..bytes.len() - 100]).is_err());
}

#[test]
fn training_free_pooled_middle_on_plain_latte() {
    // gen_latte.py's latte_pooled_middle on the official model: blocks A..B on each frame's
    // s x s pooled grid (temporal ones over the pooled cells), the update added back with
    // 'nearest'; latte_f3_p2's middle starts on a temporal block (temp_embed goes in there).
    let mut seen = 0;
    for case in ["latte_f3_p2", "latte_f8_p4_uncond"] {
        let (cfg, mut model) = load_case(case);
        let inp = load_st(&fixture_dir(case).join("inputs.safetensors"));
        let exp = load_st(&fixture_dir(case).join("expected.safetensors"));
        for (key, want) in exp.iter().filter(|(k, _)| k.starts_with("out_pm_")) {
            let parts: Vec<usize> = key["out_pm_".len()..].replace('s', "").split('_').map(|v| v.parse().unwrap()).collect();
            let pm = sparsedit::config::PooledMiddle { start: parts[0], end: parts[1] };
            model.set_pooled_middle(Some(pm)).unwrap();
            let got = model.forward(&inp["x"], &f32s(&inp["t"]), &i64s(&inp["y"]), parts[2]).unwrap();
            assert_close(&format!("{case} {key}"), &f32s(&got), &f32s(want), FORWARD_TOL);
            seen += 1;
        }
        assert!(cfg.is_video());
    }
    assert_eq!(seen, 3, "pooled-middle outputs in the fixtures");
}

#[test]
fn temp_embed_table_is_the_official_one() {
    // The official init's sin-cos temp_embed (kept by gen_latte.py) = grid::sincos_1d, which
    // random packs of video presets use.
    for case in ["latte_f3_p2", "latte_f8_p4_uncond"] {
        let cfg = fixture_config(case);
        let want = f32s(&checkpoint(case)["temp_embed"]);
        let got = sparsedit::grid::sincos_1d(cfg.hidden_size, cfg.frames());
        assert_close(&format!("{case} temp_embed"), &got, &want, 1e-6);
        let want = f32s(&checkpoint(case)["pos_embed"]);
        let got = sparsedit::grid::sincos_pos_embed(cfg.hidden_size, cfg.grid());
        assert_close(&format!("{case} pos_embed"), &got, &want, 1e-6);
    }
}
