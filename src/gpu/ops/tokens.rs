//! Token-layout and elementwise ops around the transformer blocks, and the fused sampler step.
//!
//! - [`patchify`] / [`unpatchify`]: images <-> patch tokens (the layouts of `model::forward_traced`
//!   and `model::unpatchify`).
//! - [`condition`]: SiLU(t_emb + label embedding), the adaLN input.
//! - [`mean_tokens`] + [`residual_broadcast`]: the Poolingformer's global mean of V and its gated
//!   residual broadcast over every token.
//! - [`adaptive_avg_pool`] / [`upsample_nearest`]: the SDTM's dense <-> sparse token grids with
//!   PyTorch's AdaptiveAvgPool2d and 'nearest' semantics (`model::adaptive_pool_window`,
//!   `model::nearest_source`).
//! - [`pooled_residual`]: the training-free pooled middle's update, nearest-upsampled back onto
//!   the dense tokens (`config::PooledMiddle`).
//! - [`transpose_frames`]: a video model's frames <-> token positions swap around temporal
//!   blocks (with `temp_embed` on the way in).
//! - [`sampler_step`]: CFG combine + DDPM / DDIM update in one pass ([`SamplerStepParams`] holds
//!   the step's coefficients, rounded to f32 as `Diffusion::step` rounds them).
//!
//! Every op checks its shapes against the buffers it is given and returns `Err` (never panics).

use std::rc::Rc;

use super::{bad, elems, groups_1d, need};
use crate::diffusion::{Diffusion, Guidance, SamplerKind, VarianceType};
use crate::dpm_solver::{DpmStep, DpmStepF32};
use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, GpuBuf};

pub const PATCHIFY_WGSL: &str = include_str!("../../../shaders/patchify.wgsl");
pub const UNPATCHIFY_WGSL: &str = include_str!("../../../shaders/unpatchify.wgsl");
pub const CONDITION_WGSL: &str = include_str!("../../../shaders/condition.wgsl");
pub const MEAN_TOKENS_WGSL: &str = include_str!("../../../shaders/mean_tokens.wgsl");
pub const RESIDUAL_BROADCAST_WGSL: &str = include_str!("../../../shaders/residual_broadcast.wgsl");
pub const ADAPTIVE_POOL_WGSL: &str = include_str!("../../../shaders/adaptive_pool.wgsl");
pub const UPSAMPLE_NEAREST_WGSL: &str = include_str!("../../../shaders/upsample_nearest.wgsl");
pub const POOLED_RESIDUAL_WGSL: &str = include_str!("../../../shaders/pooled_residual.wgsl");
pub const TRANSPOSE_FRAMES_WGSL: &str = include_str!("../../../shaders/transpose_frames.wgsl");
pub const SAMPLER_STEP_WGSL: &str = include_str!("../../../shaders/sampler_step.wgsl");

/// Invocations per workgroup of the elementwise kernels (their `WG`).
const WG: usize = 256;
/// Channels per workgroup of `mean_tokens.wgsl` (its `CW`).
const MEAN_CHANNELS: usize = 64;

/// Workgroups for `total` invocations of `per`, failing past 65535 x 65535 workgroups.
fn groups(label: &str, total: usize, per: usize) -> Result<[u32; 3]> {
    if total.div_ceil(per).div_ceil(65535) > 65535 {
        return bad(label, format!("{total} invocations are too many to dispatch"));
    }
    Ok(groups_1d(total, per))
}

/// A written buffer may not also be bound as another input (a usage conflict in WebGPU).
fn not_aliased(label: &str, out: (&str, &GpuBuf), inputs: &[(&str, &GpuBuf)]) -> Result<()> {
    for (name, b) in inputs {
        if Rc::ptr_eq(&b.buf, &out.1.buf) {
            return bad(label, format!("the {} buffer is also the {name} buffer", out.0));
        }
    }
    Ok(())
}

/// out (B, N, cin*p*p) = the patches of images x (B, cin, I, I), N = n*n, n = I / p:
/// out[b, hh*n + ww, ci*p*p + i*p + j] = x[b, ci, hh*p + i, ww*p + j].
#[allow(clippy::too_many_arguments)]
pub fn patchify(gpu: &Gpu, label: &str, x: &GpuBuf, batch: usize, cin: usize, input_size: usize, patch: usize, out: &GpuBuf) -> Result<Dispatch> {
    if patch == 0 || !input_size.is_multiple_of(patch) {
        return bad(label, format!("image side {input_size} is not a multiple of patch size {patch}"));
    }
    let n = input_size / patch;
    let total = elems(label, "images (B, cin, I, I)", &[batch, cin, input_size, input_size])?;
    need(&format!("{label} images"), x, total)?;
    need(&format!("{label} tokens"), out, total)?;
    not_aliased(label, ("output", out), &[("input", x)])?;
    let kernel = gpu.kernel("patchify", PATCHIFY_WGSL, &[])?;
    let params = [batch, cin, input_size, patch, n, total].map(|v| v as u32);
    gpu.dispatch(&kernel, label, &params, &[x, out], groups(label, total, WG)?)
}

/// out (B, c, n*p, n*p) = images of tokens x (B, n*n, p*p*c), token (h, w) holding a (p, p, c)
/// patch row-major: out[b, ch, h*p + i, w*p + j] = x[b, h*n + w, (i*p + j)*c + ch].
#[allow(clippy::too_many_arguments)]
pub fn unpatchify(gpu: &Gpu, label: &str, x: &GpuBuf, batch: usize, n: usize, patch: usize, c: usize, out: &GpuBuf) -> Result<Dispatch> {
    let total = elems(label, "tokens (B, n, n, p, p, c)", &[batch, n, n, patch, patch, c])?;
    need(&format!("{label} tokens"), x, total)?;
    need(&format!("{label} images"), out, total)?;
    not_aliased(label, ("output", out), &[("input", x)])?;
    let kernel = gpu.kernel("unpatchify", UNPATCHIFY_WGSL, &[])?;
    let params = [batch, n, patch, c, total].map(|v| v as u32);
    gpu.dispatch(&kernel, label, &params, &[x, out], groups(label, total, WG)?)
}

/// out (B, C) = silu(t_emb (B, C) + table[labels[b]]), table (rows, C), labels (B) as u32.
/// Labels must be validated on the host (`Config::check_labels`); the shader clamps the index to
/// rows - 1 so a bad label cannot read out of bounds.
#[allow(clippy::too_many_arguments)]
pub fn condition(
    gpu: &Gpu,
    label: &str,
    t_emb: &GpuBuf,
    table: &GpuBuf,
    labels: &GpuBuf,
    batch: usize,
    c: usize,
    rows: usize,
    out: &GpuBuf,
) -> Result<Dispatch> {
    if rows == 0 {
        return bad(label, "the label table has no rows");
    }
    let total = elems(label, "conditioning (B, C)", &[batch, c])?;
    elems(label, "label table (rows, C)", &[rows, c])?;
    need(&format!("{label} timestep embedding"), t_emb, total)?;
    need(&format!("{label} label table"), table, rows * c)?;
    need(&format!("{label} labels"), labels, batch)?;
    need(&format!("{label} output"), out, total)?;
    not_aliased(label, ("output", out), &[("timestep embedding", t_emb), ("label table", table), ("labels", labels)])?;
    let kernel = gpu.kernel("condition", CONDITION_WGSL, &[])?;
    let params = [batch, c, rows].map(|v| v as u32);
    gpu.dispatch(&kernel, label, &params, &[t_emb, table, labels, out], groups(label, total, WG)?)
}

/// out (B, C) = mean over tokens of x (B, T, C) (summed in f32, then divided by T).
pub fn mean_tokens(gpu: &Gpu, label: &str, x: &GpuBuf, batch: usize, tokens: usize, c: usize, out: &GpuBuf) -> Result<Dispatch> {
    let total = elems(label, "input (B, T, C)", &[batch, tokens, c])?;
    need(&format!("{label} input"), x, total)?;
    need(&format!("{label} output"), out, batch * c)?;
    not_aliased(label, ("output", out), &[("input", x)])?;
    let chunks = c.div_ceil(MEAN_CHANNELS);
    let kernel = gpu.kernel("mean_tokens", MEAN_TOKENS_WGSL, &[])?;
    let params = [batch, tokens, c, chunks].map(|v| v as u32);
    gpu.dispatch(&kernel, label, &params, &[x, out], groups(label, batch * chunks, 1)?)
}

/// x[b, t, :] += mods[b / G, gate_off .. gate_off + C] * a[b, :], in place: x (B, T, C) of B
/// sequences, mods (B / G, stride), a (B, C), G = `per_mods` sequences sharing a modulation row
/// (1 for images, the F frames of a clip in a video model): the Poolingformer's gated residual of
/// the pooled attention output.
#[allow(clippy::too_many_arguments)]
pub fn residual_broadcast(
    gpu: &Gpu,
    label: &str,
    x: &GpuBuf,
    batch: usize,
    tokens: usize,
    c: usize,
    mods: &GpuBuf,
    stride: usize,
    gate_off: usize,
    a: &GpuBuf,
    per_mods: usize,
) -> Result<Dispatch> {
    let total = elems(label, "residual (B, T, C)", &[batch, tokens, c])?;
    if gate_off.checked_add(c).is_none_or(|end| end > stride) {
        return bad(label, format!("gate slice {gate_off}..{gate_off}+{c} does not fit rows of {stride} floats"));
    }
    if per_mods == 0 || !batch.is_multiple_of(per_mods) {
        return bad(label, format!("{batch} sequences do not split into modulation rows of {per_mods}"));
    }
    elems(label, "modulation (B / G, stride)", &[batch / per_mods, stride])?;
    need(&format!("{label} residual"), x, total)?;
    need(&format!("{label} modulation"), mods, batch / per_mods * stride)?;
    need(&format!("{label} broadcast vector"), a, batch * c)?;
    not_aliased(label, ("residual", x), &[("modulation", mods), ("broadcast vector", a)])?;
    let kernel = gpu.kernel("residual_broadcast", RESIDUAL_BROADCAST_WGSL, &[])?;
    let params = [batch, tokens, c, stride, gate_off, per_mods].map(|v| v as u32);
    gpu.dispatch(&kernel, label, &params, &[x, mods, a], groups(label, total, WG)?)
}

/// out (B, Y, X, C) = x (B, X, Y, C) with its two middle axes swapped, plus `table` (X, C) row
/// x when given: Latte's `(b f) t d -> (b t) f d` into a temporal block (X = F frames, Y = T
/// positions, `temp_embed` added before the first one) and `(b t) f d -> (b f) t d` out of it.
#[allow(clippy::too_many_arguments)]
pub fn transpose_frames(gpu: &Gpu, label: &str, x: &GpuBuf, batch: usize, xs: usize, ys: usize, c: usize, table: Option<&GpuBuf>, out: &GpuBuf) -> Result<Dispatch> {
    let total = elems(label, "input (B, X, Y, C)", &[batch, xs, ys, c])?;
    need(&format!("{label} input"), x, total)?;
    need(&format!("{label} output"), out, total)?;
    if let Some(t) = table {
        need(&format!("{label} table"), t, xs * c)?;
        not_aliased(label, ("output", out), &[("input", x), ("table", t)])?;
    } else {
        not_aliased(label, ("output", out), &[("input", x)])?;
    }
    let kernel = gpu.kernel("transpose_frames", TRANSPOSE_FRAMES_WGSL, &[])?;
    let params = [batch, xs, ys, c, table.is_some() as usize].map(|v| v as u32);
    // Without a table the input is bound twice, read-only both times (the shader skips it).
    gpu.dispatch(&kernel, label, &params, &[x, table.unwrap_or(x), out], groups(label, total, WG)?)
}

/// A move of a batch of square token grids from one side to another: `batch` grids of
/// `from` x `from` tokens to `to` x `to` tokens of `channels` each (pooling n -> s, upsampling
/// s -> n), so the two sides cannot be swapped by argument order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resize {
    pub batch: usize,
    pub from: usize,
    pub to: usize,
    pub channels: usize,
}

/// out (B, s*s, C) = PyTorch AdaptiveAvgPool2d of the n x n token grid x (B, n*n, C) to s x s,
/// n = `r.from`, s = `r.to` (`grid::adaptive_avg_pool_matrix`; overlapping windows when s does
/// not divide n, s may exceed n).
pub fn adaptive_avg_pool(gpu: &Gpu, label: &str, x: &GpuBuf, r: Resize, out: &GpuBuf) -> Result<Dispatch> {
    let Resize { batch, from: n, to: s, channels: c } = r;
    let input = elems(label, "input (B, n, n, C)", &[batch, n, n, c])?;
    let total = elems(label, "output (B, s, s, C)", &[batch, s, s, c])?;
    // Window ends (oi + 1) * n + s - 1 are computed in u32.
    if (s + 1).checked_mul(n).and_then(|v| v.checked_add(s)).is_none_or(|v| v >= u32::MAX as usize) {
        return bad(label, format!("grids {n} -> {s} overflow 32-bit window arithmetic"));
    }
    need(&format!("{label} input"), x, input)?;
    need(&format!("{label} output"), out, total)?;
    not_aliased(label, ("output", out), &[("input", x)])?;
    let kernel = gpu.kernel("adaptive_pool", ADAPTIVE_POOL_WGSL, &[])?;
    let params = [batch, n, s, c].map(|v| v as u32);
    gpu.dispatch(&kernel, label, &params, &[x, out], groups(label, total, WG)?)
}

/// out (B, n*n, C) = PyTorch 'nearest' upsampling of the s x s token grid x (B, s*s, C) to n x n,
/// s = `r.from`, n = `r.to` (`grid::nearest_source` per axis; the identity when s == n).
pub fn upsample_nearest(gpu: &Gpu, label: &str, x: &GpuBuf, r: Resize, out: &GpuBuf) -> Result<Dispatch> {
    let Resize { batch, from: s, to: n, channels: c } = r;
    let input = elems(label, "input (B, s, s, C)", &[batch, s, s, c])?;
    let total = elems(label, "output (B, n, n, C)", &[batch, n, n, c])?;
    need(&format!("{label} input"), x, input)?;
    need(&format!("{label} output"), out, total)?;
    not_aliased(label, ("output", out), &[("input", x)])?;
    // The scale is rounded here: WGSL's f32 division is not correctly rounded.
    let scale = s as f32 / n as f32;
    let kernel = gpu.kernel("upsample_nearest", UPSAMPLE_NEAREST_WGSL, &[])?;
    let params = [batch as u32, s as u32, n as u32, c as u32, scale.to_bits()];
    gpu.dispatch(&kernel, label, &params, &[x, out], groups(label, total, WG)?)
}

/// h (B, n*n, C) += nearest-upsampled (x - base), x and base (B, s*s, C), s = `r.from`,
/// n = `r.to`: what the pooled middle blocks added to the pooled tokens, brought back to every
/// dense token of its cell (`config::PooledMiddle`; `grid::nearest_source` per axis).
pub fn pooled_residual(gpu: &Gpu, label: &str, h: &GpuBuf, x: &GpuBuf, base: &GpuBuf, r: Resize) -> Result<Dispatch> {
    let Resize { batch, from: s, to: n, channels: c } = r;
    let pooled = elems(label, "pooled (B, s, s, C)", &[batch, s, s, c])?;
    let total = elems(label, "dense (B, n, n, C)", &[batch, n, n, c])?;
    if s == 0 {
        return bad(label, "pooled grid side 0");
    }
    need(&format!("{label} dense"), h, total)?;
    need(&format!("{label} pooled"), x, pooled)?;
    need(&format!("{label} pooled base"), base, pooled)?;
    not_aliased(label, ("dense", h), &[("pooled", x), ("pooled base", base)])?;
    if Rc::ptr_eq(&x.buf, &base.buf) {
        return bad(label, "the pooled and pooled base buffers are the same buffer");
    }
    let scale = s as f32 / n as f32;
    let kernel = gpu.kernel("pooled_residual", POOLED_RESIDUAL_WGSL, &[])?;
    let params = [batch as u32, s as u32, n as u32, c as u32, scale.to_bits()];
    gpu.dispatch(&kernel, label, &params, &[h, x, base], groups(label, total, WG)?)
}

pub use crate::diffusion::StepCoefficients;


/// Everything [`sampler_step`] needs for one step.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerStepParams {
    /// Latent batch (the model batch is 2n when guided).
    pub n: usize,
    /// Latent channels C.
    pub channels: usize,
    /// Model output channels (2C with learned sigma).
    pub out_channels: usize,
    /// H * W.
    pub spatial: usize,
    /// The model output is the [cond; uncond] batch (2n rows), combined with `cfg_scale`.
    pub guided: bool,
    pub cfg_scale: f32,
    /// Output channels combined (3 in the official code, a documented quirk); clamped to
    /// `out_channels`.
    pub guided_channels: usize,
    /// DDPM with learned-range variance (v in output channels C .. 2C); else DiT's fixed large.
    pub learned_range: bool,
    /// DDIM instead of DDPM.
    pub ddim: bool,
    pub eta: f32,
    /// The step's coefficients, exactly as the CPU sampler uses them.
    pub k: StepCoefficients,
    /// False at the last step (i = 0): no noise is added.
    pub nonzero: bool,
    /// DPM-Solver++ instead of DDPM / DDIM: the step's scalars (`x' = a x + b m + c m_prev`
    /// with `m = sr x - srm1 eps`; `m_prev` is read from, then replaced in, the x0 buffer).
    pub dpm: Option<DpmStepF32>,
}

impl SamplerStepParams {
    /// The parameters of respaced step `i` of `d` for a latent (n, channels, H, W) with
    /// `spatial` = H * W, as `Sampler::sample` runs it (`guidance`: the model batch is
    /// [cond; uncond]; `out_channels` = 2C for [`VarianceType::LearnedRange`], else C).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        d: &Diffusion,
        i: usize,
        kind: SamplerKind,
        var: VarianceType,
        n: usize,
        channels: usize,
        spatial: usize,
        guidance: Option<Guidance>,
    ) -> Result<SamplerStepParams> {
        let k = d.coefficients(i)?;
        let learned = var == VarianceType::LearnedRange;
        let (ddim, eta) = match kind {
            SamplerKind::Ddpm => (false, 0.0),
            SamplerKind::Ddim { eta } => (true, eta as f32),
            SamplerKind::DpmSolverPp => return Err(crate::error::Error::InvalidArgument("DPM-Solver++ steps take SamplerStepParams::dpm_solver".into())),
        };
        Ok(SamplerStepParams {
            n,
            channels,
            out_channels: if learned { 2 * channels } else { channels },
            spatial,
            guided: guidance.is_some(),
            cfg_scale: guidance.map_or(1.0, |g| g.scale as f32),
            guided_channels: guidance.map_or(0, |g| g.guided_channels),
            learned_range: learned,
            ddim,
            eta,
            k,
            nonzero: i != 0,
            dpm: None,
        })
    }

    /// A DPM-Solver++ step (`dpm_solver::DpmSolverPp::steps[k]`) for a latent (n, channels,
    /// H, W); the model's output has `out_channels` (its first `channels` are epsilon).
    pub fn dpm_solver(step: &DpmStep, n: usize, channels: usize, out_channels: usize, spatial: usize, guidance: Option<Guidance>) -> SamplerStepParams {
        SamplerStepParams {
            n,
            channels,
            out_channels,
            spatial,
            guided: guidance.is_some(),
            cfg_scale: guidance.map_or(1.0, |g| g.scale as f32),
            guided_channels: guidance.map_or(0, |g| g.guided_channels),
            learned_range: false,
            ddim: false,
            eta: 0.0,
            k: StepCoefficients { sqrt_recip_ac: 0.0, sqrt_recipm1_ac: 0.0, coef1: 0.0, coef2: 0.0, min_log: 0.0, max_log: 0.0, fixed_log: 0.0, alpha_bar: 1.0, alpha_bar_prev: 1.0 },
            nonzero: false,
            dpm: Some(step.as_f32()),
        }
    }
}

/// One reverse step fused with classifier-free guidance: reads the raw model output (on the
/// [cond; uncond] batch when guided), combines it as `model::apply_cfg` does, applies
/// `Diffusion::step`'s DDPM / DDIM update to `x` (n, C, H, W) in place and writes the predicted
/// x0 to `x0_out`. `noise` (n, C, H, W) is read only where it is used (it must exist regardless).
pub fn sampler_step(gpu: &Gpu, label: &str, x: &GpuBuf, model_out: &GpuBuf, noise: &GpuBuf, x0_out: &GpuBuf, s: &SamplerStepParams) -> Result<Dispatch> {
    let total = elems(label, "latent (n, C, H*W)", &[s.n, s.channels, s.spatial])?;
    let min_out = if s.learned_range && !s.ddim { 2 * s.channels } else { s.channels };
    if s.out_channels < min_out {
        return bad(label, format!("{} model output channels for {} latent channels (need {min_out})", s.out_channels, s.channels));
    }
    let rows = if s.guided { 2 * s.n } else { s.n };
    let out_elems = elems(label, "model output (rows, C_out, H*W)", &[rows, s.out_channels, s.spatial])?;
    need(&format!("{label} latent"), x, total)?;
    need(&format!("{label} model output"), model_out, out_elems)?;
    need(&format!("{label} noise"), noise, total)?;
    need(&format!("{label} predicted x0"), x0_out, total)?;
    not_aliased(label, ("latent", x), &[("model output", model_out), ("noise", noise), ("predicted x0", x0_out)])?;
    not_aliased(label, ("predicted x0", x0_out), &[("model output", model_out), ("noise", noise)])?;

    // The shader's scalars by mode: (mode, sr, srm1, c1, c2, min_log, max_log, fixed_std, sigma,
    // sqrt_abp, dir, nonzero, c3).
    let scalars: (u32, [f32; 12]) = match s.dpm {
        // DPM-Solver++: m = sr x - srm1 eps, x' = a x + b m + c m_prev
        Some(d) => (2, [d.sr, d.srm1, d.b, d.a, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, d.c]),
        None => {
            // Per-step scalars in f32, exactly as Diffusion::step computes them.
            let (ab, abp) = (s.k.alpha_bar, s.k.alpha_bar_prev);
            let sigma = s.eta * ((1.0 - abp) / (1.0 - ab)).sqrt() * (1.0 - ab / abp).sqrt();
            let (sigma, sqrt_abp, dir) = if s.ddim { (sigma, abp.sqrt(), (1.0 - abp - sigma * sigma).sqrt()) } else { (0.0, 0.0, 0.0) };
            let fixed_std = (0.5 * s.k.fixed_log).exp();
            let nonzero = if s.nonzero { 1.0 } else { 0.0 };
            let k = &s.k;
            (u32::from(s.ddim), [k.sqrt_recip_ac, k.sqrt_recipm1_ac, k.coef1, k.coef2, k.min_log, k.max_log, fixed_std, sigma, sqrt_abp, dir, nonzero, 0.0])
        }
    };
    let learned = u32::from(s.learned_range && s.dpm.is_none());
    let head = [s.n as u32, s.channels as u32, s.out_channels as u32, s.spatial as u32, u32::from(s.guided), s.guided_channels.min(s.out_channels) as u32, learned, scalars.0, s.cfg_scale.to_bits()];
    let params: Vec<u32> = head.into_iter().chain(scalars.1.iter().map(|v| v.to_bits())).collect();
    let kernel = gpu.kernel("sampler_step", SAMPLER_STEP_WGSL, &[])?;
    gpu.dispatch(&kernel, label, &params, &[x, model_out, noise, x0_out], groups(label, total, WG)?)
}
