//! DiT / SparseDiT on the GPU, block for block beside the CPU model (`model.rs`).
//!
//! [`GpuModel`] holds the weights, uploaded once: one type per block kind ([`DitBlock`],
//! [`PoolingformerBlock`], [`TokenMergeBlock`], [`TokenRecoverBlock`]) whose `record` is the
//! CPU block's `forward`, line for line, as recorded dispatches. A [`Plan`] is one forward pass
//! for a (batch, sparse grid): the block walk of [`Config::blocks`] recorded over
//! [`Activations`] (allocated once per batch and shared by the plans of every grid), replayed
//! each denoising step as one submission. The CPU model is the reference the GPU output is
//! tested against.
//!
//! Video models (Latte, the spatial-temporal SparseDiT) record the same blocks over sequences
//! ([`Seqs`]): a spatial block over the F frames of a clip, a temporal one over its token
//! positions, between two `transpose_frames` dispatches; adaLN modulation stays one row per clip.

use std::rc::Rc;

use crate::blocks::{Axis, BlockKind, BlockWeights};
use crate::config::{Config, FREQ_DIM};
use crate::error::{Error, Result};
use crate::gguf::{Gguf, TensorType};
use crate::gpu::ops::attention::{attention, attention_probs, AttnShape};
use crate::gpu::ops::tokens::{self, Resize};
use crate::gpu::ops::{layernorm_modulate, linear_with, Epilogue, GpuLinear, Precision};
use crate::gpu::weights::{lin, table};
pub use crate::gpu::weights::{EncodedMap, GpuStreamSink, WeightSource};
use crate::gpu::{Dispatch, Gpu, GpuBuf};
use crate::model::timestep_embedding;
use crate::pack;

/// The two halves of a block, and where their adaLN vectors sit in its modulation (B, 6C):
/// `[shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp]` (the CPU `Modulation`).
#[derive(Clone, Copy)]
enum Half {
    /// Attention (multi-head self-attention in the official names).
    Msa,
    Mlp,
}

impl Half {
    fn shift(self, c: usize) -> usize {
        match self {
            Half::Msa => 0,
            Half::Mlp => 3 * c,
        }
    }
}

/// How a block's rows form attention sequences: per batch row (clip) `per_clip` sequences of
/// `len` tokens each, rows ordered sequence by sequence. An image is one sequence of T tokens;
/// a Latte spatial block sees F frames of T tokens, a temporal block T positions of F frames.
/// Modulation is per clip either way: a clip's rows are contiguous in both layouts.
#[derive(Clone, Copy, Debug)]
struct Seqs {
    per_clip: usize,
    len: usize,
}

impl Seqs {
    /// Token rows per clip.
    fn rows(self) -> usize {
        self.per_clip * self.len
    }
}

/// Records the dispatches of one forward pass over a plan's activations: the CPU model's tensor
/// ops, one call each (`linear`, `modulate(layer_norm(..))`, `attention`).
struct Recorder<'a> {
    gpu: &'a Gpu,
    precision: Precision,
    a: &'a Activations,
    /// Batch rows B (clips of F frames in a video model, images otherwise), hidden width C,
    /// heads H.
    b: usize,
    c: usize,
    heads: usize,
    d: Vec<Dispatch>,
    /// Cross-attention maps being captured (the token view), when asked for.
    captures: Option<Vec<AttentionCapture>>,
}

impl Recorder<'_> {
    /// y (B*t, out) = epilogue(x (B*t, in) W^T + b); `t` rows per batch element.
    fn linear(&mut self, lin: &GpuLinear, x: &GpuBuf, t: usize, y: &GpuBuf, epi: Epilogue) -> Result<()> {
        self.d.push(linear_with(self.gpu, &lin.name, lin, x, self.b * t, y, epi, self.precision)?);
        Ok(())
    }

    /// The block's modulation mods (B, 6C) = adaLN(SiLU(c)), one row per clip.
    fn modulation(&mut self, ada: &GpuLinear) -> Result<()> {
        let (cond, mods) = (&self.a.cond, &self.a.mods);
        self.linear(ada, cond, 1, mods, Epilogue::Store)
    }

    /// out (B, t, C) = modulate(layer_norm(x), shift, scale) of `half`; `t` rows per clip.
    fn modulate(&mut self, label: String, x: &GpuBuf, t: usize, half: Half, out: &GpuBuf) -> Result<()> {
        let (c, shift) = (self.c, half.shift(self.c));
        self.d.push(layernorm_modulate(self.gpu, &label, x, self.b * t, c, t, &self.a.mods, 6 * c, shift, shift + c, out)?);
        Ok(())
    }

    /// x += gate of `half` * lin(v): the adaLN-Zero gated residual, in the linear's epilogue.
    fn gated(&mut self, lin: &GpuLinear, v: &GpuBuf, t: usize, x: &GpuBuf, half: Half) -> Result<()> {
        let (c, mods) = (self.c, &self.a.mods);
        let epi = Epilogue::GatedResidual { mods, tokens: t, stride: 6 * c, offset: half.shift(c) + 2 * c };
        self.d.push(linear_with(self.gpu, &lin.name, lin, v, self.b * t, x, epi, self.precision)?);
        Ok(())
    }

    /// out = softmax(q k^T / sqrt(d)) v over the heads. A cross-attention's head-averaged map
    /// is captured too when the plan captures them (the token view).
    fn attention(&mut self, block: &str, shape: &AttnShape, q: &GpuBuf, kv: &GpuBuf, out: &GpuBuf, cross: bool) -> Result<()> {
        self.d.push(attention(self.gpu, &format!("{block}.attn"), shape, q, kv, out)?);
        if let (true, Some(caps)) = (cross, &mut self.captures) {
            caps.push(capture(self.gpu, &mut self.d, block, shape, q, kv)?);
        }
        Ok(())
    }
}

/// `mlp.fc1`, GELU (tanh), `mlp.fc2`.
struct Mlp {
    fc1: GpuLinear,
    fc2: GpuLinear,
}

impl Mlp {
    fn load(gpu: &Gpu, src: &dyn WeightSource, p: &str, cfg: &Config) -> Result<Self> {
        let (c, m) = (cfg.hidden_size, cfg.mlp_hidden);
        Ok(Mlp { fc1: lin(gpu, src, &format!("{p}.mlp.fc1"), c, m)?, fc2: lin(gpu, src, &format!("{p}.mlp.fc2"), m, c)? })
    }

    /// x (B, t, C) += gate_mlp * MLP(modulate(LN(x), shift_mlp, scale_mlp))
    fn residual(&self, r: &mut Recorder, block: &str, x: &GpuBuf, t: usize) -> Result<()> {
        let (normed, wide) = (&r.a.normed, &r.a.wide);
        r.modulate(format!("{block}.norm2"), x, t, Half::Mlp, normed)?;
        r.linear(&self.fc1, normed, t, wide, Epilogue::Gelu)?; // (B, t, M)
        r.gated(&self.fc2, wide, t, x, Half::Mlp)
    }
}

/// Ordinary DiT block (`blocks.i`, `semantic_blocks.j`, `normal_blocks.j`).
pub struct DitBlock {
    name: String,
    qkv: GpuLinear,
    proj: GpuLinear,
    mlp: Mlp,
    ada: GpuLinear,
}

impl DitBlock {
    fn load(gpu: &Gpu, src: &dyn WeightSource, p: &str, cfg: &Config) -> Result<Self> {
        let c = cfg.hidden_size;
        Ok(DitBlock {
            name: p.to_string(),
            qkv: lin(gpu, src, &format!("{p}.attn.qkv"), c, 3 * c)?,
            proj: lin(gpu, src, &format!("{p}.attn.proj"), c, c)?,
            mlp: Mlp::load(gpu, src, p, cfg)?,
            ada: lin(gpu, src, &format!("{p}.adaLN_modulation.1"), c, 6 * c)?,
        })
    }

    /// x: (B, t, C), t = seq.rows(), updated in place; attention within each sequence.
    fn record(&self, r: &mut Recorder, x: &GpuBuf, seq: Seqs) -> Result<()> {
        let (normed, wide, att) = (&r.a.normed, &r.a.wide, &r.a.att);
        let t = seq.rows();
        r.modulation(&self.ada)?;
        r.modulate(format!("{}.norm1", self.name), x, t, Half::Msa, normed)?;
        r.linear(&self.qkv, normed, t, wide, Epilogue::Store)?; // (B, t, 3C)
        let shape = AttnShape::packed_qkv(r.b * seq.per_clip, seq.len, r.c, r.heads);
        r.attention(&self.name, &shape, wide, wide, att, false)?;
        r.gated(&self.proj, att, t, x, Half::Msa)?;
        self.mlp.residual(r, &self.name, x, t)
    }
}

/// Poolingformer block: attention replaced by the global mean of V.
pub struct PoolingformerBlock {
    name: String,
    v: GpuLinear,
    proj: GpuLinear,
    mlp: Mlp,
    ada: GpuLinear,
}

impl PoolingformerBlock {
    fn load(gpu: &Gpu, src: &dyn WeightSource, p: &str, cfg: &Config) -> Result<Self> {
        let c = cfg.hidden_size;
        Ok(PoolingformerBlock {
            name: p.to_string(),
            v: lin(gpu, src, &format!("{p}.attn.v"), c, c)?,
            proj: lin(gpu, src, &format!("{p}.attn.proj"), c, c)?,
            mlp: Mlp::load(gpu, src, p, cfg)?,
            ada: lin(gpu, src, &format!("{p}.adaLN_modulation.1"), c, 6 * c)?,
        })
    }

    /// x: (B, t, C), t = seq.rows(), updated in place; the mean runs within each sequence
    /// (frame).
    fn record(&self, r: &mut Recorder, x: &GpuBuf, seq: Seqs) -> Result<()> {
        let (normed, att, pooled, pooled_proj) = (&r.a.normed, &r.a.att, &r.a.pooled, &r.a.pooled_proj);
        let (gpu, b, c, name) = (r.gpu, r.b, r.c, &self.name);
        let (t, seqs) = (seq.rows(), b * seq.per_clip);
        r.modulation(&self.ada)?;
        r.modulate(format!("{name}.norm1"), x, t, Half::Msa, normed)?;
        // The official code multiplies a uniform t x t softmax by V: every token gets mean(V).
        r.linear(&self.v, normed, t, att, Epilogue::Store)?; // (B, t, C)
        r.d.push(tokens::mean_tokens(gpu, &format!("{name}.attn.mean"), att, seqs, seq.len, c, pooled)?); // (B·seqs, C)
        r.linear(&self.proj, pooled, seq.per_clip, pooled_proj, Epilogue::Store)?; // (B·seqs, C), broadcast to every token
        let gate = 2 * c;
        r.d.push(tokens::residual_broadcast(gpu, &format!("{name}.residual"), x, seqs, seq.len, c, &r.a.mods, 6 * c, gate, pooled_proj, seq.per_clip)?);
        self.mlp.residual(r, name, x, t)
    }
}

/// Cross-attention projections `attn.q`, `attn.kv` (k first, then v), `attn.proj`.
struct CrossAttention {
    q: GpuLinear,
    kv: GpuLinear,
    proj: GpuLinear,
}

impl CrossAttention {
    fn load(gpu: &Gpu, src: &dyn WeightSource, p: &str, cfg: &Config) -> Result<Self> {
        let c = cfg.hidden_size;
        Ok(CrossAttention {
            q: lin(gpu, src, &format!("{p}.attn.q"), c, c)?,
            kv: lin(gpu, src, &format!("{p}.attn.kv"), c, 2 * c)?,
            proj: lin(gpu, src, &format!("{p}.attn.proj"), c, c)?,
        })
    }

    /// kv (B, f·tk, 2C) from the normalised keys/values side hkv (B, f·tk, C).
    fn keys_values(&self, r: &mut Recorder, hkv: &GpuBuf, f: usize, tk: usize) -> Result<()> {
        let kv = &r.a.kv;
        r.linear(&self.kv, hkv, f * tk, kv, Epilogue::Store)
    }

    /// x (B, f·tq, C) += gate_msa * proj(attention(q(hq), kv)), with kv from
    /// [`Self::keys_values`]; each of the f frames attends to its own keys.
    #[allow(clippy::too_many_arguments)]
    fn gated_residual(&self, r: &mut Recorder, block: &str, hq: &GpuBuf, f: usize, tq: usize, tk: usize, x: &GpuBuf) -> Result<()> {
        let (q, kv, att) = (&r.a.q, &r.a.kv, &r.a.att);
        r.linear(&self.q, hq, f * tq, q, Epilogue::Store)?; // (B, f·tq, C)
        r.attention(block, &AttnShape::cross(r.b * f, tq, tk, r.c, r.heads), q, kv, att, true)?;
        r.gated(&self.proj, att, f * tq, x, Half::Msa)
    }
}

/// SDTM token-merge block: sparse queries gather from the dense tokens.
pub struct TokenMergeBlock {
    name: String,
    attn: CrossAttention,
    mlp: Mlp,
    ada: GpuLinear,
}

impl TokenMergeBlock {
    fn load(gpu: &Gpu, src: &dyn WeightSource, p: &str, cfg: &Config) -> Result<Self> {
        let c = cfg.hidden_size;
        Ok(TokenMergeBlock {
            name: p.to_string(),
            attn: CrossAttention::load(gpu, src, p, cfg)?,
            mlp: Mlp::load(gpu, src, p, cfg)?,
            ada: lin(gpu, src, &format!("{p}.adaLN_modulation.1"), c, 6 * c)?,
        })
    }

    /// sparse: (B, f·st, C) updated in place; dense: (B, f·nt, C); f frames per clip.
    #[allow(clippy::too_many_arguments)]
    fn record(&self, r: &mut Recorder, sparse: &GpuBuf, st: usize, dense: &GpuBuf, nt: usize, f: usize) -> Result<()> {
        let (normed, normed_kv) = (&r.a.normed, &r.a.normed_kv);
        let name = &self.name;
        r.modulation(&self.ada)?;
        // Both inputs share norm1 and the msa shift/scale.
        r.modulate(format!("{name}.norm1.q"), sparse, f * st, Half::Msa, normed)?;
        r.modulate(format!("{name}.norm1.kv"), dense, f * nt, Half::Msa, normed_kv)?;
        self.attn.keys_values(r, normed_kv, f, nt)?;
        self.attn.gated_residual(r, name, normed, f, st, nt, sparse)?;
        self.mlp.residual(r, name, sparse, f * st)
    }
}

/// SDTM token-recover block: sparse tokens back to the dense grid.
pub struct TokenRecoverBlock {
    name: String,
    merged_layer1: GpuLinear,
    merged_layer2: GpuLinear,
    attn: CrossAttention,
    mlp: Mlp,
    ada: GpuLinear,
}

impl TokenRecoverBlock {
    fn load(gpu: &Gpu, src: &dyn WeightSource, p: &str, cfg: &Config) -> Result<Self> {
        let c = cfg.hidden_size;
        Ok(TokenRecoverBlock {
            name: p.to_string(),
            merged_layer1: lin(gpu, src, &format!("{p}.merged_layer1"), c, c)?,
            merged_layer2: lin(gpu, src, &format!("{p}.merged_layer2"), c, c)?,
            attn: CrossAttention::load(gpu, src, p, cfg)?,
            mlp: Mlp::load(gpu, src, p, cfg)?,
            ada: lin(gpu, src, &format!("{p}.adaLN_modulation.1"), c, 6 * c)?,
        })
    }

    /// sparse: (B, f·s*s, C), dense: (B, f·n*n, C) -> out (B, f·n*n, C), f frames per clip.
    /// `out` may be the `sparse` input itself (a second recover block reads the first one's
    /// output, s = n): the sparse side is read before `out` is written.
    #[allow(clippy::too_many_arguments)]
    fn record(&self, r: &mut Recorder, sparse: &GpuBuf, s: usize, dense: &GpuBuf, n: usize, f: usize, out: &GpuBuf) -> Result<()> {
        let (normed, normed_kv, up) = (&r.a.normed, &r.a.normed_kv, &r.a.att);
        let (gpu, b, c, name) = (r.gpu, r.b, r.c, &self.name);
        let (st, nt) = (s * s, n * n);
        // up (B·f, N, C): nearest upsampling of every frame (a copy when s = n).
        let to_dense = Resize { batch: b * f, from: s, to: n, channels: c };
        r.d.push(tokens::upsample_nearest(gpu, &format!("{name}.upsample"), sparse, to_dense, up)?);
        r.modulation(&self.ada)?;
        r.modulate(format!("{name}.norm1.kv"), sparse, f * st, Half::Msa, normed_kv)?;
        self.attn.keys_values(r, normed_kv, f, st)?; // (B, f·st, 2C)
        // merged = merged_layer1(up) + merged_layer2(dense): (B, f·N, C) into `out`
        r.linear(&self.merged_layer1, up, f * nt, out, Epilogue::Store)?;
        r.linear(&self.merged_layer2, dense, f * nt, out, Epilogue::Accumulate)?;
        r.modulate(format!("{name}.norm1.q"), out, f * nt, Half::Msa, normed)?;
        self.attn.gated_residual(r, name, normed, f, nt, st, out)?;
        self.mlp.residual(r, name, out, f * nt)
    }
}

/// One block with its weights on the GPU, of the kind its [`crate::blocks::BlockSpec`] names
/// (the CPU `model::Block`).
pub enum GpuBlock {
    Dit(DitBlock),
    Poolingformer(PoolingformerBlock),
    Merge(TokenMergeBlock),
    Recover(TokenRecoverBlock),
}

/// Weights of a whole model on the GPU.
pub struct GpuModel {
    pub cfg: Config,
    /// `x_embedder.proj` as a linear layer on flattened (c_in, p, p) patches.
    x_embedder: GpuLinear,
    /// (N, C)
    pos_embed: GpuBuf,
    /// (F, C) Latte's frame table, added before the first temporal block (video only).
    temp_embed: Option<GpuBuf>,
    t_mlp0: GpuLinear,
    t_mlp2: GpuLinear,
    /// (classes [+1], C); one zero row for an unconditional model.
    y_table: GpuBuf,
    /// Rows of `y_table`.
    y_rows: usize,
    /// Every block in forward order, one per [`Config::blocks`] entry.
    blocks: Vec<GpuBlock>,
    final_ada: GpuLinear,
    final_linear: GpuLinear,
    /// Arithmetic of every linear layer in plans built from now on (F32 after `load`).
    pub precision: Precision,
}

/// Every activation buffer of a forward pass, shapes in comments (T = the most tokens any block
/// sees, N or S). Allocated once per batch and shared by the plans of every grid whose sizes
/// fit, as the plans of a run replay one at a time. In a video model every per-image buffer
/// holds the F frames of each clip, `(b f)` as Latte's rearrange: read B as B·F there; the
/// conditioning and modulation buffers stay one row per clip.
pub struct Activations {
    pub batch: usize,
    /// Largest sparse grid side the buffers hold.
    max_grid: usize,
    /// (B, [F,] c_in, I, I) input latent.
    pub x_in: GpuBuf,
    /// (B, 256) sinusoidal timestep features, written by the host each step.
    pub t_freq: GpuBuf,
    /// (B) labels as u32.
    pub labels: GpuBuf,
    patches: GpuBuf,   // (B, N, c_in p^2)
    t_hidden: GpuBuf,  // (B, C)
    t_emb: GpuBuf,     // (B, C)
    cond: GpuBuf,      // (B, C) = SiLU(t_emb + y_emb)
    mods: GpuBuf,      // (B, 6C) adaLN of the current block
    dense: [GpuBuf; 2], // (B, N, C) the residual stream and an SDTM's output
    sparse: GpuBuf,    // (B, S, C) pooled tokens
    pooled_base: GpuBuf, // (B, S, C) pool(h) entering a training-free pooled middle
    normed: GpuBuf,    // (B, T, C) modulated LN output (queries side)
    normed_kv: GpuBuf, // (B, T, C) keys/values side
    wide: GpuBuf,      // (B, T, max(3C, M)): qkv or the MLP hidden
    q: GpuBuf,         // (B, T, C)
    kv: GpuBuf,        // (B, T, 2C)
    att: GpuBuf,       // (B, T, C) attention output before proj; a recover block's upsampling
    pooled: GpuBuf,    // (B, C) Poolingformer mean of V
    pooled_proj: GpuBuf, // (B, C)
    frames: GpuBuf,    // video: (B, T, F, C) the tokens of a temporal block, position by position
    fmods: GpuBuf,     // (B, 2C) final adaLN (per clip)
    out_tokens: GpuBuf, // (B, N, p^2 c_out)
    /// (B, [F,] c_out, I, I) output.
    pub out: GpuBuf,
}

impl Activations {
    fn new(gpu: &Gpu, cfg: &Config, batch: usize, max_grid: usize) -> Result<Activations> {
        let (c, p, m, clips) = (cfg.hidden_size, cfg.patch_size, cfg.mlp_hidden, batch);
        let (cin, co, i, nt) = (cfg.in_channels, cfg.out_channels(), cfg.input_size, cfg.num_tokens());
        let st = max_grid * max_grid;
        let tmax = nt.max(st);
        let b = clips * cfg.frames(); // images: one per frame
        let buf = |label: &str, len: usize| gpu.zeros(label, len);
        Ok(Activations {
            batch,
            max_grid,
            x_in: buf("x", b * cin * i * i)?,
            t_freq: buf("t_freq", clips * FREQ_DIM)?,
            labels: buf("labels", clips)?,
            patches: buf("patches", b * nt * cin * p * p)?,
            t_hidden: buf("t_hidden", clips * c)?,
            t_emb: buf("t_emb", clips * c)?,
            cond: buf("silu_c", clips * c)?,
            mods: buf("mods", clips * 6 * c)?,
            dense: [buf("dense_a", b * nt * c)?, buf("dense_b", b * nt * c)?],
            sparse: buf("sparse", b * st * c)?,
            pooled_base: buf("pooled_base", if cfg.pooled_middle.is_some() { b * st * c } else { 1 })?,
            normed: buf("normed", b * tmax * c)?,
            normed_kv: buf("normed_kv", b * tmax * c)?,
            wide: buf("wide", b * tmax * (3 * c).max(m))?,
            q: buf("q", b * tmax * c)?,
            kv: buf("kv", b * tmax * 2 * c)?,
            att: buf("att", b * tmax * c)?,
            pooled: buf("pooled", b * c)?,
            pooled_proj: buf("pooled_proj", b * c)?,
            frames: buf("frames", if cfg.is_video() { b * tmax * c } else { 1 })?,
            fmods: buf("final_mods", clips * 2 * c)?,
            out_tokens: buf("out_tokens", b * nt * p * p * co)?,
            out: buf("out", b * co * i * i)?,
        })
    }
}

impl Activations {
    /// Whether these buffers hold a forward pass at (`batch`, `grid`) of `cfg`.
    fn fits(&self, cfg: &Config, batch: usize, grid: usize) -> bool {
        let pooled = cfg.pooled_middle.is_none() || self.pooled_base.len >= self.sparse.len;
        self.batch == batch && grid <= self.max_grid && pooled
    }
}

impl GpuBlock {
    fn load(gpu: &Gpu, src: &dyn WeightSource, spec: &crate::blocks::BlockSpec, cfg: &Config) -> Result<GpuBlock> {
        let p = &spec.prefix;
        Ok(match spec.kind.weights() {
            BlockWeights::Dit => GpuBlock::Dit(DitBlock::load(gpu, src, p, cfg)?),
            BlockWeights::Poolingformer => GpuBlock::Poolingformer(PoolingformerBlock::load(gpu, src, p, cfg)?),
            BlockWeights::Merge => GpuBlock::Merge(TokenMergeBlock::load(gpu, src, p, cfg)?),
            BlockWeights::Recover => GpuBlock::Recover(TokenRecoverBlock::load(gpu, src, p, cfg)?),
        })
    }
}

impl GpuModel {
    /// Upload a model. Conv / table / bias tensors are decoded to f32; linear weights stay in
    /// their stored format (f32, f16, q8_0, q4_0) and are dequantised in the kernel.
    pub fn load(gpu: &Gpu, cfg: Config, src: &dyn WeightSource) -> Result<GpuModel> {
        cfg.validate()?;
        let (c, p, cin) = (cfg.hidden_size, cfg.patch_size, cfg.in_channels);
        let (conv, cshape) = src.f32("x_embedder.proj.weight")?;
        if cshape != [c, cin, p, p] {
            return Err(Error::Shape { name: "x_embedder.proj.weight".into(), expected: vec![c, cin, p, p], found: cshape });
        }
        let (conv_b, _) = src.f32("x_embedder.proj.bias")?;
        let x_embedder = GpuLinear::from_encoded(gpu, "x_embedder.proj", TensorType::F32, bytemuck::cast_slice(&conv), c, cin * p * p, &conv_b)?;
        let pos_embed = table(gpu, src, "pos_embed", &[1, cfg.num_tokens(), c])?;
        let temp_embed = match cfg.num_frames {
            Some(f) => Some(table(gpu, src, "temp_embed", &[1, f, c])?),
            None => None,
        };
        // An unconditional model (Latte without `y_embedder`) adds nothing: one zero row.
        let (y_table, y_rows) = if cfg.is_class_conditional() {
            let rows = cfg.num_classes + cfg.class_null as usize;
            (table(gpu, src, "y_embedder.embedding_table.weight", &[rows, c])?, rows)
        } else {
            (gpu.zeros("y_embedder.none", c)?, 1)
        };
        let blocks = cfg.blocks(cfg.grid()).iter().map(|spec| GpuBlock::load(gpu, src, spec, &cfg)).collect::<Result<_>>()?;
        Ok(GpuModel {
            x_embedder,
            pos_embed,
            temp_embed,
            t_mlp0: lin(gpu, src, "t_embedder.mlp.0", FREQ_DIM, c)?,
            t_mlp2: lin(gpu, src, "t_embedder.mlp.2", c, c)?,
            y_table,
            y_rows,
            blocks,
            final_ada: lin(gpu, src, "final_layer.adaLN_modulation.1", c, 2 * c)?,
            final_linear: lin(gpu, src, "final_layer.linear", c, p * p * cfg.out_channels())?,
            cfg,
            precision: Precision::F32,
        })
    }

    /// Use `p` for the linear layers of plans built afterwards (existing plans keep theirs).
    /// F16 errors, leaving the precision unchanged, on a device without shader-f16.
    pub fn set_precision(&mut self, gpu: &Gpu, p: Precision) -> Result<()> {
        p.check(gpu, "GpuModel::set_precision")?;
        self.precision = p;
        Ok(())
    }

    /// Turn the training-free pooled middle on (`Some`) or off for plans built afterwards.
    pub fn set_pooled_middle(&mut self, pm: Option<crate::config::PooledMiddle>) -> Result<()> {
        self.cfg = self.cfg.with_pooled_middle(pm)?;
        Ok(())
    }

    /// Upload a pack held in memory (validated first).
    pub fn from_pack_bytes(gpu: &Gpu, bytes: &[u8]) -> Result<GpuModel> {
        let g = Gguf::parse(bytes)?;
        let cfg = pack::config_from_header(&g.header)?;
        Self::load(gpu, cfg, &g)
    }

    /// Record one forward pass for `batch` rows at sparse grid `grid` (ignored when dense).
    pub fn plan(&self, gpu: &Gpu, batch: usize, grid: usize) -> Result<Plan> {
        self.plan_with(gpu, batch, grid, false)
    }

    /// As [`GpuModel::plan`]; with `capture_attention` the plan also records the head-averaged
    /// cross-attention maps of every merge and recover block (the token view). Without it the
    /// plan has no extra dispatch or buffer: tracing costs nothing when off.
    pub fn plan_with(&self, gpu: &Gpu, batch: usize, grid: usize, capture_attention: bool) -> Result<Plan> {
        self.plan_over(gpu, None, batch, grid, capture_attention)
    }

    /// As [`GpuModel::plan_with`] for `other`'s batch, sharing `other`'s activation buffers when
    /// they hold this grid (the plans of one sampling run, one per grid of its schedule).
    pub fn plan_sharing(&self, gpu: &Gpu, other: &Plan, grid: usize, capture_attention: bool) -> Result<Plan> {
        self.plan_over(gpu, Some(&other.activations), other.batch, grid, capture_attention)
    }

    fn plan_over(&self, gpu: &Gpu, share: Option<&Rc<Activations>>, batch: usize, grid: usize, capture_attention: bool) -> Result<Plan> {
        let cfg = &self.cfg;
        if batch == 0 {
            return Err(Error::arg("batch must be at least 1"));
        }
        cfg.check_grid(grid)?;
        let specs = cfg.blocks(grid);
        let max_grid = specs.iter().filter(|s| s.sparse()).map(|s| s.side).max().unwrap_or(1);
        let a = match share {
            Some(a) if a.fits(cfg, batch, max_grid) => a.clone(),
            _ => Rc::new(Activations::new(gpu, cfg, batch, max_grid.max(cfg.grid()))?),
        };
        let (c, p, n) = (cfg.hidden_size, cfg.patch_size, cfg.grid());
        let (co, i, nt, b) = (cfg.out_channels(), cfg.input_size, cfg.num_tokens(), batch);
        let f = cfg.frames(); // 1 for images
        let bf = b * f; // images: one per frame of every clip, `(b f)` as Latte's rearrange
        let mut r = Recorder {
            gpu,
            precision: self.precision,
            a: &a,
            b,
            c,
            heads: cfg.num_heads,
            d: Vec::new(),
            captures: capture_attention.then(Vec::new),
        };

        // Embeddings: h (B·F, N, C) = x_embedder(patchify(x)) + pos_embed; cond (B, C) =
        // SiLU(t_embedder(t) + y_embedder(y)), one row per clip (its frames share it).
        r.d.push(tokens::patchify(gpu, "x_embedder.patchify", &a.x_in, bf, cfg.in_channels, i, p, &a.patches)?);
        r.linear(&self.x_embedder, &a.patches, f * nt, &a.dense[0], Epilogue::AddRows { table: &self.pos_embed, tokens: nt })?;
        r.linear(&self.t_mlp0, &a.t_freq, 1, &a.t_hidden, Epilogue::Silu)?;
        r.linear(&self.t_mlp2, &a.t_hidden, 1, &a.t_emb, Epilogue::Store)?;
        r.d.push(tokens::condition(gpu, "y_embedder", &a.t_emb, &self.y_table, &a.labels, b, c, self.y_rows, &a.cond)?);

        // The block walk (as `Model::forward_traced`). `h` names the buffer holding the running
        // tokens: dense[0], dense[1] or sparse; `entry` the dense buffer at the last pooling (an
        // SDTM's dense input, or the tokens a pooled middle's update goes back onto).
        const SPARSE: usize = 2;
        let bufs = [&a.dense[0], &a.dense[1], &a.sparse];
        let (mut h, mut entry) = (0usize, 0usize);
        let mut temp_embed = self.temp_embed.as_ref(); // added once, before the first temporal block
        let mut traces = Vec::with_capacity(specs.len());
        for (spec, block) in specs.iter().zip(&self.blocks) {
            let s = spec.side;
            if spec.pool_before {
                entry = h;
                let label = match spec.sdtm {
                    Some(k) => format!("dumbbell_blocks.{k}.pool"),
                    None => "pooled_middle.pool".to_string(),
                };
                let to_sparse = Resize { batch: bf, from: n, to: s, channels: c };
                r.d.push(tokens::adaptive_avg_pool(gpu, &label, bufs[entry], to_sparse, &a.sparse)?);
                if spec.kind == BlockKind::Pooled {
                    r.d.push(tokens::adaptive_avg_pool(gpu, "pooled_middle.pool_base", bufs[entry], to_sparse, &a.pooled_base)?);
                }
                h = SPARSE;
            }
            let t = spec.tokens();
            match (spec.axis, block) {
                (Axis::Temporal, GpuBlock::Dit(blk)) => {
                    // Over the frames of each token position: (B, F, T, C) -> (B, T, F, C) and back.
                    let name = &spec.prefix;
                    let into = tokens::transpose_frames(gpu, &format!("{name}.to_frames"), bufs[h], b, f, t, c, temp_embed.take(), &a.frames)?;
                    r.d.push(into);
                    blk.record(&mut r, &a.frames, Seqs { per_clip: t, len: f })?;
                    r.d.push(tokens::transpose_frames(gpu, &format!("{name}.to_tokens"), &a.frames, b, t, f, c, None, bufs[h])?);
                }
                (Axis::Temporal, _) => return Err(Error::arch(format!("{}: a temporal block must be a DiT block", spec.prefix))),
                (Axis::Spatial, GpuBlock::Dit(blk)) => blk.record(&mut r, bufs[h], Seqs { per_clip: f, len: t })?,
                (Axis::Spatial, GpuBlock::Poolingformer(blk)) => blk.record(&mut r, bufs[h], Seqs { per_clip: f, len: t })?,
                (Axis::Spatial, GpuBlock::Merge(blk)) => blk.record(&mut r, bufs[h], t, bufs[entry], nt, f)?,
                (Axis::Spatial, GpuBlock::Recover(blk)) => {
                    let out = 1 - entry; // the SDTM's output: the other dense buffer
                    blk.record(&mut r, bufs[h], spec.in_side, bufs[entry], n, f, bufs[out])?;
                    h = out;
                }
            }
            if spec.unpool_after {
                // pooled middle: dense += up(middle(pool(dense)) - pool(dense))
                let to_dense = Resize { batch: bf, from: s, to: n, channels: c };
                r.d.push(tokens::pooled_residual(gpu, "pooled_middle.upsample", bufs[entry], &a.sparse, &a.pooled_base, to_dense)?);
                h = entry;
            }
            let grid_side = if spec.kind == BlockKind::Poolingformer { 1 } else { s };
            traces.push(PlanBlock { name: spec.prefix.clone(), kind: spec.kind, axis: spec.axis, tokens: t, grid: grid_side });
        }
        if h == SPARSE {
            return Err(Error::arch("the block walk ends on the sparse tokens"));
        }

        // Final layer: adaLN (shift, scale), LN, linear to p*p*c_out per token, unpatchify.
        r.linear(&self.final_ada, &a.cond, 1, &a.fmods, Epilogue::Store)?; // (B, 2C)
        r.d.push(layernorm_modulate(gpu, "final_layer.norm_final", bufs[h], bf * nt, c, f * nt, &a.fmods, 2 * c, 0, c, &a.normed)?);
        r.linear(&self.final_linear, &a.normed, f * nt, &a.out_tokens, Epilogue::Store)?; // (B·F, N, p^2 c_out)
        r.d.push(tokens::unpatchify(gpu, "unpatchify", &a.out_tokens, bf, n, p, co, &a.out)?);
        let Recorder { d, captures, .. } = r;
        Ok(Plan {
            batch: b,
            grid,
            dispatches: d,
            x_in: a.x_in.clone(),
            t_freq: a.t_freq.clone(),
            labels: a.labels.clone(),
            out: a.out.clone(),
            blocks: traces,
            attention: captures.unwrap_or_default(),
            activations: a,
        })
    }

    /// Write the inputs of a forward pass into the plan's buffers (`x` may be left to a copy
    /// already recorded, as the GPU sampler does).
    pub fn write_inputs(&self, gpu: &Gpu, plan: &Plan, x: Option<&[f32]>, t: &[f32], y: &[i64]) -> Result<()> {
        let cfg = &self.cfg;
        let want = plan.batch * cfg.latent_len();
        if t.len() != plan.batch || y.len() != plan.batch {
            return Err(Error::arg(format!("batch mismatch: the plan has {} rows, t {} and y {}", plan.batch, t.len(), y.len())));
        }
        if let Some(x) = x {
            if x.len() != want {
                return Err(Error::arg(format!("input x has {} values, the model takes {want}", x.len())));
            }
            gpu.write(&plan.x_in, x)?;
        }
        if let Some(bad) = t.iter().find(|v| !v.is_finite()) {
            return Err(Error::arg(format!("timestep {bad} is not finite")));
        }
        cfg.check_labels(y)?;
        gpu.write(&plan.t_freq, &timestep_embedding(t))?;
        let labels: Vec<u32> = y.iter().map(|&v| v as u32).collect();
        gpu.write(&plan.labels, &labels)
    }

    /// model(x, t, y) on the GPU, read back (B, [F,] c_out, I, I) flattened.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward(&self, gpu: &Gpu, plan: &Plan, x: &[f32], t: &[f32], y: &[i64]) -> Result<Vec<f32>> {
        self.write_inputs(gpu, plan, Some(x), t, y)?;
        gpu.run(&plan.dispatches)?;
        gpu.read(&plan.out)
    }
}

/// Record the head-averaged attention map (B, Tq, Tk) of one cross-attention.
fn capture(gpu: &Gpu, d: &mut Vec<Dispatch>, block: &str, shape: &AttnShape, q: &GpuBuf, kv: &GpuBuf) -> Result<AttentionCapture> {
    let buf = gpu.zeros(&format!("{block}.attn.probs"), shape.batch * shape.tq * shape.tk)?;
    d.push(attention_probs(gpu, &format!("{block}.attn.probs"), shape, q, kv, &buf)?);
    Ok(AttentionCapture { block: block.to_string(), buf, tq: shape.tq, tk: shape.tk })
}

/// A captured cross-attention map: (B, tq, tk), each row a distribution over the keys.
pub struct AttentionCapture {
    pub block: String,
    pub buf: GpuBuf,
    pub tq: usize,
    pub tk: usize,
}

impl Plan {
    /// The plan's dispatches split into consecutive named groups: each block (by its checkpoint
    /// name), and the embedders, pooling and final layer by their own labels (for profiles).
    pub fn groups(&self) -> Vec<(String, &[Dispatch])> {
        let key = |label: &str| -> String {
            self.blocks
                .iter()
                .find(|b| label.starts_with(&format!("{}.", b.name)))
                .map(|b| b.name.clone())
                .unwrap_or_else(|| label.split('.').take(2).collect::<Vec<_>>().join("."))
        };
        let mut out: Vec<(String, &[Dispatch])> = Vec::new();
        let mut start = 0;
        for i in 1..=self.dispatches.len() {
            if i == self.dispatches.len() || key(&self.dispatches[i].label) != key(&self.dispatches[start].label) {
                out.push((key(&self.dispatches[start].label), &self.dispatches[start..i]));
                start = i;
            }
        }
        out
    }
}

/// What one block of a plan computes (the CPU `model::BlockTrace` without the map).
#[derive(Clone, Debug)]
pub struct PlanBlock {
    pub name: String,
    pub kind: BlockKind,
    pub axis: Axis,
    pub tokens: usize,
    pub grid: usize,
}

/// One recorded forward pass for a (batch, grid).
pub struct Plan {
    pub batch: usize,
    pub grid: usize,
    pub dispatches: Vec<Dispatch>,
    /// (B, [F,] c_in, I, I) input.
    pub x_in: GpuBuf,
    /// (B, 256) sinusoidal timestep features, written by the host each step.
    pub t_freq: GpuBuf,
    /// (B) labels as u32.
    pub labels: GpuBuf,
    /// (B, [F,] c_out, I, I) output.
    pub out: GpuBuf,
    pub blocks: Vec<PlanBlock>,
    /// Attention maps of merge / recover blocks, when the plan was built to capture them.
    pub attention: Vec<AttentionCapture>,
    /// The buffers the dispatches read and write (shared with other plans of the same batch).
    activations: Rc<Activations>,
}
