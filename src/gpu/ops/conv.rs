//! Ops of the latent decoders (NCHW images, f32):
//!
//! - [`conv2d`]: 3x3 / 1x1 convolution, stride 1, padding K/2, with fused nearest 2x upsampling
//!   and TAESD's clamp on the input, and bias / residual add / ReLU / SiLU on the output
//!   (`shaders/conv2d.wgsl`).
//! - [`group_norm`]: GroupNorm with an optional SiLU (`shaders/group_norm.wgsl`).
//! - [`vae_attention`]: the SD-VAE mid block's single-head attention on channel-major q, k, v
//!   (`shaders/vae_attention.wgsl`).
//!
//! Every op checks its shapes against the buffers it is given and returns `Err` (never panics).

use std::rc::Rc;

use super::{bad, elems, groups_1d, need};
use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, GpuBuf};

pub const CONV2D_WGSL: &str = include_str!("../../../shaders/conv2d.wgsl");
pub const GROUP_NORM_WGSL: &str = include_str!("../../../shaders/group_norm.wgsl");
pub const VAE_ATTENTION_WGSL: &str = include_str!("../../../shaders/vae_attention.wgsl");

/// Output tile side and output channels per workgroup of `conv2d.wgsl` (its `TS`, `OCB`).
const CONV_TILE: usize = 8;
const CONV_OCB: usize = 16;
/// Invocations per workgroup of `vae_attention.wgsl` (its `WG`).
const ATT_WG: usize = 256;

fn not_aliased(label: &str, out: &GpuBuf, inputs: &[(&str, &GpuBuf)]) -> Result<()> {
    for (name, b) in inputs {
        if Rc::ptr_eq(&b.buf, &out.buf) {
            return bad(label, format!("the output buffer is also the {name} buffer"));
        }
    }
    Ok(())
}

/// The activation after a conv or norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    Silu,
}

impl Act {
    fn code(self) -> u32 {
        match self {
            Act::None => 0,
            Act::Relu => 1,
            Act::Silu => 2,
        }
    }
}

/// A convolution's sizes and fused extras. (h, w) is the output size; with `upsample` the
/// input is (h/2, w/2) (h, w even).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    /// Kernel side: 1 or 3.
    pub k: usize,
    /// Read the input through nearest 2x upsampling.
    pub upsample: bool,
    /// TAESD's clamp tanh(v / 3) * 3 on the input.
    pub clamp_input: bool,
    pub act: Act,
}

/// A conv weight (cout, cin, k, k) on the GPU: f32, or f16 pairs (low half first).
#[derive(Clone)]
pub struct ConvWeight {
    pub buf: GpuBuf,
    /// Stored as f16: half the bytes; exact only for values f16 holds.
    pub f16: bool,
    /// Number of weights.
    pub len: usize,
}

impl ConvWeight {
    pub fn f32(gpu: &Gpu, name: &str, v: &[f32]) -> Result<Self> {
        Ok(ConvWeight { buf: gpu.upload(name, v)?, f16: false, len: v.len() })
    }

    /// Rounded to f16 (exact when every value is an f16 value, see [`ConvWeight::fits_f16`]).
    pub fn f16(gpu: &Gpu, name: &str, v: &[f32]) -> Result<Self> {
        let words = super::le_words(&crate::gguf::encode(v, crate::gguf::TensorType::F16)?);
        Ok(ConvWeight { buf: gpu.upload(name, &words)?, f16: true, len: v.len() })
    }

    /// Every value survives f16 exactly (weights of an f16 pack or checkpoint).
    pub fn fits_f16(v: &[f32]) -> bool {
        v.iter().all(|x| half::f16::from_f32(*x).to_f32() == *x)
    }

    /// f16 when that loses nothing, else f32.
    pub fn upload(gpu: &Gpu, name: &str, v: &[f32]) -> Result<Self> {
        if Self::fits_f16(v) { Self::f16(gpu, name, v) } else { Self::f32(gpu, name, v) }
    }

    /// Bytes on the GPU.
    pub fn bytes(&self) -> usize {
        self.buf.len * 4
    }
}

/// Which entry point of `conv2d.wgsl` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKernel {
    /// Input tile and weights through workgroup memory (`main`): real GPUs.
    Tiled,
    /// No workgroup memory, no barrier (`main_direct`): software adapters.
    Direct,
}

/// out (B, cout, h, w) = act(conv(pre(x)) + bias + res); x (B, cin, h >> up, w >> up), weight
/// (cout, cin, k, k), bias (cout), res (B, cout, h, w). The barrier-free entry on software
/// adapters ([`Gpu::software`]), the tiled one elsewhere.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(gpu: &Gpu, label: &str, s: &ConvShape, x: &GpuBuf, weight: &ConvWeight, bias: Option<&GpuBuf>, res: Option<&GpuBuf>, out: &GpuBuf) -> Result<Dispatch> {
    let kind = if gpu.software { ConvKernel::Direct } else { ConvKernel::Tiled };
    conv2d_with(gpu, label, s, x, weight, bias, res, out, kind)
}

/// [`conv2d`] with the entry point chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_with(
    gpu: &Gpu,
    label: &str,
    s: &ConvShape,
    x: &GpuBuf,
    weight: &ConvWeight,
    bias: Option<&GpuBuf>,
    res: Option<&GpuBuf>,
    out: &GpuBuf,
    kind: ConvKernel,
) -> Result<Dispatch> {
    if s.k != 1 && s.k != 3 {
        return bad(label, format!("kernel side {} (1 or 3 supported)", s.k));
    }
    if s.upsample && (!s.h.is_multiple_of(2) || !s.w.is_multiple_of(2)) {
        return bad(label, format!("an upsampled output must have even sides, got {}x{}", s.h, s.w));
    }
    let up = usize::from(s.upsample);
    let n_in = elems(label, "input (B, cin, h, w)", &[s.batch, s.cin, s.h >> up, s.w >> up])?;
    let n_out = elems(label, "output (B, cout, h, w)", &[s.batch, s.cout, s.h, s.w])?;
    need(&format!("{label} input"), x, n_in)?;
    let n_w = elems(label, "weight", &[s.cout, s.cin, s.k, s.k])?;
    if weight.len != n_w {
        return bad(label, format!("weight of {} values for (cout, cin, k, k) = ({}, {}, {k}, {k})", weight.len, s.cout, s.cin, k = s.k));
    }
    need(&format!("{label} weight"), &weight.buf, if weight.f16 { n_w.div_ceil(2) } else { n_w })?;
    need(&format!("{label} output"), out, n_out)?;
    let dummy;
    let dummy_ref = match (bias, res) {
        (Some(_), Some(_)) => None,
        _ => {
            dummy = gpu.zeros("unused", 1)?;
            Some(&dummy)
        }
    };
    if let Some(b) = bias {
        need(&format!("{label} bias"), b, s.cout)?;
    }
    if let Some(r) = res {
        need(&format!("{label} residual"), r, n_out)?;
    }
    let mut inputs = vec![("input", x), ("weight", &weight.buf)];
    inputs.extend(bias.map(|b| ("bias", b)));
    inputs.extend(res.map(|r| ("residual", r)));
    not_aliased(label, out, &inputs)?;
    let nob = s.cout.div_ceil(CONV_OCB);
    let gz = s.batch * nob;
    let (gx, gy) = (s.w.div_ceil(CONV_TILE), s.h.div_ceil(CONV_TILE));
    if gz > 65535 || gx > 65535 || gy > 65535 {
        return bad(label, format!("{}x{} output, batch {} x {nob} channel blocks: too many workgroups", s.h, s.w, s.batch));
    }
    let constants = [("WF16", f64::from(u8::from(weight.f16)))];
    let kernel = match kind {
        ConvKernel::Tiled => gpu.kernel("conv2d", CONV2D_WGSL, &constants)?,
        ConvKernel::Direct => gpu.kernel_entry("conv2d_direct", CONV2D_WGSL, "main_direct", &constants)?,
    };
    let params = [
        s.batch,
        s.cin,
        s.cout,
        s.h,
        s.w,
        s.k,
        up,
        usize::from(bias.is_some()),
        usize::from(res.is_some()),
        s.act.code() as usize,
        usize::from(s.clamp_input),
    ]
    .map(|v| v as u32);
    let (b, r) = (bias.or(dummy_ref).unwrap_or(x), res.or(dummy_ref).unwrap_or(x));
    gpu.dispatch(&kernel, label, &params, &[x, &weight.buf, b, r, out], [gx as u32, gy as u32, gz as u32])
}

/// out (B, C, hw) = act(GroupNorm(groups, eps)(x) * gamma + beta); `act` None or Silu.
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    gpu: &Gpu,
    label: &str,
    x: &GpuBuf,
    batch: usize,
    c: usize,
    groups: usize,
    hw: usize,
    eps: f32,
    act: Act,
    gamma: &GpuBuf,
    beta: &GpuBuf,
    out: &GpuBuf,
) -> Result<Dispatch> {
    if groups == 0 || !c.is_multiple_of(groups) {
        return bad(label, format!("{c} channels in {groups} groups"));
    }
    if act == Act::Relu {
        return bad(label, "group norm takes no ReLU epilogue");
    }
    let n = elems(label, "input (B, C, HW)", &[batch, c, hw])?;
    need(&format!("{label} input"), x, n)?;
    need(&format!("{label} output"), out, n)?;
    need(&format!("{label} gamma"), gamma, c)?;
    need(&format!("{label} beta"), beta, c)?;
    not_aliased(label, out, &[("input", x), ("gamma", gamma), ("beta", beta)])?;
    let kernel = gpu.kernel("group_norm", GROUP_NORM_WGSL, &[])?;
    let params = [batch as u32, c as u32, groups as u32, hw as u32, eps.to_bits(), act.code()];
    gpu.dispatch(&kernel, label, &params, &[x, gamma, beta, out], groups_1d(batch * groups, 1))
}

/// out (B, C, T) = single-head attention of channel-major q, k, v (B, C, T), scale 1/sqrt(C);
/// `scores` (T, T) is scratch, reused by each batch element in turn. Three dispatches (scores,
/// softmax, apply) per batch element.
#[allow(clippy::too_many_arguments)]
pub fn vae_attention(
    gpu: &Gpu,
    label: &str,
    q: &GpuBuf,
    k: &GpuBuf,
    v: &GpuBuf,
    batch: usize,
    c: usize,
    t: usize,
    scores: &GpuBuf,
    out: &GpuBuf,
) -> Result<Vec<Dispatch>> {
    let n = elems(label, "q / k / v (B, C, T)", &[batch, c, t])?;
    let ns = elems(label, "scores (T, T)", &[t, t])?;
    for (name, b) in [("q", q), ("k", k), ("v", v), ("output", out)] {
        need(&format!("{label} {name}"), b, n)?;
    }
    need(&format!("{label} scores"), scores, ns)?;
    not_aliased(label, out, &[("q", q), ("k", k), ("v", v), ("scores", scores)])?;
    not_aliased(label, scores, &[("q", q), ("k", k), ("v", v)])?;
    // One batch element at a time through one (T, T) score buffer: the probabilities of a
    // 512 px image are 64 MB, and a batch of them would pass the usual 128 MB binding limit.
    let mut out_d = Vec::with_capacity(3 * batch);
    for b0 in 0..batch {
        let params = [1, c as u32, t as u32, (1.0 / (c as f32).sqrt()).to_bits(), b0 as u32];
        for (stage, count) in [(0.0, ns), (1.0, t), (2.0, c * t)] {
            if count.div_ceil(ATT_WG).div_ceil(65535) > 65535 {
                return bad(label, format!("{count} invocations are too many to dispatch"));
            }
            let kernel = gpu.kernel("vae_attention", VAE_ATTENTION_WGSL, &[("STAGE", stage)])?;
            out_d.push(gpu.dispatch(&kernel, &format!("{label}.{b0}.{stage}"), &params, &[q, k, v, scores, out], groups_1d(count, ATT_WG))?);
        }
    }
    Ok(out_d)
}
