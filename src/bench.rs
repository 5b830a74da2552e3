//! `sparsedit bench`: dense vs sparse on the same backend in one run (forward time, full-sample
//! time, MACs, and the ratios), plus the matmul kernel's achieved GFLOP/s on the GPU.
//!
//! Timings are wall-clock medians after a warm-up; on the GPU each timed run waits for the
//! device to finish. A preset gets seeded random weights (timing does not depend on values).

use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::blocks::BlockWeights;
use crate::config::{Config, GridSchedule, Layout, SparseLayout};
use crate::diffusion::{default_respacing, Guidance, Sampler, SamplerKind, SeededNoise};
use crate::error::{Error, Result};
use crate::flops::count_macs;
use crate::gguf::TensorType;
use crate::gpu::model::{EncodedMap, GpuModel};
use crate::gpu::ops::{linear, Epilogue, GpuLinear};
use crate::gpu::Gpu;
use crate::model::{sincos_pos_embed, Model, TensorMap};

/// Seeded random weights with the official names for `cfg` (N(0, 1/fan_in) linears, small
/// biases, the real sin-cos position table).
pub fn random_tensors(cfg: &Config, seed: u64) -> Result<TensorMap> {
    let mut rng = SeededNoise::new(seed);
    let mut map = TensorMap::new();
    let dev = Device::Cpu;
    let mut put = |name: String, shape: Vec<usize>, scale: f32| -> Result<()> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = rng.normal(n).into_iter().map(|x| x * scale).collect();
        map.insert(name, Tensor::from_vec(v, shape, &dev)?);
        Ok(())
    };
    let (c, p, cin, m) = (cfg.hidden_size, cfg.patch_size, cfg.in_channels, cfg.mlp_hidden);
    let linear = |put: &mut dyn FnMut(String, Vec<usize>, f32) -> Result<()>, name: &str, k: usize, n: usize, gain: f32| -> Result<()> {
        put(format!("{name}.weight"), vec![n, k], gain / (k as f32).sqrt())?;
        put(format!("{name}.bias"), vec![n], 0.02)
    };
    put("x_embedder.proj.weight".into(), vec![c, cin, p, p], 1.0 / ((cin * p * p) as f32).sqrt())?;
    put("x_embedder.proj.bias".into(), vec![c], 0.02)?;
    linear(&mut put, "t_embedder.mlp.0", crate::config::FREQ_DIM, c, 1.0)?;
    linear(&mut put, "t_embedder.mlp.2", c, c, 1.0)?;
    if cfg.is_class_conditional() {
        put("y_embedder.embedding_table.weight".into(), vec![cfg.num_classes + cfg.class_null as usize, c], 1.0)?;
    }
    for spec in cfg.blocks(cfg.grid()) {
        let b = |s: &str| format!("{}.{s}", spec.prefix);
        match spec.kind.weights() {
            BlockWeights::Poolingformer => linear(&mut put, &b("attn.v"), c, c, 1.0)?,
            BlockWeights::Dit => linear(&mut put, &b("attn.qkv"), c, 3 * c, 1.0)?,
            BlockWeights::Merge | BlockWeights::Recover => {
                linear(&mut put, &b("attn.q"), c, c, 1.0)?;
                linear(&mut put, &b("attn.kv"), c, 2 * c, 1.0)?;
            }
        }
        if spec.kind.weights() == BlockWeights::Recover {
            linear(&mut put, &b("merged_layer1"), c, c, 0.5)?;
            linear(&mut put, &b("merged_layer2"), c, c, 0.5)?;
        }
        linear(&mut put, &b("attn.proj"), c, c, 1.0)?;
        linear(&mut put, &b("mlp.fc1"), c, m, 1.0)?;
        linear(&mut put, &b("mlp.fc2"), m, c, 1.0)?;
        linear(&mut put, &b("adaLN_modulation.1"), c, 6 * c, 0.3)?;
    }
    linear(&mut put, "final_layer.adaLN_modulation.1", c, 2 * c, 0.3)?;
    linear(&mut put, "final_layer.linear", c, p * p * cfg.out_channels(), 1.0)?;
    let n = cfg.grid();
    map.insert("pos_embed".into(), Tensor::from_vec(sincos_pos_embed(c, n), (1, n * n, c), &dev)?);
    if let Some(f) = cfg.num_frames {
        map.insert("temp_embed".into(), Tensor::from_vec(crate::grid::sincos_1d(c, f), (1, f, c), &dev)?);
    }
    Ok(map)
}

/// The other half of a comparison: a sparse model's dense twin (same widths and depth), or a
/// dense model's SparseDiT layout (the released 256 px layout at depth 28, else 1 Poolingformer,
/// [1,2,1,0] SDTMs as in `Config::tiny(true)`, and the rest on top).
pub fn counterpart(cfg: &Config) -> Config {
    let mut other = cfg.clone();
    let depth = cfg.layout.depth();
    if let (Some(_), Layout::Dense { .. }) = (cfg.num_frames, cfg.layout) {
        // A video model's blocks come in (spatial, temporal) pairs: the image rule on the pairs,
        // every count doubled (Latte-XL/2's 14 pairs: the sparselatte-xl2 preset's layout).
        let pairs = Config { num_frames: None, layout: Layout::Dense { depth: depth / 2 }, ..cfg.clone() };
        other.layout = match counterpart(&pairs).layout {
            _ if depth == 28 => Layout::Sparse(SparseLayout { num_poolingformer: 2, num_sdtm: 2, group: [2, 8, 2, 0], num_top: 2 }),
            Layout::Sparse(l) => Layout::Sparse(SparseLayout {
                num_poolingformer: 2 * l.num_poolingformer,
                num_sdtm: l.num_sdtm,
                group: l.group.map(|g| 2 * g),
                num_top: 2 * l.num_top,
            }),
            dense => dense,
        };
        other.semantic_size = cfg.semantic_size.min(cfg.grid() / 2).max(1);
        return other;
    }
    if !cfg.layout.is_sparse() {
        // A dense pack's stored grid side means nothing; the sparse counterpart pools to at most
        // half the dense side (XL/2: 8 of 16, the released runs' s).
        other.semantic_size = cfg.semantic_size.min(cfg.grid() / 2).max(1);
    }
    other.layout = match cfg.layout {
        Layout::Sparse(_) => Layout::Dense { depth },
        Layout::Dense { .. } if depth == 28 => {
            Layout::Sparse(SparseLayout { num_poolingformer: 1, num_sdtm: 4, group: [1, 3, 1, 1], num_top: 3 })
        }
        Layout::Dense { .. } => {
            let k = depth.saturating_sub(2) / 4;
            Layout::Sparse(SparseLayout { num_poolingformer: 1, num_sdtm: k, group: [1, 2, 1, 0], num_top: depth - 1 - 4 * k })
        }
    };
    other
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct BenchRow {
    pub model: String,
    pub macs: u64,
    pub forward_ms: f64,
    pub sample_s: f64,
}

pub struct BenchOptions {
    pub steps: usize,
    pub batch: usize,
    pub repeats: usize,
    pub quant: TensorType,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Time one model on `gpu` (or the CPU when `gpu` is None).
pub fn bench_model(gpu: Option<&Gpu>, cfg: &Config, tensors: &TensorMap, opts: &BenchOptions, label: &str) -> Result<BenchRow> {
    let b = opts.batch.max(1);
    let rows = 2 * b; // CFG doubles the batch, as sampling does
    let s = cfg.semantic_size;
    let xlen = rows * cfg.latent_len(); // clips of a video model: rows x F frames
    let x: Vec<f32> = SeededNoise::new(1).normal(xlen);
    let t = vec![500.0f32; rows];
    // [cond; uncond] labels (an unconditional model ignores them)
    let y: Vec<i64> = (0..rows).map(|i| if i < b { (i % cfg.num_classes.max(1)) as i64 } else { cfg.num_classes as i64 }).collect();
    let macs = count_macs(cfg, Some(s)).total() * rows as u64;
    let respacing = default_respacing(opts.steps);
    let sampler = Sampler::new(&respacing, SamplerKind::Ddim { eta: 0.0 }, cfg.learn_sigma)?;
    // CFG as the official sampling scripts (3 channels in DiT, 4 in Latte); still two rows per
    // sample for an unconditional model, so both kinds time the same batch.
    let null_label = cfg.null_label().unwrap_or(0) as i64;
    let guidance = Some(Guidance { scale: 4.0, guided_channels: cfg.official_guided_channels(), null_label });
    let z: Vec<f32> = SeededNoise::new(2).normal(xlen / 2);
    let labels: Vec<i64> = y[..b].to_vec();
    let sched = GridSchedule::Fixed(s);
    let (forward_ms, sample_s) = match gpu {
        Some(g) => {
            let gm = GpuModel::load(g, cfg.clone(), &EncodedMap { tensors, quant: opts.quant })?;
            let plan = gm.plan(g, rows, s)?;
            gm.write_inputs(g, &plan, Some(&x), &t, &y)?;
            g.run(&plan.dispatches)?;
            g.wait()?;
            let mut times = Vec::new();
            for _ in 0..opts.repeats.max(1) {
                let t0 = Instant::now();
                g.run(&plan.dispatches)?;
                g.wait()?;
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            let t0 = Instant::now();
            let mut noise = SeededNoise::new(3);
            pollster::block_on(crate::gpu::sample::sample_gpu(g, &gm, &sampler, &z, &labels, guidance, &sched, &mut noise, Default::default(), |_| Ok(true)))?;
            (median(times), t0.elapsed().as_secs_f64())
        }
        None => {
            let m = Model::from_tensors(cfg.clone(), tensors.clone())?;
            let xt = Tensor::from_vec(x.clone(), cfg.latent_shape(rows), &Device::Cpu)?;
            m.forward(&xt, &t, &y, s)?;
            let mut times = Vec::new();
            for _ in 0..opts.repeats.max(1) {
                let t0 = Instant::now();
                m.forward(&xt, &t, &y, s)?;
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            let zt = Tensor::from_vec(z.clone(), cfg.latent_shape(b), &Device::Cpu)?;
            let t0 = Instant::now();
            let mut noise = SeededNoise::new(3);
            sampler.sample(|x, t, y| m.forward(x, t, y, s), &zt, &labels, guidance, &mut noise, |_| Ok(()))?;
            (median(times), t0.elapsed().as_secs_f64())
        }
    };
    Ok(BenchRow { model: label.to_string(), macs, forward_ms, sample_s })
}

/// Per-block GPU time (ms) of one forward pass of `cfg` at batch `rows`, from timestamp
/// queries, with each group's token count ("-" for the embedders and heads).
pub fn block_times(gpu: &Gpu, cfg: &Config, tensors: &TensorMap, rows: usize, quant: TensorType) -> Result<Vec<(String, String, f64)>> {
    let gm = GpuModel::load(gpu, cfg.clone(), &EncodedMap { tensors, quant })?;
    let plan = gm.plan(gpu, rows, cfg.semantic_size)?;
    let t = vec![500.0f32; rows];
    let y = vec![0i64; rows];
    let x = SeededNoise::new(5).normal(rows * cfg.latent_len());
    gm.write_inputs(gpu, &plan, Some(&x), &t, &y)?;
    let groups = plan.groups();
    gpu.profile(&groups)?; // warm-up
    let times = gpu.profile(&groups)?;
    Ok(times
        .into_iter()
        .map(|(name, ms)| {
            let tokens = plan.blocks.iter().find(|b| b.name == name).map_or("-".to_string(), |b| b.tokens.to_string());
            (name, tokens, ms)
        })
        .collect())
}

/// Achieved GFLOP/s of the linear kernel on an (M, K) x (K, N) product.
pub fn matmul_gflops(gpu: &Gpu, m: usize, k: usize, n: usize, quant: TensorType, repeats: usize) -> Result<f64> {
    let mut rng = SeededNoise::new(4);
    let w = rng.normal(n * k);
    let bytes = crate::gguf::encode(&w, quant)?;
    let lin = GpuLinear::from_encoded(gpu, "bench", quant, &bytes, n, k, &vec![0.0; n])?;
    let x = gpu.upload("x", &rng.normal(m * k))?;
    let y = gpu.zeros("y", m * n)?;
    let d = linear(gpu, "bench", &lin, &x, m, &y, Epilogue::Store)?;
    let batch: Vec<_> = std::iter::repeat_with(|| linear(gpu, "bench", &lin, &x, m, &y, Epilogue::Store)).take(8).collect::<Result<_>>()?;
    gpu.run(std::slice::from_ref(&d))?;
    gpu.wait()?;
    let mut times = Vec::new();
    for _ in 0..repeats.max(1) {
        let t0 = Instant::now();
        gpu.run(&batch)?;
        gpu.wait()?;
        times.push(t0.elapsed().as_secs_f64() / batch.len() as f64);
    }
    Ok(2.0 * (m * n * k) as f64 / median(times) / 1e9)
}

/// Markdown table of a dense/sparse comparison.
pub fn table(device: &str, rows: &[BenchRow], opts: &BenchOptions) -> Result<String> {
    if rows.len() != 2 {
        return Err(Error::arg("a comparison needs two rows"));
    }
    let mut s = format!(
        "Device: {device}; batch {} (x2 for CFG), {} DDIM steps, weights {}\n\n",
        opts.batch,
        opts.steps,
        opts.quant.name()
    );
    s.push_str("| model | GMACs / forward | forward ms | sample s |\n|---|---:|---:|---:|\n");
    for r in rows {
        s.push_str(&format!("| {} | {:.3} | {:.2} | {:.2} |\n", r.model, r.macs as f64 / 1e9, r.forward_ms, r.sample_s));
    }
    let (d, sp) = (&rows[0], &rows[1]);
    s.push_str(&format!(
        "| dense / sparse | {:.2}x | {:.2}x | {:.2}x |\n",
        d.macs as f64 / sp.macs as f64,
        d.forward_ms / sp.forward_ms,
        d.sample_s / sp.sample_s
    ));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counterparts_are_the_presets() {
        // Images: DiT-XL/2 <-> the released SparseDiT-XL/2 layout; the tiny model's rule.
        let xl = Config::dit("XL", 2, 256).unwrap();
        assert_eq!(counterpart(&xl).layout, Config::sparsedit_xl2(256).unwrap().layout);
        assert_eq!(counterpart(&Config::tiny(false)).layout, Config::tiny(true).layout);
        assert_eq!(counterpart(&Config::tiny(true)).layout, Config::tiny(false).layout);
        // Video: the pairs' layouts, and a grid side the dense grid can pool to.
        let tv = counterpart(&Config::tiny_video(false));
        assert_eq!((tv.layout, tv.semantic_size), (Config::tiny_video(true).layout, 4));
        tv.validate().unwrap();
        let latte = Config::latte("XL", 2, 256, 16, 101).unwrap();
        let sl = counterpart(&latte);
        assert_eq!((sl.layout, sl.semantic_size), (Config::sparse_latte_xl2(256, 16, 101).unwrap().layout, 8));
        assert_eq!(counterpart(&sl).layout, latte.layout);
    }
}
