//! DiT / SparseDiT on the GPU: weights uploaded once ([`GpuModel`]), and a [`Plan`] per
//! (batch, sparse grid) holding every activation buffer and the recorded dispatches of one
//! forward pass, replayed each denoising step as a single submission.
//!
//! The dispatch order mirrors `model::Model::forward_traced` block for block; the CPU model is
//! the reference the GPU output is tested against.

use std::borrow::Cow;
use std::collections::HashMap;
use std::rc::Rc;

use crate::config::{Config, Layout, FREQ_DIM, SDTM_KINDS};
use crate::error::{Error, Result};
use crate::gguf::{self, Gguf, GgufHeader, TensorInfo, TensorType};
use crate::gpu::ops::attention::{attention, attention_probs, AttnShape};
use crate::gpu::ops::tokens;
use crate::gpu::ops::{layernorm_modulate, linear_with, Epilogue, GpuLinear, GpuWeight, Precision};
use crate::gpu::{Dispatch, Gpu, GpuBuf};
use crate::model::{timestep_embedding, TensorMap};
use crate::pack;
use crate::stream::TensorSink;

/// Where weights come from: encoded bytes per tensor, as in a pack.
pub trait WeightSource {
    /// (type, encoded bytes, PyTorch shape) of tensor `name`.
    fn encoded(&self, name: &str) -> Result<(TensorType, Cow<'_, [u8]>, Vec<usize>)>;
    /// Tensor `name` decoded to f32, with its shape.
    fn f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (ty, bytes, shape) = self.encoded(name)?;
        let n = shape.iter().product();
        Ok((gguf::decode(&bytes, ty, n)?, shape))
    }
    /// The (N, K) weight `name` of a linear layer on the GPU, in its stored format, with its
    /// shape. Default: upload [`Self::encoded`]; a streamed pack has it uploaded already.
    fn gpu_weight(&self, gpu: &Gpu, name: &str) -> Result<(GpuWeight, Vec<usize>)> {
        upload_encoded(gpu, self, name)
    }
}

/// Upload tensor `name` of `src` as a linear weight (the default of [`WeightSource::gpu_weight`]).
fn upload_encoded<S: WeightSource + ?Sized>(gpu: &Gpu, src: &S, name: &str) -> Result<(GpuWeight, Vec<usize>)> {
    let (ty, bytes, shape) = src.encoded(name)?;
    let elems = shape.iter().product();
    Ok((GpuWeight::upload(gpu, name, ty, &bytes, elems)?, shape))
}

fn missing(name: &str) -> Error {
    Error::Keys { missing: vec![name.to_string()], unexpected: vec![] }
}

impl WeightSource for Gguf<'_> {
    fn encoded(&self, name: &str) -> Result<(TensorType, Cow<'_, [u8]>, Vec<usize>)> {
        let info = self.header.tensor(name).ok_or_else(|| missing(name))?;
        Ok((info.ty, Cow::Borrowed(self.tensor_data(info)), info.shape.clone()))
    }
}

/// f32 tensors encoded on the fly with `quant` for 2-D linear weights (as `convert` would).
pub struct EncodedMap<'a> {
    pub tensors: &'a TensorMap,
    pub quant: TensorType,
}

impl WeightSource for EncodedMap<'_> {
    fn encoded(&self, name: &str) -> Result<(TensorType, Cow<'_, [u8]>, Vec<usize>)> {
        let t = self.tensors.get(name).ok_or_else(|| missing(name))?;
        let shape = t.dims().to_vec();
        let ty = pack::storage_type(name, &shape, self.quant);
        let values = crate::model::to_vec_f32(t)?;
        Ok((ty, Cow::Owned(gguf::encode(&values, ty)?), shape))
    }
}

fn lin(gpu: &Gpu, src: &dyn WeightSource, name: &str, k_in: usize, n_out: usize) -> Result<GpuLinear> {
    let (weight, shape) = src.gpu_weight(gpu, &format!("{name}.weight"))?;
    if shape != [n_out, k_in] {
        return Err(Error::Shape { name: format!("{name}.weight"), expected: vec![n_out, k_in], found: shape });
    }
    let (bias, bshape) = src.f32(&format!("{name}.bias"))?;
    if bshape != [n_out] {
        return Err(Error::Shape { name: format!("{name}.bias"), expected: vec![n_out], found: bshape });
    }
    GpuLinear::from_weight(gpu, name, weight, n_out, k_in, &bias)
}

/// A pack arriving in chunks ([`crate::stream::PackStream`]): every linear weight goes into its
/// GPU buffer the moment its bytes are complete (then its host copy is dropped); biases,
/// tables, the patch-embedding kernel and the position table — a small part of the bytes —
/// wait on the host until [`GpuModel::load`] builds the model from this sink.
pub struct GpuStreamSink {
    gpu: Rc<Gpu>,
    uploaded: HashMap<String, (GpuWeight, Vec<usize>)>,
    host: HashMap<String, (TensorType, Vec<u8>, Vec<usize>)>,
    /// Bytes of tensor data on the GPU / kept on the host so far.
    pub gpu_bytes: usize,
    pub host_bytes: usize,
}

impl GpuStreamSink {
    pub fn new(gpu: Rc<Gpu>) -> Self {
        GpuStreamSink { gpu, uploaded: HashMap::new(), host: HashMap::new(), gpu_bytes: 0, host_bytes: 0 }
    }

    /// Linear weights are the 2-D `*.weight` tensors other than the label table.
    fn is_linear_weight(info: &TensorInfo) -> bool {
        info.shape.len() == 2 && info.name.ends_with(".weight") && info.name != "y_embedder.embedding_table.weight"
    }
}

impl TensorSink for GpuStreamSink {
    fn header(&mut self, header: &GgufHeader, _cfg: &Config) -> Result<()> {
        // Refuse early what could never fit one binding (the pack has not been downloaded yet).
        let max = self.gpu.limits.max_storage_buffer_binding_size as usize;
        if let Some(t) = header.tensors.iter().find(|t| t.nbytes > max) {
            return Err(Error::Gpu(format!("tensor '{}' ({} bytes) exceeds this GPU's storage binding limit of {max} bytes", t.name, t.nbytes)));
        }
        Ok(())
    }

    fn tensor(&mut self, info: &TensorInfo, bytes: Vec<u8>) -> Result<()> {
        if Self::is_linear_weight(info) {
            let elems = info.elem_count().ok_or_else(|| Error::gguf(format!("tensor '{}': shape overflows", info.name)))?;
            let w = GpuWeight::upload(&self.gpu, &info.name, info.ty, &bytes, elems)?;
            self.gpu_bytes += bytes.len();
            self.uploaded.insert(info.name.clone(), (w, info.shape.clone()));
        } else {
            self.host_bytes += bytes.len();
            self.host.insert(info.name.clone(), (info.ty, bytes, info.shape.clone()));
        }
        self.gpu.check()
    }
}

impl WeightSource for GpuStreamSink {
    fn encoded(&self, name: &str) -> Result<(TensorType, Cow<'_, [u8]>, Vec<usize>)> {
        let (ty, bytes, shape) = self.host.get(name).ok_or_else(|| missing(name))?;
        Ok((*ty, Cow::Borrowed(bytes.as_slice()), shape.clone()))
    }

    fn gpu_weight(&self, gpu: &Gpu, name: &str) -> Result<(GpuWeight, Vec<usize>)> {
        match self.uploaded.get(name) {
            Some((w, shape)) => Ok((w.clone(), shape.clone())),
            None => upload_encoded(gpu, self, name),
        }
    }
}

fn table(gpu: &Gpu, src: &dyn WeightSource, name: &str, shape: &[usize]) -> Result<GpuBuf> {
    let (v, s) = src.f32(name)?;
    if s != shape {
        return Err(Error::Shape { name: name.to_string(), expected: shape.to_vec(), found: s });
    }
    gpu.upload(name, &v)
}

/// One block's weights; `name` is its checkpoint prefix.
pub struct GpuBlock {
    pub name: String,
    pub kind: BlockKind,
    ada: GpuLinear,
    /// DiT: qkv; merge / recover: q. Poolingformer: v.
    q_or_qkv: GpuLinear,
    /// merge / recover: kv.
    kv: Option<GpuLinear>,
    proj: GpuLinear,
    fc1: GpuLinear,
    fc2: GpuLinear,
    merged: Option<(GpuLinear, GpuLinear)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Ordinary DiT block (dense `blocks`, `semantic_blocks`, `normal_blocks`).
    Dit,
    Poolingformer,
    TokenMerge,
    TokenRecover,
}

/// Weights of a whole model on the GPU.
pub struct GpuModel {
    pub cfg: Config,
    x_embedder: GpuLinear,
    pos_embed: GpuBuf,
    t_mlp0: GpuLinear,
    t_mlp2: GpuLinear,
    y_table: GpuBuf,
    /// Every block in forward order.
    pub blocks: Vec<GpuBlock>,
    final_ada: GpuLinear,
    final_linear: GpuLinear,
    /// Arithmetic of every linear layer in plans built from now on (F32 after `load`).
    pub precision: Precision,
}

impl GpuModel {
    /// Upload a model. Conv / table / bias tensors are decoded to f32; linear weights stay in
    /// their stored format (f32, f16, q8_0, q4_0) and are dequantised in the kernel.
    pub fn load(gpu: &Gpu, cfg: Config, src: &dyn WeightSource) -> Result<GpuModel> {
        cfg.validate()?;
        let (c, p, cin, m) = (cfg.hidden_size, cfg.patch_size, cfg.in_channels, cfg.mlp_hidden);
        let (conv, cshape) = src.f32("x_embedder.proj.weight")?;
        if cshape != [c, cin, p, p] {
            return Err(Error::Shape { name: "x_embedder.proj.weight".into(), expected: vec![c, cin, p, p], found: cshape });
        }
        let (conv_b, _) = src.f32("x_embedder.proj.bias")?;
        let x_embedder = GpuLinear::from_encoded(gpu, "x_embedder.proj", TensorType::F32, bytemuck::cast_slice(&conv), c, cin * p * p, &conv_b)?;
        let pos_embed = table(gpu, src, "pos_embed", &[1, cfg.num_tokens(), c])?;
        let rows = cfg.num_classes + cfg.class_null as usize;
        let y_table = table(gpu, src, "y_embedder.embedding_table.weight", &[rows, c])?;
        let mut blocks = Vec::new();
        for name in cfg.layout.block_names() {
            let kind = if name.starts_with("poolingformer_blocks") {
                BlockKind::Poolingformer
            } else if name.contains(&format!(".{}.", SDTM_KINDS[0])) {
                BlockKind::TokenMerge
            } else if name.contains(&format!(".{}.", SDTM_KINDS[2])) {
                BlockKind::TokenRecover
            } else {
                BlockKind::Dit
            };
            let l = |sfx: &str, k: usize, n: usize| lin(gpu, src, &format!("{name}.{sfx}"), k, n);
            let (q_or_qkv, kv) = match kind {
                BlockKind::Dit => (l("attn.qkv", c, 3 * c)?, None),
                BlockKind::Poolingformer => (l("attn.v", c, c)?, None),
                _ => (l("attn.q", c, c)?, Some(l("attn.kv", c, 2 * c)?)),
            };
            let merged = if kind == BlockKind::TokenRecover {
                Some((l("merged_layer1", c, c)?, l("merged_layer2", c, c)?))
            } else {
                None
            };
            blocks.push(GpuBlock {
                ada: l("adaLN_modulation.1", c, 6 * c)?,
                proj: l("attn.proj", c, c)?,
                fc1: l("mlp.fc1", c, m)?,
                fc2: l("mlp.fc2", m, c)?,
                q_or_qkv,
                kv,
                merged,
                name,
                kind,
            });
        }
        Ok(GpuModel {
            x_embedder,
            pos_embed,
            t_mlp0: lin(gpu, src, "t_embedder.mlp.0", FREQ_DIM, c)?,
            t_mlp2: lin(gpu, src, "t_embedder.mlp.2", c, c)?,
            y_table,
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
        let cfg = &self.cfg;
        if batch == 0 {
            return Err(Error::arg("batch must be at least 1"));
        }
        if cfg.uses_grid() && grid == 0 {
            return Err(Error::arg("sparse grid size must be at least 1"));
        }
        let pooled_middle = cfg.pooled_middle_at(grid);
        let (c, p, n, m) = (cfg.hidden_size, cfg.patch_size, cfg.grid(), cfg.mlp_hidden);
        let (cin, co, i) = (cfg.in_channels, cfg.out_channels(), cfg.input_size);
        let nt = n * n;
        let s = if cfg.layout.is_sparse() || pooled_middle.is_some() { grid } else { n };
        let st = s * s;
        let tmax = nt.max(st);
        let b = batch;
        let buf = |label: &str, len: usize| gpu.zeros(label, len);
        // Activations, allocated once per (batch, grid). Shapes in comments.
        let x_in = buf("x", b * cin * i * i)?; // (B, c_in, I, I)
        let t_freq = buf("t_freq", b * FREQ_DIM)?; // (B, 256)
        let labels = buf("labels", b)?; // (B) u32
        let patches = buf("patches", b * nt * cin * p * p)?; // (B, N, c_in p^2)
        let t_hidden = buf("t_hidden", b * c)?; // (B, C)
        let t_emb = buf("t_emb", b * c)?; // (B, C)
        let cond = buf("silu_c", b * c)?; // (B, C) = SiLU(t_emb + y_emb)
        let mods = buf("mods", b * 6 * c)?; // (B, 6C) adaLN of the current block
        let dense = [buf("dense_a", b * nt * c)?, buf("dense_b", b * nt * c)?]; // (B, N, C) ping-pong
        let sparse = buf("sparse", b * st * c)?; // (B, S, C)
        // (B, S, C) the pooled tokens entering a training-free pooled middle (its residual's base)
        let pooled_base = if pooled_middle.is_some() { Some(buf("pooled_base", b * st * c)?) } else { None };
        let normed = buf("normed", b * tmax * c)?; // (B, T, C) modulated LN output
        let normed_kv = buf("normed_kv", b * tmax * c)?; // (B, T, C) keys/values side
        let wide = buf("wide", b * tmax * (3 * c).max(m))?; // (B, T, 3C) qkv or (B, T, M) MLP hidden
        let q = buf("q", b * tmax * c)?; // (B, T, C)
        let kv = buf("kv", b * tmax * 2 * c)?; // (B, T, 2C)
        let att = buf("att", b * tmax * c)?; // (B, T, C) attention output before proj
        let pooled = buf("pooled", b * c)?; // (B, C) Poolingformer mean of V
        let pooled_proj = buf("pooled_proj", b * c)?; // (B, C)
        let fmods = buf("final_mods", b * 2 * c)?; // (B, 2C)
        let out_tokens = buf("out_tokens", b * nt * p * p * co)?; // (B, N, p^2 c_out)
        let out = buf("out", b * co * i * i)?; // (B, c_out, I, I)

        let mut d: Vec<Dispatch> = Vec::new();
        let mut traces = Vec::new();
        let mut captures: Vec<AttentionCapture> = Vec::new();
        // Embeddings.
        d.push(tokens::patchify(gpu, "x_embedder.patchify", &x_in, b, cin, i, p, &patches)?);
        d.push(linear_with(gpu, "x_embedder.proj", &self.x_embedder, &patches, b * nt, &dense[0], Epilogue::AddRows { table: &self.pos_embed, tokens: nt }, self.precision)?);
        d.push(linear_with(gpu, "t_embedder.mlp.0", &self.t_mlp0, &t_freq, b, &t_hidden, Epilogue::Silu, self.precision)?);
        d.push(linear_with(gpu, "t_embedder.mlp.2", &self.t_mlp2, &t_hidden, b, &t_emb, Epilogue::Store, self.precision)?);
        let rows = cfg.num_classes + cfg.class_null as usize;
        d.push(tokens::condition(gpu, "y_embedder", &t_emb, &self.y_table, &labels, b, c, rows, &cond)?);

        // The two halves of a block that every kind shares: gated MLP on x (B*T rows).
        let mlp = |d: &mut Vec<Dispatch>, blk: &GpuBlock, x: &GpuBuf, t: usize| -> Result<()> {
            d.push(layernorm_modulate(gpu, &format!("{}.norm2", blk.name), x, b * t, c, t, &mods, 6 * c, 3 * c, 4 * c, &normed)?);
            d.push(linear_with(gpu, &format!("{}.mlp.fc1", blk.name), &blk.fc1, &normed, b * t, &wide, Epilogue::Gelu, self.precision)?);
            d.push(linear_with(gpu, &format!("{}.mlp.fc2", blk.name), &blk.fc2, &wide, b * t, x, Epilogue::GatedResidual { mods: &mods, tokens: t, stride: 6 * c, offset: 5 * c }, self.precision)?);
            Ok(())
        };
        let gated = |t: usize| Epilogue::GatedResidual { mods: &mods, tokens: t, stride: 6 * c, offset: 2 * c };
        let dit_block = |d: &mut Vec<Dispatch>, blk: &GpuBlock, x: &GpuBuf, t: usize| -> Result<()> {
            d.push(linear_with(gpu, &format!("{}.adaLN_modulation.1", blk.name), &blk.ada, &cond, b, &mods, Epilogue::Store, self.precision)?);
            d.push(layernorm_modulate(gpu, &format!("{}.norm1", blk.name), x, b * t, c, t, &mods, 6 * c, 0, c, &normed)?);
            d.push(linear_with(gpu, &format!("{}.attn.qkv", blk.name), &blk.q_or_qkv, &normed, b * t, &wide, Epilogue::Store, self.precision)?);
            d.push(attention(gpu, &format!("{}.attn", blk.name), &AttnShape::packed_qkv(b, t, c, cfg.num_heads), &wide, &wide, &att)?);
            d.push(linear_with(gpu, &format!("{}.attn.proj", blk.name), &blk.proj, &att, b * t, x, gated(t), self.precision)?);
            mlp(d, blk, x, t)
        };

        let mut cur = 0usize; // index of the dense buffer holding the residual stream
        let mut bi = 0usize;
        let blocks = &self.blocks;
        let mut next_block = || -> Result<&GpuBlock> {
            let blk = blocks.get(bi).ok_or_else(|| Error::arch("block list shorter than the layout"))?;
            bi += 1;
            Ok(blk)
        };
        match cfg.layout {
            Layout::Dense { depth } => {
                for i in 0..depth {
                    let blk = next_block()?;
                    match (pooled_middle, &pooled_base) {
                        // Training-free pooled middle (config::PooledMiddle): pool on entry, run
                        // the middle blocks on s x s tokens, add their update back on exit.
                        (Some(pm), Some(base)) if pm.contains(i) => {
                            if i == pm.start {
                                d.push(tokens::adaptive_avg_pool(gpu, "pooled_middle.pool", &dense[cur], b, n, s, c, &sparse)?);
                                d.push(tokens::adaptive_avg_pool(gpu, "pooled_middle.pool_base", &dense[cur], b, n, s, c, base)?);
                            }
                            dit_block(&mut d, blk, &sparse, st)?;
                            traces.push(PlanBlock { name: blk.name.clone(), kind: blk.kind, tokens: st, grid: s });
                            if i + 1 == pm.end {
                                d.push(tokens::pooled_residual(gpu, "pooled_middle.upsample", &dense[cur], &sparse, base, b, s, n, c)?);
                            }
                        }
                        _ => {
                            dit_block(&mut d, blk, &dense[cur], nt)?;
                            traces.push(PlanBlock { name: blk.name.clone(), kind: blk.kind, tokens: nt, grid: n });
                        }
                    }
                }
            }
            Layout::Sparse(sl) => {
                for _ in 0..sl.num_poolingformer {
                    let blk = next_block()?;
                    let x = &dense[cur];
                    d.push(linear_with(gpu, &format!("{}.adaLN_modulation.1", blk.name), &blk.ada, &cond, b, &mods, Epilogue::Store, self.precision)?);
                    d.push(layernorm_modulate(gpu, &format!("{}.norm1", blk.name), x, b * nt, c, nt, &mods, 6 * c, 0, c, &normed)?);
                    d.push(linear_with(gpu, &format!("{}.attn.v", blk.name), &blk.q_or_qkv, &normed, b * nt, &att, Epilogue::Store, self.precision)?);
                    d.push(tokens::mean_tokens(gpu, &format!("{}.attn.mean", blk.name), &att, b, nt, c, &pooled)?);
                    d.push(linear_with(gpu, &format!("{}.attn.proj", blk.name), &blk.proj, &pooled, b, &pooled_proj, Epilogue::Store, self.precision)?);
                    d.push(tokens::residual_broadcast(gpu, &format!("{}.residual", blk.name), x, b, nt, c, &mods, 6 * c, 2 * c, &pooled_proj)?);
                    mlp(&mut d, blk, x, nt)?;
                    traces.push(PlanBlock { name: blk.name.clone(), kind: blk.kind, tokens: nt, grid: 1 });
                }
                for k in 0..sl.num_sdtm {
                    let dn = &dense[cur]; // the dense tokens entering the module
                    let out_dense = &dense[1 - cur];
                    d.push(tokens::adaptive_avg_pool(gpu, &format!("dumbbell_blocks.{k}.pool"), dn, b, n, s, c, &sparse)?);
                    for _ in 0..sl.group[0] {
                        let blk = next_block()?;
                        d.push(linear_with(gpu, &format!("{}.adaLN_modulation.1", blk.name), &blk.ada, &cond, b, &mods, Epilogue::Store, self.precision)?);
                        d.push(layernorm_modulate(gpu, &format!("{}.norm1.q", blk.name), &sparse, b * st, c, st, &mods, 6 * c, 0, c, &normed)?);
                        d.push(layernorm_modulate(gpu, &format!("{}.norm1.kv", blk.name), dn, b * nt, c, nt, &mods, 6 * c, 0, c, &normed_kv)?);
                        d.push(linear_with(gpu, &format!("{}.attn.q", blk.name), &blk.q_or_qkv, &normed, b * st, &q, Epilogue::Store, self.precision)?);
                        let kvl = blk.kv.as_ref().ok_or_else(|| Error::arch("merge block without kv"))?;
                        d.push(linear_with(gpu, &format!("{}.attn.kv", blk.name), kvl, &normed_kv, b * nt, &kv, Epilogue::Store, self.precision)?);
                        let shape = AttnShape::cross(b, st, nt, c, cfg.num_heads);
                        d.push(attention(gpu, &format!("{}.attn", blk.name), &shape, &q, &kv, &att)?);
                        if capture_attention {
                            captures.push(capture(gpu, &mut d, &blk.name, &shape, &q, &kv)?);
                        }
                        d.push(linear_with(gpu, &format!("{}.attn.proj", blk.name), &blk.proj, &att, b * st, &sparse, gated(st), self.precision)?);
                        mlp(&mut d, blk, &sparse, st)?;
                        traces.push(PlanBlock { name: blk.name.clone(), kind: blk.kind, tokens: st, grid: s });
                    }
                    for _ in 0..sl.group[1] {
                        let blk = next_block()?;
                        dit_block(&mut d, blk, &sparse, st)?;
                        traces.push(PlanBlock { name: blk.name.clone(), kind: blk.kind, tokens: st, grid: s });
                    }
                    // Recover: x = merged + gate * CrossAttn(LN(merged) -> LN(sparse)); the
                    // "sparse" input of a second recover block is the first one's dense output.
                    let mut on_dense = false;
                    for _ in 0..sl.group[2] {
                        let blk = next_block()?;
                        let (m1, m2) = blk.merged.as_ref().ok_or_else(|| Error::arch("recover block without merged layers"))?;
                        let (src, src_t, src_grid) = if on_dense { (out_dense, nt, n) } else { (&sparse, st, s) };
                        // On the dense grid (src_grid = n) nearest upsampling is a copy.
                        d.push(tokens::upsample_nearest(gpu, &format!("{}.upsample", blk.name), src, b, src_grid, n, c, &att)?);
                        // The sparse side must survive until its keys/values are computed, and the
                        // output goes to out_dense: normalise the source first.
                        d.push(linear_with(gpu, &format!("{}.adaLN_modulation.1", blk.name), &blk.ada, &cond, b, &mods, Epilogue::Store, self.precision)?);
                        d.push(layernorm_modulate(gpu, &format!("{}.norm1.kv", blk.name), src, b * src_t, c, src_t, &mods, 6 * c, 0, c, &normed_kv)?);
                        let kvl = blk.kv.as_ref().ok_or_else(|| Error::arch("recover block without kv"))?;
                        d.push(linear_with(gpu, &format!("{}.attn.kv", blk.name), kvl, &normed_kv, b * src_t, &kv, Epilogue::Store, self.precision)?);
                        d.push(linear_with(gpu, &format!("{}.merged_layer1", blk.name), m1, &att, b * nt, out_dense, Epilogue::Store, self.precision)?);
                        d.push(linear_with(gpu, &format!("{}.merged_layer2", blk.name), m2, dn, b * nt, out_dense, Epilogue::Accumulate, self.precision)?);
                        d.push(layernorm_modulate(gpu, &format!("{}.norm1.q", blk.name), out_dense, b * nt, c, nt, &mods, 6 * c, 0, c, &normed)?);
                        d.push(linear_with(gpu, &format!("{}.attn.q", blk.name), &blk.q_or_qkv, &normed, b * nt, &q, Epilogue::Store, self.precision)?);
                        let shape = AttnShape::cross(b, nt, src_t, c, cfg.num_heads);
                        d.push(attention(gpu, &format!("{}.attn", blk.name), &shape, &q, &kv, &att)?);
                        if capture_attention {
                            captures.push(capture(gpu, &mut d, &blk.name, &shape, &q, &kv)?);
                        }
                        d.push(linear_with(gpu, &format!("{}.attn.proj", blk.name), &blk.proj, &att, b * nt, out_dense, gated(nt), self.precision)?);
                        mlp(&mut d, blk, out_dense, nt)?;
                        on_dense = true;
                        traces.push(PlanBlock { name: blk.name.clone(), kind: blk.kind, tokens: nt, grid: n });
                    }
                    if !on_dense {
                        return Err(Error::arch(format!("dumbbell_blocks.{k} has no token_recover block: it would end on sparse tokens")));
                    }
                    for _ in 0..sl.group[3] {
                        let blk = next_block()?;
                        dit_block(&mut d, blk, out_dense, nt)?;
                        traces.push(PlanBlock { name: blk.name.clone(), kind: blk.kind, tokens: nt, grid: n });
                    }
                    cur = 1 - cur;
                }
                for _ in 0..sl.num_top {
                    let blk = next_block()?;
                    dit_block(&mut d, blk, &dense[cur], nt)?;
                    traces.push(PlanBlock { name: blk.name.clone(), kind: blk.kind, tokens: nt, grid: n });
                }
            }
        }
        // Final layer.
        d.push(linear_with(gpu, "final_layer.adaLN_modulation.1", &self.final_ada, &cond, b, &fmods, Epilogue::Store, self.precision)?);
        d.push(layernorm_modulate(gpu, "final_layer.norm_final", &dense[cur], b * nt, c, nt, &fmods, 2 * c, 0, c, &normed)?);
        d.push(linear_with(gpu, "final_layer.linear", &self.final_linear, &normed, b * nt, &out_tokens, Epilogue::Store, self.precision)?);
        d.push(tokens::unpatchify(gpu, "unpatchify", &out_tokens, b, n, p, co, &out)?);
        Ok(Plan { batch: b, grid: s, dispatches: d, x_in, t_freq, labels, out, blocks: traces, attention: captures })
    }

    /// Check labels against the label table (see [`Config::check_labels`]).
    pub fn check_labels(&self, y: &[i64]) -> Result<()> {
        self.cfg.check_labels(y)
    }

    /// Write the inputs of a forward pass into the plan's buffers.
    pub fn write_inputs(&self, gpu: &Gpu, plan: &Plan, x: Option<&[f32]>, t: &[f32], y: &[i64]) -> Result<()> {
        let cfg = &self.cfg;
        let want = plan.batch * cfg.in_channels * cfg.input_size * cfg.input_size;
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
        self.check_labels(y)?;
        gpu.write(&plan.t_freq, &timestep_embedding(t))?;
        let labels: Vec<u32> = y.iter().map(|&v| v as u32).collect();
        gpu.write(&plan.labels, &labels)
    }

    /// model(x, t, y) on the GPU, read back (B, c_out, I, I) flattened.
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

/// What one block of a plan computes (the token view's static data).
#[derive(Clone, Debug)]
pub struct PlanBlock {
    pub name: String,
    pub kind: BlockKind,
    pub tokens: usize,
    pub grid: usize,
}

/// One recorded forward pass for a (batch, grid).
pub struct Plan {
    pub batch: usize,
    pub grid: usize,
    pub dispatches: Vec<Dispatch>,
    /// (B, c_in, I, I) input.
    pub x_in: GpuBuf,
    /// (B, 256) sinusoidal timestep features, written by the host each step.
    pub t_freq: GpuBuf,
    /// (B) labels as u32.
    pub labels: GpuBuf,
    /// (B, c_out, I, I) output.
    pub out: GpuBuf,
    pub blocks: Vec<PlanBlock>,
    /// Attention maps of merge / recover blocks, when the plan was built to capture them.
    pub attention: Vec<AttentionCapture>,
}
