//! The CPU reference forward pass of DiT and SparseDiT, and of the video models Latte and the
//! spatial-temporal SparseDiT (candle-core, f32).
//!
//! This is the number-for-number reference every other path (WGSL kernels, quantized packs) is
//! checked against, and it is itself checked against PyTorch fixtures (`tests/fixtures/gen.py`).
//! Weights are named exactly as in the official PyTorch checkpoints.
//!
//! Shapes: B = batch, F = frames (1 for images), N = n*n dense tokens, S = s*s sparse tokens, C = hidden, H = heads,
//! d = C/H, M = MLP hidden, p = patch, c_in / c_out = image channels.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};

use crate::blocks::{Axis, BlockKind, BlockSpec, BlockWeights};
use crate::config::{Config, FREQ_DIM};
use crate::error::{Error, Result};
pub use crate::grid::{
    adaptive_avg_pool_matrix, adaptive_pool_window, nearest_source, nearest_upsample_index, sincos_pos_embed, timestep_embedding,
};

/// LayerNorm eps of every norm in DiT.
const LN_EPS: f64 = 1e-6;

/// Named tensors as found in a checkpoint or pack (f32, any device).
pub type TensorMap = HashMap<String, Tensor>;

/// Takes tensors out of a [`TensorMap`] by official name, checking shapes and remembering what
/// was missing, so a mismatch is reported once with every key listed.
pub struct WeightLoader {
    map: TensorMap,
    missing: Vec<String>,
    bad_shape: Option<Error>,
    /// Every (name, shape) asked for, in order: what a loader expects (see [`Self::expected`]).
    asked: Vec<(String, Vec<usize>)>,
}

impl WeightLoader {
    pub fn new(map: TensorMap) -> Self {
        WeightLoader { map, missing: Vec::new(), bad_shape: None, asked: Vec::new() }
    }

    /// The (name, shape) of every tensor taken so far, in order: run a loader on an empty map
    /// to list what an architecture expects.
    pub fn expected(self) -> Vec<(String, Vec<usize>)> {
        self.asked
    }

    /// The tensor `name` with exactly `shape`, as f32. Returns a placeholder after recording the
    /// problem when missing or mis-shaped (reported by [`WeightLoader::finish`]).
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Tensor {
        self.asked.push((name.to_string(), shape.to_vec()));
        match self.map.remove(name) {
            None => {
                self.missing.push(name.to_string());
                placeholder()
            }
            Some(t) if t.dims() != shape => {
                if self.bad_shape.is_none() {
                    self.bad_shape = Some(Error::Shape {
                        name: name.to_string(),
                        expected: shape.to_vec(),
                        found: t.dims().to_vec(),
                    });
                }
                placeholder()
            }
            Some(t) => t.to_dtype(DType::F32).unwrap_or_else(|_| placeholder()),
        }
    }

    /// Error out on missing, unexpected or mis-shaped tensors.
    pub fn finish(self) -> Result<()> {
        let mut unexpected: Vec<String> = self.map.into_keys().collect();
        unexpected.sort();
        if !self.missing.is_empty() || !unexpected.is_empty() {
            return Err(Error::Keys { missing: self.missing, unexpected });
        }
        match self.bad_shape {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn placeholder() -> Tensor {
    Tensor::zeros(1, DType::F32, &Device::Cpu).expect("a one-element CPU tensor")
}

/// `nn.Linear`: y = x W^T + b. The weight is kept transposed, (in, out), for a plain matmul.
pub struct Linear {
    w_t: Tensor,
    b: Option<Tensor>,
}

impl Linear {
    pub(crate) fn load(w: &mut WeightLoader, prefix: &str, in_f: usize, out_f: usize) -> Result<Self> {
        let weight = w.take(&format!("{prefix}.weight"), &[out_f, in_f]);
        let bias = w.take(&format!("{prefix}.bias"), &[out_f]);
        let w_t = if weight.rank() == 2 { weight.t()?.contiguous()? } else { weight };
        Ok(Linear { w_t, b: Some(bias) })
    }

    /// x: (..., in) -> (..., out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_f = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / in_f.max(1);
        let y = x.reshape((rows, in_f))?.matmul(&self.w_t)?;
        let y = match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = self.w_t.dim(1)?;
        }
        Ok(y.reshape(out_dims)?)
    }
}

/// LayerNorm over the last dimension, no affine parameters, eps 1e-6.
fn layer_norm(x: &Tensor) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(xc.broadcast_div(&(var + LN_EPS)?.sqrt()?)?)
}

/// modulate(x, shift, scale) = x * (1 + scale) + shift; x (B, T, C), shift/scale (B, 1, C).
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)?)
}

fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}

/// GELU, tanh approximation (PyTorch `GELU(approximate="tanh")`, DiT's MLP activation).
///
/// candle's `gelu()` computes the same function through libm's `tanhf`, which took 40% of a
/// sampling run on the CPU (perf, 1 thread). `0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u))`, so this
/// is `x / (1 + exp(-2u))`, one `expf` per element; the two agree to a few f32 ulps (test below).
fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return Ok(x.gelu()?);
    }
    Ok(x.contiguous()?.apply_op1_no_bwd(&GeluTanh)?)
}

struct GeluTanh;

impl candle_core::CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "gelu-tanh-expf"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("gelu_tanh: input must be contiguous".into()))?;
        let x = &storage.as_slice::<f32>()?[start..end];
        // sqrt(2 / pi), as in PyTorch's kernel.
        const K: f32 = 0.797_884_6;
        let y: Vec<f32> = x
            .iter()
            .map(|&v| {
                let u = K * v * (1.0 + 0.044715 * v * v);
                v / (1.0 + (-2.0 * u).exp())
            })
            .collect();
        Ok((candle_core::CpuStorage::F32(y), layout.shape().clone()))
    }
}

/// Multi-head attention softmax(q k^T / sqrt(d)) v.
/// q: (B, Tq, C), k/v: (B, Tk, C) -> (B, Tq, C). When `probs_out` is given, the head-averaged
/// attention probabilities (B, Tq, Tk) are stored there (for the token view).
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, probs_out: Option<&mut Option<Tensor>>) -> Result<Tensor> {
    let (b, tq, c) = q.dims3()?;
    let tk = k.dim(1)?;
    let d = c / heads;
    let split = |x: &Tensor, t: usize| -> Result<Tensor> { Ok(x.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()?) };
    let (q, k, v) = (split(q, tq)?, split(k, tk)?, split(v, tk)?); // (B, H, T, d)
    let scale = 1.0 / (d as f64).sqrt();
    let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?; // (B, H, Tq, Tk)
    let probs = softmax_last(&scores)?;
    if let Some(slot) = probs_out {
        *slot = Some(probs.mean(1)?);
    }
    let out = probs.matmul(&v)?; // (B, H, Tq, d)
    Ok(out.transpose(1, 2)?.reshape((b, tq, c))?)
}

/// The six adaLN vectors of a block, each (B, 1, C). Depend only on (t, y): computed once per call.
struct Modulation {
    shift_msa: Tensor,
    scale_msa: Tensor,
    gate_msa: Tensor,
    shift_mlp: Tensor,
    scale_mlp: Tensor,
    gate_mlp: Tensor,
}

impl Modulation {
    /// silu_c: SiLU(c), (B, C).
    fn new(ada: &Linear, silu_c: &Tensor) -> Result<Self> {
        let m = ada.forward(silu_c)?.unsqueeze(1)?; // (B, 1, 6C)
        let parts = m.chunk(6, D::Minus1)?;
        let mut it = parts.into_iter();
        let mut next = || it.next().ok_or_else(|| Error::arch("adaLN output is not 6C wide"));
        Ok(Modulation {
            shift_msa: next()?,
            scale_msa: next()?,
            gate_msa: next()?,
            shift_mlp: next()?,
            scale_mlp: next()?,
            gate_mlp: next()?,
        })
    }
}

/// `mlp.fc1`, GELU (tanh), `mlp.fc2`.
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn load(w: &mut WeightLoader, p: &str, c: usize, m: usize) -> Result<Self> {
        Ok(Mlp { fc1: Linear::load(w, &format!("{p}.mlp.fc1"), c, m)?, fc2: Linear::load(w, &format!("{p}.mlp.fc2"), m, c)? })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&gelu_tanh(&self.fc1.forward(x)?)?)
    }
    /// x += gate_mlp * MLP(modulate(LN(x), shift_mlp, scale_mlp))
    fn residual(&self, x: &Tensor, m: &Modulation) -> Result<Tensor> {
        let h = modulate(&layer_norm(x)?, &m.shift_mlp, &m.scale_mlp)?;
        Ok((x + m.gate_mlp.broadcast_mul(&self.forward(&h)?)?)?)
    }
}

/// Ordinary DiT block (`blocks.i`, `semantic_blocks.j`, `normal_blocks.j`).
pub struct DitBlock {
    qkv: Linear,
    proj: Linear,
    mlp: Mlp,
    ada: Linear,
    heads: usize,
}

impl DitBlock {
    fn load(w: &mut WeightLoader, p: &str, cfg: &Config) -> Result<Self> {
        let c = cfg.hidden_size;
        Ok(DitBlock {
            qkv: Linear::load(w, &format!("{p}.attn.qkv"), c, 3 * c)?,
            proj: Linear::load(w, &format!("{p}.attn.proj"), c, c)?,
            mlp: Mlp::load(w, p, c, cfg.mlp_hidden)?,
            ada: Linear::load(w, &format!("{p}.adaLN_modulation.1"), c, 6 * c)?,
            heads: cfg.num_heads,
        })
    }

    /// x: (B, T, C) -> (B, T, C)
    fn forward(&self, x: &Tensor, silu_c: &Tensor) -> Result<Tensor> {
        let m = Modulation::new(&self.ada, silu_c)?;
        let h = modulate(&layer_norm(x)?, &m.shift_msa, &m.scale_msa)?;
        let qkv = self.qkv.forward(&h)?; // (B, T, 3C)
        let c = x.dim(2)?;
        let (q, k, v) = (qkv.narrow(2, 0, c)?, qkv.narrow(2, c, c)?, qkv.narrow(2, 2 * c, c)?);
        let a = self.proj.forward(&attention(&q, &k, &v, self.heads, None)?)?;
        let x = (x + m.gate_msa.broadcast_mul(&a)?)?;
        self.mlp.residual(&x, &m)
    }
}

/// Poolingformer block: attention replaced by the global mean of V, O(N C^2) with no N^2 term.
pub struct PoolingformerBlock {
    v: Linear,
    proj: Linear,
    mlp: Mlp,
    ada: Linear,
}

impl PoolingformerBlock {
    fn load(w: &mut WeightLoader, p: &str, cfg: &Config) -> Result<Self> {
        let c = cfg.hidden_size;
        Ok(PoolingformerBlock {
            v: Linear::load(w, &format!("{p}.attn.v"), c, c)?,
            proj: Linear::load(w, &format!("{p}.attn.proj"), c, c)?,
            mlp: Mlp::load(w, p, c, cfg.mlp_hidden)?,
            ada: Linear::load(w, &format!("{p}.adaLN_modulation.1"), c, 6 * c)?,
        })
    }

    fn forward(&self, x: &Tensor, silu_c: &Tensor) -> Result<Tensor> {
        let m = Modulation::new(&self.ada, silu_c)?;
        let h = modulate(&layer_norm(x)?, &m.shift_msa, &m.scale_msa)?;
        // The official code multiplies a uniform N x N softmax by V: every token gets mean(V).
        let pooled = self.v.forward(&h)?.mean_keepdim(1)?; // (B, 1, C)
        let a = self.proj.forward(&pooled)?; // (B, 1, C), broadcast to every token
        let x = x.broadcast_add(&m.gate_msa.broadcast_mul(&a)?)?;
        self.mlp.residual(&x, &m)
    }
}

/// Cross-attention projections `attn.q`, `attn.kv` (k first, then v), `attn.proj`.
struct CrossAttention {
    q: Linear,
    kv: Linear,
    proj: Linear,
    heads: usize,
}

impl CrossAttention {
    fn load(w: &mut WeightLoader, p: &str, cfg: &Config) -> Result<Self> {
        let c = cfg.hidden_size;
        Ok(CrossAttention {
            q: Linear::load(w, &format!("{p}.attn.q"), c, c)?,
            kv: Linear::load(w, &format!("{p}.attn.kv"), c, 2 * c)?,
            proj: Linear::load(w, &format!("{p}.attn.proj"), c, c)?,
            heads: cfg.num_heads,
        })
    }

    /// queries from x (B, Tq, C), keys/values from y (B, Tk, C).
    fn forward(&self, x: &Tensor, y: &Tensor, probs: Option<&mut Option<Tensor>>) -> Result<Tensor> {
        let c = x.dim(2)?;
        let q = self.q.forward(x)?;
        let kv = self.kv.forward(y)?;
        let (k, v) = (kv.narrow(2, 0, c)?, kv.narrow(2, c, c)?);
        self.proj.forward(&attention(&q, &k, &v, self.heads, probs)?)
    }
}

/// SDTM token-merge block: sparse queries gather from the dense tokens.
pub struct TokenMergeBlock {
    attn: CrossAttention,
    mlp: Mlp,
    ada: Linear,
}

impl TokenMergeBlock {
    fn load(w: &mut WeightLoader, p: &str, cfg: &Config) -> Result<Self> {
        let c = cfg.hidden_size;
        Ok(TokenMergeBlock {
            attn: CrossAttention::load(w, p, cfg)?,
            mlp: Mlp::load(w, p, c, cfg.mlp_hidden)?,
            ada: Linear::load(w, &format!("{p}.adaLN_modulation.1"), c, 6 * c)?,
        })
    }

    /// sparse: (B, S, C), dense: (B, N, C) -> (B, S, C)
    fn forward(&self, sparse: &Tensor, dense: &Tensor, silu_c: &Tensor, probs: Option<&mut Option<Tensor>>) -> Result<Tensor> {
        let m = Modulation::new(&self.ada, silu_c)?;
        // Both inputs share norm1 and the msa shift/scale.
        let hq = modulate(&layer_norm(sparse)?, &m.shift_msa, &m.scale_msa)?;
        let hkv = modulate(&layer_norm(dense)?, &m.shift_msa, &m.scale_msa)?;
        let a = self.attn.forward(&hq, &hkv, probs)?;
        let x = (sparse + m.gate_msa.broadcast_mul(&a)?)?;
        self.mlp.residual(&x, &m)
    }
}

/// SDTM token-recover block: sparse tokens back to the dense grid.
pub struct TokenRecoverBlock {
    merged_layer1: Linear,
    merged_layer2: Linear,
    attn: CrossAttention,
    mlp: Mlp,
    ada: Linear,
}

impl TokenRecoverBlock {
    fn load(w: &mut WeightLoader, p: &str, cfg: &Config) -> Result<Self> {
        let c = cfg.hidden_size;
        Ok(TokenRecoverBlock {
            merged_layer1: Linear::load(w, &format!("{p}.merged_layer1"), c, c)?,
            merged_layer2: Linear::load(w, &format!("{p}.merged_layer2"), c, c)?,
            attn: CrossAttention::load(w, p, cfg)?,
            mlp: Mlp::load(w, p, c, cfg.mlp_hidden)?,
            ada: Linear::load(w, &format!("{p}.adaLN_modulation.1"), c, 6 * c)?,
        })
    }

    /// sparse: (B, S, C), dense: (B, N, C), up_index: (N,) nearest source of each dense token
    /// -> (B, N, C)
    fn forward(
        &self,
        sparse: &Tensor,
        dense: &Tensor,
        up_index: &Tensor,
        silu_c: &Tensor,
        probs: Option<&mut Option<Tensor>>,
    ) -> Result<Tensor> {
        let up = sparse.index_select(up_index, 1)?; // (B, N, C), nearest-neighbour upsampling
        let merged = (self.merged_layer1.forward(&up)? + self.merged_layer2.forward(dense)?)?;
        let m = Modulation::new(&self.ada, silu_c)?;
        let hq = modulate(&layer_norm(&merged)?, &m.shift_msa, &m.scale_msa)?;
        let hkv = modulate(&layer_norm(sparse)?, &m.shift_msa, &m.scale_msa)?;
        let a = self.attn.forward(&hq, &hkv, probs)?;
        let x = (merged + m.gate_msa.broadcast_mul(&a)?)?;
        self.mlp.residual(&x, &m)
    }
}

/// One block with its weights, of the kind its [`BlockSpec`] names.
pub enum Block {
    /// `blocks.i`, `semantic_blocks.j`, `normal_blocks.j` (and a pooled-middle block).
    Dit(DitBlock),
    Poolingformer(PoolingformerBlock),
    Merge(TokenMergeBlock),
    Recover(TokenRecoverBlock),
}

impl Block {
    fn load(w: &mut WeightLoader, spec: &BlockSpec, cfg: &Config) -> Result<Block> {
        let p = &spec.prefix;
        Ok(match spec.kind.weights() {
            BlockWeights::Dit => Block::Dit(DitBlock::load(w, p, cfg)?),
            BlockWeights::Poolingformer => Block::Poolingformer(PoolingformerBlock::load(w, p, cfg)?),
            BlockWeights::Merge => Block::Merge(TokenMergeBlock::load(w, p, cfg)?),
            BlockWeights::Recover => Block::Recover(TokenRecoverBlock::load(w, p, cfg)?),
        })
    }
}

/// A DiT or SparseDiT with f32 weights on the CPU.
pub struct Model {
    pub cfg: Config,
    /// `x_embedder.proj.weight` reshaped to a linear on flattened (c_in, p, p) patches.
    x_embedder: Linear,
    /// `pos_embed`: (N, C).
    pos_embed: Tensor,
    t_mlp0: Linear,
    t_mlp2: Linear,
    /// Latte's `temp_embed`: (F, C), added before the first temporal block.
    temp_embed: Option<Tensor>,
    /// `y_embedder.embedding_table.weight`: (classes [+1], C); none for an unconditional model.
    y_table: Option<Tensor>,
    /// Every block in forward order, one per [`Config::blocks`] entry.
    blocks: Vec<Block>,
    final_ada: Linear,
    final_linear: Linear,
}

/// What one block did in a forward pass (the token view's data).
#[derive(Clone, Debug)]
pub struct BlockTrace {
    /// Official checkpoint prefix, e.g. `dumbbell_blocks.0.token_merge_blocks.0`.
    pub name: String,
    pub kind: BlockKind,
    /// Spatial (over a frame's tokens) or temporal (over a position's frames).
    pub axis: Axis,
    /// Tokens per frame the block computes: N dense, S sparse.
    pub tokens: usize,
    /// Grid side the tokens live on (n dense, s sparse; 1 for the Poolingformer's global token).
    pub grid: usize,
    /// Head-averaged cross-attention (B, Tq, Tk) of merge / recover blocks, when requested.
    pub attention: Option<Tensor>,
}

impl Model {
    /// Build from named f32 tensors (official key names). Every key must be used.
    pub fn from_tensors(cfg: Config, tensors: TensorMap) -> Result<Model> {
        cfg.validate()?;
        let mut w = WeightLoader::new(tensors);
        let model = Self::load(cfg, &mut w)?;
        w.finish()?;
        Ok(model)
    }

    /// The (name, shape) of every tensor the architecture `cfg` reads, in loading order.
    pub fn expected_tensors(cfg: &Config) -> Result<Vec<(String, Vec<usize>)>> {
        cfg.validate()?;
        let mut w = WeightLoader::new(TensorMap::new());
        Self::load(cfg.clone(), &mut w)?;
        Ok(w.expected())
    }

    /// Take every tensor of `cfg` from `w` (missing or mis-shaped ones are recorded there).
    fn load(cfg: Config, w: &mut WeightLoader) -> Result<Model> {
        let c = cfg.hidden_size;
        let p = cfg.patch_size;
        let cin = cfg.in_channels;
        let conv = w.take("x_embedder.proj.weight", &[c, cin, p, p]);
        let conv_b = w.take("x_embedder.proj.bias", &[c]);
        let conv_t = if conv.rank() == 4 { conv.reshape((c, cin * p * p))?.t()?.contiguous()? } else { conv };
        let x_embedder = Linear { w_t: conv_t, b: Some(conv_b) };
        let n_tok = cfg.num_tokens();
        let pos = w.take("pos_embed", &[1, n_tok, c]);
        let pos_embed = if pos.rank() == 3 { pos.squeeze(0)? } else { pos };
        let t_mlp0 = Linear::load(w, "t_embedder.mlp.0", FREQ_DIM, c)?;
        let t_mlp2 = Linear::load(w, "t_embedder.mlp.2", c, c)?;
        let temp_embed = match cfg.num_frames {
            Some(f) => {
                let te = w.take("temp_embed", &[1, f, c]);
                Some(if te.rank() == 3 { te.squeeze(0)? } else { te })
            }
            None => None,
        };
        let rows = cfg.num_classes + cfg.class_null as usize;
        let y_table = cfg.is_class_conditional().then(|| w.take("y_embedder.embedding_table.weight", &[rows, c]));
        let blocks = cfg.blocks(cfg.grid()).iter().map(|spec| Block::load(w, spec, &cfg)).collect::<Result<_>>()?;
        let final_ada = Linear::load(w, "final_layer.adaLN_modulation.1", c, 2 * c)?;
        let final_linear = Linear::load(w, "final_layer.linear", c, p * p * cfg.out_channels())?;
        Ok(Model { cfg, x_embedder, pos_embed, t_mlp0, t_mlp2, temp_embed, y_table, blocks, final_ada, final_linear })
    }

    /// Turn the training-free pooled middle on (`Some`) or off; checked against the layout.
    pub fn set_pooled_middle(&mut self, pm: Option<crate::config::PooledMiddle>) -> Result<()> {
        self.cfg = self.cfg.with_pooled_middle(pm)?;
        Ok(())
    }

    fn check_inputs(&self, x: &Tensor, t: &[f32], y: &[i64]) -> Result<usize> {
        self.cfg.check_inputs(x.dims(), t, y)
    }

    /// model(x, t, y) with sparse grid side `grid` (ignored by dense models).
    /// x: (B, c_in, I, I) -> (B, c_out, I, I); video: (B, F, c_in, I, I) -> (B, F, c_out, I, I).
    pub fn forward(&self, x: &Tensor, t: &[f32], y: &[i64], grid: usize) -> Result<Tensor> {
        self.forward_traced(x, t, y, grid, None)
    }

    /// As [`Model::forward`], also recording per-block traces when `trace` is given.
    pub fn forward_traced(
        &self,
        x: &Tensor,
        t: &[f32],
        y: &[i64],
        grid: usize,
        mut trace: Option<&mut Vec<BlockTrace>>,
    ) -> Result<Tensor> {
        let b = self.check_inputs(x, t, y)?;
        let cfg = &self.cfg;
        let dev = x.device().clone();
        let (c, p, n) = (cfg.hidden_size, cfg.patch_size, cfg.grid());
        let f = cfg.frames(); // 1 for images
        let rows = b * f; // images: one per frame of every clip, `(b f)` as Latte's rearrange
        let n_tok = n * n;
        let cin = cfg.in_channels;
        let x = x.to_dtype(DType::F32)?.reshape((rows, cin, cfg.input_size, cfg.input_size))?;

        // Patch embedding: (B·F, c_in, I, I) -> (B·F, N, c_in*p*p) -> (B·F, N, C), plus pos_embed.
        let patches = x.reshape((rows, cin, n, p, n, p))?.permute((0, 2, 4, 1, 3, 5))?.reshape((rows, n_tok, cin * p * p))?;
        let mut h = self.x_embedder.forward(&patches)?.broadcast_add(&self.pos_embed)?; // (B·F, N, C)

        // Conditioning c = t_emb [+ y_emb]: (B, C); every block's adaLN takes SiLU(c), one row
        // per sequence: repeated per frame for spatial blocks, per token position for temporal
        // ones (Latte's `repeat(t, 'n d -> (n c) d')`).
        let t_freq = Tensor::from_vec(timestep_embedding(t), (b, FREQ_DIM), &dev)?;
        let mut cond = self.t_mlp2.forward(&self.t_mlp0.forward(&t_freq)?.silu()?)?;
        if let Some(table) = &self.y_table {
            let y_idx = Tensor::from_vec(y.iter().map(|&v| v as u32).collect::<Vec<_>>(), b, &dev)?;
            cond = (cond + table.index_select(&y_idx, 0)?)?;
        }
        let silu_c = cond.silu()?; // (B, C)
        let repeat_rows = |r: usize| -> Result<Tensor> {
            if r == 1 {
                return Ok(silu_c.clone());
            }
            let idx: Vec<u32> = (0..b as u32).flat_map(|i| std::iter::repeat_n(i, r)).collect();
            Ok(silu_c.index_select(&Tensor::from_vec(idx, b * r, &dev)?, 0)?)
        };
        let silu_spatial = repeat_rows(f)?; // (B·F, C)
        let mut silu_temporal: Vec<(usize, Tensor)> = Vec::new(); // (B·T, C) by T
        let mut temp_embed = self.temp_embed.as_ref(); // added once, before the first temporal block

        cfg.check_grid(grid)?;
        let want_attn = trace.is_some();
        // The block walk. `h` is the running hidden state (B·F, T, C), T = spec.in_tokens();
        // `dense` (B·F, N, C) is what it was when last pooled: an SDTM's dense input (its merge
        // blocks' keys, its recover blocks' merge partner) or the base a pooled middle's update
        // goes back onto; `pooled` (B·F, S, C) is pool(dense).
        let specs = cfg.blocks(grid);
        let mut dense = h.clone();
        let mut pooled = h.clone();
        let mut pool: Option<Tensor> = None; // (S, N) adaptive_avg_pool matrix, built on first use
        for (spec, block) in specs.iter().zip(&self.blocks) {
            if spec.pool_before {
                let m = match &pool {
                    Some(m) => m,
                    None => pool.insert(adaptive_avg_pool_matrix(n, grid, &dev)?),
                };
                dense = h;
                pooled = m.broadcast_matmul(&dense)?; // (B·F, S, C)
                h = pooled.clone();
            }
            let mut probs = None;
            h = match (spec.axis, block) {
                (Axis::Temporal, Block::Dit(blk)) => {
                    // Over the frames of each token position: (B·F, T, C) -> (B·T, F, C) and back.
                    let tk = h.dim(1)?;
                    let mut ht = h.reshape((b, f, tk, c))?.transpose(1, 2)?.contiguous()?.reshape((b * tk, f, c))?;
                    if let Some(te) = temp_embed.take() {
                        ht = ht.broadcast_add(te)?;
                    }
                    let sc = match silu_temporal.iter().find(|(r, _)| *r == tk) {
                        Some((_, sc)) => sc.clone(),
                        None => {
                            let sc = repeat_rows(tk)?;
                            silu_temporal.push((tk, sc.clone()));
                            sc
                        }
                    };
                    let out = blk.forward(&ht, &sc)?; // (B·T, F, C)
                    out.reshape((b, tk, f, c))?.transpose(1, 2)?.contiguous()?.reshape((rows, tk, c))?
                }
                (Axis::Temporal, _) => return Err(Error::arch(format!("{}: a temporal block must be a DiT block", spec.prefix))),
                (Axis::Spatial, Block::Dit(blk)) => blk.forward(&h, &silu_spatial)?,
                (Axis::Spatial, Block::Poolingformer(blk)) => blk.forward(&h, &silu_spatial)?,
                (Axis::Spatial, Block::Merge(blk)) => blk.forward(&h, &dense, &silu_spatial, want_attn.then_some(&mut probs))?,
                (Axis::Spatial, Block::Recover(blk)) => {
                    // nearest upsampling from the block's input grid (identity from n to n)
                    let up = nearest_upsample_index(spec.in_side, n, &dev)?; // (N,)
                    blk.forward(&h, &dense, &up, &silu_spatial, want_attn.then_some(&mut probs))?
                }
            };
            if spec.unpool_after {
                // pooled middle: h = dense + up(middle(pool(dense)) - pool(dense))
                let up = nearest_upsample_index(grid, n, &dev)?; // (N,)
                h = (&dense + (h - &pooled)?.index_select(&up, 1)?)?;
            }
            if let Some(tr) = trace.as_deref_mut() {
                // The Poolingformer's attention is one global token.
                let side = if spec.kind == BlockKind::Poolingformer { 1 } else { spec.side };
                tr.push(BlockTrace {
                    name: spec.prefix.clone(),
                    kind: spec.kind,
                    axis: spec.axis,
                    tokens: spec.tokens(),
                    grid: side,
                    attention: probs,
                });
            }
        }

        // Final layer: adaLN (shift, scale), LN, linear to p*p*c_out per token.
        let fm = self.final_ada.forward(&silu_spatial)?.unsqueeze(1)?; // (B·F, 1, 2C)
        let (shift, scale) = (fm.narrow(2, 0, c)?, fm.narrow(2, c, c)?);
        let out = self.final_linear.forward(&modulate(&layer_norm(&h)?, &shift, &scale)?)?; // (B·F, N, p*p*c_out)
        let img = unpatchify(&out, n, p, cfg.out_channels())?; // (B·F, c_out, I, I)
        Ok(img.reshape(cfg.output_shape(b))?)
    }

    /// The reference `forward_with_cfg`: the batch is [cond; uncond] halves, the first half's
    /// latent is used for both; `eps = uncond + scale (cond - uncond)` on the first
    /// `guided_channels` output channels (3 in the official DiT code, 4 in Latte's), the rest
    /// from each row.
    pub fn forward_with_cfg(&self, x: &Tensor, t: &[f32], y: &[i64], cfg_scale: f64, guided_channels: usize, grid: usize) -> Result<Tensor> {
        let b = x.dim(0)?;
        if b % 2 != 0 {
            return Err(Error::arg(format!("forward_with_cfg needs an even batch ([cond; uncond]), got {b}")));
        }
        let half = x.narrow(0, 0, b / 2)?;
        let combined = Tensor::cat(&[&half, &half], 0)?;
        let out = self.forward(&combined, t, y, grid)?;
        apply_cfg(&out, cfg_scale, guided_channels)
    }
}

/// CFG combine on a [cond; uncond] model output (B, c_out, H, W) — or (B, F, c_out, H, W) for
/// video: the channel axis is the third from last —: the first `guided_channels` channels of
/// both halves become uncond + scale (cond - uncond); the others are kept per row.
pub fn apply_cfg(out: &Tensor, cfg_scale: f64, guided_channels: usize) -> Result<Tensor> {
    let b = out.dim(0)?;
    let axis = out.rank().checked_sub(3).filter(|&a| a >= 1).ok_or_else(|| Error::arg("CFG needs a (B, [F,] C, H, W) output"))?;
    let c_out = out.dim(axis)?;
    let g = guided_channels.min(c_out);
    let eps = out.narrow(axis, 0, g)?;
    let cond = eps.narrow(0, 0, b / 2)?;
    let uncond = eps.narrow(0, b / 2, b / 2)?;
    let half_eps = (&uncond + ((&cond - &uncond)? * cfg_scale)?)?;
    let eps = Tensor::cat(&[&half_eps, &half_eps], 0)?;
    if g == c_out {
        return Ok(eps);
    }
    Ok(Tensor::cat(&[&eps, &out.narrow(axis, g, c_out - g)?], axis)?)
}

/// (B, N, p*p*c) -> (B, c, n*p, n*p); token (h, w) holds a (p, p, c) patch, row-major.
fn unpatchify(x: &Tensor, n: usize, p: usize, c: usize) -> Result<Tensor> {
    let b = x.dim(0)?;
    Ok(x.reshape((b, n, n, p, p, c))?.permute((0, 5, 1, 3, 2, 4))?.reshape((b, c, n * p, n * p))?)
}

/// The values of a tensor of any shape and dtype, flattened row-major, as f32.
pub fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_tanh_matches_candle_gelu() {
        // Random-ish values over the range an MLP sees, plus the tails (exp overflow -> -0).
        let mut v: Vec<f32> = (0..4001).map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 24.0).collect();
        v.extend([-100.0, -30.0, 0.0, 30.0, 100.0, 1e-30, -1e-30]);
        let x = Tensor::new(v.as_slice(), &Device::Cpu).unwrap();
        let want: Vec<f32> = x.gelu().unwrap().to_vec1().unwrap();
        let got: Vec<f32> = gelu_tanh(&x).unwrap().to_vec1().unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // Against the exact function in f64: `1 + tanh(u)` cancels for u << 0 (candle's and
            // PyTorch's form lose digits there), the sigmoid form does not.
            let xv = v[i] as f64;
            let exact = 0.5 * xv * (1.0 + (0.7978845608028654 * xv * (1.0 + 0.044715 * xv * xv)).tanh());
            let rel = (*g as f64 - exact).abs() / exact.abs().max(1e-3);
            assert!(rel < 1e-6, "gelu_tanh at index {i} (x = {}): {g} vs exact {exact}, rel err {rel:.2e}", v[i]);
            // and next to candle's gelu in absolute terms (what a following linear layer sees)
            let abs = (g - w).abs();
            assert!(abs <= 1e-6 * v[i].abs().max(1.0), "gelu_tanh at index {i} (x = {}): {g} vs candle {w}, abs err {abs:.2e}", v[i]);
        }
    }
}
