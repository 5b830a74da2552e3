//! The whole GPU forward pass against the CPU reference and the PyTorch fixtures, for every
//! fixture architecture, in f32 and through quantized packs. Needs a WebGPU adapter (lavapipe in
//! CI); with CI=true a missing adapter is a failure, elsewhere the test says it skipped.

mod common;

use common::*;
use common::gpu_or_skip as gpu;
use sparsedit::gguf::TensorType;
use sparsedit::gpu::model::{EncodedMap, GpuModel};
use sparsedit::import::{infer_config, read_checkpoint, ImportOptions};
use sparsedit::model::Model;
use sparsedit::pack;


const CASES: [(&str, &str); 4] = [
    ("sparse_nondiv", "model.pt"),
    ("sparse_p4_gray", "model.safetensors"),
    ("sparse_8to3", "model.pt"),
    ("dit_dense", "model.pt"),
];

fn load(case: &str, file: &str) -> (sparsedit::Config, sparsedit::model::TensorMap) {
    let want = fixture_config(case);
    let map = read_checkpoint(&fixture_dir(case).join(file)).unwrap();
    let cfg = infer_config(&map, &ImportOptions { heads: Some(want.num_heads), semantic_size: Some(want.semantic_size) }).unwrap();
    (cfg, map)
}

#[test]
fn gpu_forward_matches_cpu_and_pytorch_f32() {
    let Some(gpu) = gpu() else { return };
    for (case, file) in CASES {
        let (cfg, map) = load(case, file);
        let gm = GpuModel::load(&gpu, cfg.clone(), &EncodedMap { tensors: &map, quant: TensorType::F32 }).unwrap();
        let cpu = Model::from_tensors(cfg.clone(), map.clone()).unwrap();
        let inp = load_st(&fixture_dir(case).join("inputs.safetensors"));
        let (x, t, y) = (inp["x"].clone(), f32s(&inp["t"]), i64s(&inp["y"]));
        let exp = load_st(&fixture_dir(case).join("expected.safetensors"));
        let mut grids = vec![(cfg.semantic_size, "out".to_string())];
        if exp.contains_key("out_s3") {
            grids.push((3, "out_s3".into()));
            grids.push((6, "out_s6".into()));
        }
        for (grid, key) in grids {
            let plan = gm.plan(&gpu, x.dim(0).unwrap(), grid).unwrap();
            let got = gm.forward(&gpu, &plan, &f32s(&x), &t, &y).unwrap();
            let want_cpu = f32s(&cpu.forward(&x, &t, &y, grid).unwrap());
            assert_close(&format!("{case} grid {grid}: GPU vs CPU"), &got, &want_cpu, 1e-3);
            assert_close(&format!("{case} grid {grid}: GPU vs PyTorch"), &got, &f32s(&exp[&key]), 1e-3);
            eprintln!("{case} grid {grid}: max relative error vs CPU {:.2e}", max_rel_err(&got, &want_cpu));
        }
    }
}

#[test]
fn gpu_quantized_weights_match_cpu_on_the_same_pack() {
    let Some(gpu) = gpu() else { return };
    let (cfg, map) = load("sparse_8to3", "model.pt");
    let inp = load_st(&fixture_dir("sparse_8to3").join("inputs.safetensors"));
    let (x, t, y) = (inp["x"].clone(), f32s(&inp["t"]), i64s(&inp["y"]));
    for quant in [TensorType::F16, TensorType::Q8_0, TensorType::Q4_0] {
        let mut bytes = Vec::new();
        pack::write_pack(&mut bytes, &cfg, &map, quant, "test", |_, _| {}).unwrap();
        // The CPU reference on the dequantised pack and the GPU on the packed weights.
        let loaded = pack::load_pack_bytes(&bytes).unwrap();
        let cpu = Model::from_tensors(loaded.cfg.clone(), loaded.tensors).unwrap();
        let gm = GpuModel::from_pack_bytes(&gpu, &bytes).unwrap();
        let plan = gm.plan(&gpu, 4, cfg.semantic_size).unwrap();
        let got = gm.forward(&gpu, &plan, &f32s(&x), &t, &y).unwrap();
        let want = f32s(&cpu.forward(&x, &t, &y, cfg.semantic_size).unwrap());
        eprintln!("{quant:?}: GPU vs CPU max relative error {:.2e}", max_rel_err(&got, &want));
        assert_close(&format!("{quant:?} GPU vs CPU"), &got, &want, 1e-3);
    }
}

#[test]
fn plans_reuse_pipelines_and_reject_bad_input() {
    let Some(gpu) = gpu() else { return };
    let (cfg, map) = load("sparse_nondiv", "model.pt");
    let gm = GpuModel::load(&gpu, cfg.clone(), &EncodedMap { tensors: &map, quant: TensorType::Q8_0 }).unwrap();
    let p1 = gm.plan(&gpu, 2, 4).unwrap();
    let n = gpu.pipeline_count();
    let _p2 = gm.plan(&gpu, 3, 3).unwrap();
    assert_eq!(gpu.pipeline_count(), n, "a second plan builds no new pipelines");
    assert_eq!(p1.blocks.len(), cfg.layout.depth());
    assert_eq!(p1.blocks[2].tokens, 16, "merge block computes s*s tokens");
    assert_eq!(p1.blocks[0].grid, 1, "Poolingformer: one global token");
    let x = vec![0.5f32; 2 * 4 * 12 * 12];
    assert!(gm.forward(&gpu, &p1, &x, &[1.0, 2.0], &[0, 9]).unwrap_err().to_string().contains("out of range"));
    assert!(gm.forward(&gpu, &p1, &x[1..], &[1.0, 2.0], &[0, 1]).is_err());
    assert!(gm.forward(&gpu, &p1, &x, &[1.0], &[0, 1]).is_err());
    assert!(gm.plan(&gpu, 2, 0).is_err());
}

#[test]
fn traced_plan_captures_cross_attention_like_the_cpu_trace() {
    let Some(gpu) = gpu() else { return };
    let (cfg, map) = load("sparse_nondiv", "model.pt");
    let gm = GpuModel::load(&gpu, cfg.clone(), &EncodedMap { tensors: &map, quant: TensorType::F32 }).unwrap();
    let cpu = Model::from_tensors(cfg.clone(), map).unwrap();
    let inp = load_st(&fixture_dir("sparse_nondiv").join("inputs.safetensors"));
    let (x, t, y) = (inp["x"].clone(), f32s(&inp["t"]), i64s(&inp["y"]));
    let plain = gm.plan(&gpu, 4, 3).unwrap();
    assert!(plain.attention.is_empty(), "no capture unless asked");
    let plan = gm.plan_with(&gpu, 4, 3, true).unwrap();
    assert_eq!(plan.dispatches.len(), plain.dispatches.len() + plan.attention.len());
    let out = gm.forward(&gpu, &plan, &f32s(&x), &t, &y).unwrap();
    let mut trace = Vec::new();
    let want = cpu.forward_traced(&x, &t, &y, 3, Some(&mut trace)).unwrap();
    assert_close("traced forward", &out, &f32s(&want), 1e-3);
    let cpu_maps: Vec<_> = trace.iter().filter(|b| b.attention.is_some()).collect();
    assert_eq!(cpu_maps.len(), plan.attention.len());
    assert_eq!(plan.attention.len(), 4, "2 SDTMs x (merge + recover)");
    for (cap, tr) in plan.attention.iter().zip(cpu_maps) {
        assert_eq!(cap.block, tr.name);
        let got = gpu.read(&cap.buf).unwrap();
        let want = f32s(tr.attention.as_ref().unwrap());
        assert_close(&format!("{} attention map", cap.block), &got[..want.len()], &want, 1e-3);
    }
    // Trace metadata: merge blocks work on the 3x3 grid, recover blocks on the dense 6x6 one.
    for (pb, tr) in plan.blocks.iter().zip(&trace) {
        assert_eq!((pb.name.as_str(), pb.tokens, pb.grid), (tr.name.as_str(), tr.tokens, tr.grid));
    }
}

#[test]
fn plan_groups_cover_every_dispatch_and_profile_per_block() {
    let Some(gpu) = gpu() else { return };
    let (cfg, map) = load("sparse_8to3", "model.pt");
    let gm = GpuModel::load(&gpu, cfg.clone(), &EncodedMap { tensors: &map, quant: TensorType::F32 }).unwrap();
    let plan = gm.plan(&gpu, 2, 3).unwrap();
    let groups = plan.groups();
    assert_eq!(groups.iter().map(|g| g.1.len()).sum::<usize>(), plan.dispatches.len());
    let names: Vec<&str> = groups.iter().map(|g| g.0.as_str()).collect();
    for b in &plan.blocks {
        assert_eq!(names.iter().filter(|n| **n == b.name).count(), 1, "{} is one group: {names:?}", b.name);
    }
    assert_eq!(names.first(), Some(&"x_embedder.patchify"));
    assert_eq!(names.last(), Some(&"unpatchify"));
    if gpu.has_timestamps {
        let times = gpu.profile(&groups).unwrap();
        assert_eq!(times.len(), groups.len());
        assert!(times.iter().all(|(_, ms)| ms.is_finite() && *ms >= 0.0), "{times:?}");
    } else if std::env::var("CI").as_deref() == Ok("true") {
        panic!("lavapipe has timestamp queries; CI expects them");
    }
}

/// A pack streamed in odd-sized chunks into GPU buffers (the browser's load path) gives the same
/// model as the pack loaded whole; the sha256 is checked; a flipped byte is refused.
#[test]
fn streamed_pack_loads_the_same_model() {
    use sparsedit::gpu::model::GpuStreamSink;
    use sparsedit::stream::{sha256_hex, PackStream};
    let Some(gpu) = gpu() else { return };
    let gpu = std::rc::Rc::new(gpu);
    let (cfg, map) = load("sparse_nondiv", "model.pt");
    let mut bytes = Vec::new();
    pack::write_pack(&mut bytes, &cfg, &map, TensorType::Q8_0, "stream", |_, _| {}).unwrap();
    let sha = sha256_hex(&bytes);
    let whole = GpuModel::from_pack_bytes(&gpu, &bytes).unwrap();

    let mut stream = PackStream::new(Some(bytes.len() as u64), Some(&sha)).unwrap();
    let mut sink = GpuStreamSink::new(gpu.clone());
    for chunk in bytes.chunks(777) {
        stream.push(chunk, &mut sink).unwrap();
    }
    let summary = stream.finish(&mut sink).unwrap();
    assert_eq!(summary.sha256, sha);
    assert!(sink.gpu_bytes > 4 * sink.host_bytes, "linear weights go to the GPU as they arrive: {} GPU / {} host bytes", sink.gpu_bytes, sink.host_bytes);
    let streamed = GpuModel::load(&gpu, summary.cfg, &sink).unwrap();

    let inp = load_st(&fixture_dir("sparse_nondiv").join("inputs.safetensors"));
    let (x, t, y) = (f32s(&inp["x"]), f32s(&inp["t"]), i64s(&inp["y"]));
    let b = inp["x"].dim(0).unwrap();
    let p1 = whole.plan(&gpu, b, cfg.semantic_size).unwrap();
    let p2 = streamed.plan(&gpu, b, cfg.semantic_size).unwrap();
    let a = whole.forward(&gpu, &p1, &x, &t, &y).unwrap();
    let s = streamed.forward(&gpu, &p2, &x, &t, &y).unwrap();
    assert_close("streamed vs whole pack", &s, &a, 1e-6);

    let mut bad = bytes.clone();
    let k = bad.len() / 2;
    bad[k] ^= 1;
    let mut stream = PackStream::new(Some(bad.len() as u64), Some(&sha)).unwrap();
    let mut sink = GpuStreamSink::new(gpu.clone());
    for chunk in bad.chunks(4096) {
        stream.push(chunk, &mut sink).unwrap();
    }
    let e = stream.finish(&mut sink).err().expect("a flipped byte must be refused").to_string();
    assert!(e.contains("sha256 mismatch"), "{e}");
}

/// The token view's layout (`layout::block_layouts`) says what the CPU model's trace does, block
/// for block, at several grids; a traced GPU sampling run reports every merge / recover map per
/// step (rows are distributions) and stops when `on_step` says so.
#[test]
fn layout_matches_trace_and_sampler_reports_attention() {
    use sparsedit::diffusion::{Sampler, SamplerKind, SeededNoise};
    use sparsedit::gpu::sample::{sample_gpu, SampleOptions};
    use sparsedit::layout::block_layouts;
    let (cfg, map) = load("sparse_nondiv", "model.pt");
    let cpu = Model::from_tensors(cfg.clone(), map.clone()).unwrap();
    let inp = load_st(&fixture_dir("sparse_nondiv").join("inputs.safetensors"));
    let (x, t, y) = (inp["x"].clone(), f32s(&inp["t"]), i64s(&inp["y"]));
    for grid in [2, 3, 4, 6] {
        let mut trace = Vec::new();
        cpu.forward_traced(&x, &t, &y, grid, Some(&mut trace)).unwrap();
        let layout = block_layouts(&cfg, grid);
        assert_eq!(layout.len(), trace.len(), "grid {grid}");
        for (l, tr) in layout.iter().zip(&trace) {
            assert_eq!((l.name.as_str(), l.tokens), (tr.name.as_str(), tr.tokens), "grid {grid}");
            if l.grid == "sparse" {
                assert_eq!((l.side, l.windows.len()), (grid, grid * grid), "{} grid {grid}", l.name);
            }
        }
    }

    let Some(gpu) = gpu() else { return };
    let gm = GpuModel::load(&gpu, cfg.clone(), &EncodedMap { tensors: &map, quant: TensorType::F32 }).unwrap();
    let sampler = Sampler::new("ddim5", SamplerKind::Ddim { eta: 0.0 }, cfg.learn_sigma).unwrap();
    let chw = cfg.in_channels * cfg.input_size * cfg.input_size;
    let mut noise = SeededNoise::new(3);
    let z = noise.normal(2 * chw);
    let layout = block_layouts(&cfg, 3);
    let mut seen = 0;
    let opts = SampleOptions { preview: true, trace: true };
    let sched = sparsedit::GridSchedule::Fixed(3);
    let fut = sample_gpu(&gpu, &gm, &sampler, &z, &[1, 2], None, &sched, &mut noise, opts, |s| {
        seen += 1;
        assert_eq!(s.pred_x0.map(|p| p.len()), Some(2 * chw));
        assert_eq!(s.attention.len(), 4, "2 SDTMs x (merge + recover)");
        for a in s.attention {
            let kind = layout[a.block].kind.name();
            assert_eq!(kind, a.kind.name(), "{}", a.name);
            assert!(kind == "merge" || kind == "recover", "{} is a {kind}", a.name);
            assert_eq!(layout[a.block].name, a.name);
            let (tq, tk) = if kind == "merge" { (9, 36) } else { (36, 9) };
            assert_eq!((a.tq, a.tk, a.probs.len()), (tq, tk, tq * tk), "{}", a.name);
            for (r, row) in a.probs.chunks(tk).enumerate() {
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-3, "{} row {r} sums to {sum}", a.name);
            }
        }
        Ok(s.iter < 1)
    });
    let out = pollster::block_on(fut).unwrap();
    assert_eq!(seen, 2, "stopped after the second step");
    assert_eq!(out.len(), 2 * chw);
}

#[test]
fn training_free_pooled_middle_on_gpu_matches_cpu_pytorch_and_layout() {
    use sparsedit::config::PooledMiddle;
    use sparsedit::layout::block_layouts;
    let case = "dit_pooled_middle";
    let (cfg, map) = load(case, "model.safetensors");
    let pm = Some(PooledMiddle { start: 2, end: 5 });
    let mut cpu = Model::from_tensors(cfg.clone(), map.clone()).unwrap();
    cpu.set_pooled_middle(pm).unwrap();
    let inp = load_st(&fixture_dir(case).join("inputs.safetensors"));
    let (x, t, y) = (inp["x"].clone(), f32s(&inp["t"]), i64s(&inp["y"]));
    // The token view and the trace agree: blocks 2..5 on s*s pooled tokens, the rest dense.
    for s in [3usize, 4] {
        let mut trace = Vec::new();
        cpu.forward_traced(&x, &t, &y, s, Some(&mut trace)).unwrap();
        let layout = block_layouts(&cpu.cfg, s);
        let tokens: Vec<usize> = layout.iter().map(|b| b.tokens).collect();
        assert_eq!(tokens, [64, 64, s * s, s * s, s * s, 64], "s = {s}");
        assert_eq!(layout.iter().map(|b| b.kind.name()).collect::<Vec<_>>(), ["dit", "dit", "pooled", "pooled", "pooled", "dit"]);
        assert_eq!(trace.iter().map(|b| b.tokens).collect::<Vec<_>>(), tokens, "s = {s}");
    }
    let Some(gpu) = gpu() else { return };
    let mut gm = GpuModel::load(&gpu, cfg.clone(), &EncodedMap { tensors: &map, quant: TensorType::F32 }).unwrap();
    gm.set_pooled_middle(pm).unwrap();
    let exp = load_st(&fixture_dir(case).join("expected.safetensors"));
    for (s, key) in [(3usize, "out_pm_2_5_s3"), (4, "out_pm_2_5_s4"), (8, "out")] {
        let plan = gm.plan(&gpu, x.dim(0).unwrap(), s).unwrap();
        let got = gm.forward(&gpu, &plan, &f32s(&x), &t, &y).unwrap();
        let want_cpu = f32s(&cpu.forward(&x, &t, &y, s).unwrap());
        assert_close(&format!("{case} s = {s}: GPU vs CPU"), &got, &want_cpu, 1e-3);
        assert_close(&format!("{case} s = {s}: GPU vs PyTorch"), &got, &f32s(&exp[key]), 1e-3);
        eprintln!("{case} s = {s}: max relative error vs CPU {:.2e}", max_rel_err(&got, &want_cpu));
    }
    // Not for a SparseDiT: it has its own sparse blocks.
    let (scfg, smap) = load("sparse_8to3", "model.pt");
    let mut sm = Model::from_tensors(scfg, smap).unwrap();
    assert!(sm.set_pooled_middle(Some(PooledMiddle { start: 1, end: 2 })).is_err());
}

/// 512 px geometry (a 64x64x4 latent, patch 2: 1024 tokens on a 32x32 grid) with batch > 1, on a
/// narrow random model so it stays quick: the 1024-token attention, 32 -> 8 pooling and 8 -> 32
/// upsampling of SparseDiT-XL/2-512, and the training-free pooled middle of a plain DiT at the
/// same size; GPU against the CPU reference.
#[test]
fn tokens_of_512px_with_batch_3_gpu_matches_cpu() {
    use sparsedit::config::{Layout, PooledMiddle, SparseLayout};
    use sparsedit::Config;
    let Some(gpu) = gpu() else { return };
    let mut sparse = Config::sparsedit_xl2(512).unwrap();
    sparse.hidden_size = 64;
    sparse.num_heads = 4;
    sparse.mlp_hidden = 256;
    sparse.num_classes = 1000;
    sparse.layout = Layout::Sparse(SparseLayout { num_poolingformer: 1, num_sdtm: 1, group: [1, 1, 1, 1], num_top: 1 });
    let mut dense = sparse.clone();
    dense.layout = Layout::Dense { depth: 5 };
    dense.pooled_middle = Some(PooledMiddle { start: 1, end: 4 });
    assert_eq!((sparse.grid(), sparse.num_tokens()), (32, 1024));
    let b = 3;
    let x = candle_core::Tensor::from_vec(random_nonzero(5, b * 4 * 64 * 64, 1.0), (b, 4, 64, 64), &candle_core::Device::Cpu).unwrap();
    let (t, y) = ([999.0f32, 500.0, 3.0], [207i64, 1000, 3]);
    for cfg in [sparse, dense] {
        let map = sparsedit::bench::random_tensors(&cfg, 11).unwrap();
        let cpu = Model::from_tensors(cfg.clone(), map.clone()).unwrap();
        let gm = GpuModel::load(&gpu, cfg.clone(), &EncodedMap { tensors: &map, quant: TensorType::F32 }).unwrap();
        let plan = gm.plan(&gpu, b, 8).unwrap();
        let got = gm.forward(&gpu, &plan, &f32s(&x), &t, &y).unwrap();
        let want = f32s(&cpu.forward(&x, &t, &y, 8).unwrap());
        let what = format!("{} at 1024 tokens, batch {b}, s = 8: GPU vs CPU", cfg.arch_name());
        assert_close(&what, &got, &want, 1e-3);
        eprintln!("{what}: max relative error {:.2e}", max_rel_err(&got, &want));
    }
}
