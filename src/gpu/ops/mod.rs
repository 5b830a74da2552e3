//! Op constructors: each checks shapes against the buffers it is given and records one
//! [`Dispatch`]. Shapes are row-major; "rows" are tokens of all batch elements.

use crate::error::{Error, Result};
use crate::gguf::TensorType;
use crate::gpu::{Dispatch, Gpu, GpuBuf};

pub mod attention;
pub mod conv;
pub mod tokens;

/// The linear kernel in f32 arithmetic: a precision prelude + the shared body (see the header
/// of `shaders/linear.wgsl`).
pub const LINEAR_WGSL: &str = concat!(
    include_str!("../../../shaders/linear_f32.wgsl"),
    include_str!("../../../shaders/linear_common.wgsl"),
    include_str!("../../../shaders/linear.wgsl")
);
/// The linear kernel in f16 arithmetic (f16 tiles and products, f32 sums); needs shader-f16.
pub const LINEAR_F16_WGSL: &str = concat!(
    include_str!("../../../shaders/linear_f16.wgsl"),
    include_str!("../../../shaders/linear_common.wgsl"),
    include_str!("../../../shaders/linear.wgsl")
);
/// The register-blocked linear kernel for software adapters (f32 arithmetic, K % 4 == 0).
pub const LINEAR_SOFT_WGSL: &str = concat!(include_str!("../../../shaders/linear_common.wgsl"), include_str!("../../../shaders/linear_soft.wgsl"));
pub const LAYERNORM_WGSL: &str = include_str!("../../../shaders/layernorm_modulate.wgsl");

/// An op constructor's error: `label: msg`.
pub(crate) fn bad<T>(label: &str, msg: impl std::fmt::Display) -> Result<T> {
    Err(Error::Gpu(format!("{label}: {msg}")))
}

/// The product of `dims`, failing when it is zero or does not fit the shaders' u32 indices.
pub(crate) fn elems(label: &str, what: &str, dims: &[usize]) -> Result<usize> {
    let mut total = 1usize;
    for &d in dims {
        total = match total.checked_mul(d) {
            Some(t) => t,
            None => return bad(label, format!("{what} {dims:?} overflows")),
        };
    }
    if total == 0 {
        return bad(label, format!("{what} {dims:?} is empty"));
    }
    if total >= u32::MAX as usize {
        return bad(label, format!("{what} {dims:?} has {total} elements: indices overflow 32 bits"));
    }
    Ok(total)
}

/// Fail with a clear message when a buffer is smaller than an op needs.
pub fn need(what: &str, buf: &GpuBuf, elems: usize) -> Result<()> {
    if buf.len < elems {
        return Err(Error::Gpu(format!("{what}: buffer holds {} elements, the op needs {elems}", buf.len)));
    }
    Ok(())
}

/// Workgroups for `n` items of `per` each, split over x and y when x would exceed 65535.
pub fn groups_1d(n: usize, per: usize) -> [u32; 3] {
    let g = n.div_ceil(per).max(1);
    if g <= 65535 {
        [g as u32, 1, 1]
    } else {
        [65535, g.div_ceil(65535) as u32, 1]
    }
}

/// A linear layer's weights on the GPU: W (N, K) in one of four formats, bias (N).
pub struct GpuLinear {
    pub name: String,
    pub w: GpuBuf,
    /// Block scales (N * K / 32) for Q8_0 / Q4_0; a 1-element dummy otherwise.
    pub scales: GpuBuf,
    pub bias: GpuBuf,
    pub format: TensorType,
    pub n_out: usize,
    pub k_in: usize,
}

/// A linear layer's (N, K) weight on the GPU in its stored format.
#[derive(Clone)]
pub struct GpuWeight {
    pub w: GpuBuf,
    /// Block scales (N * K / 32) for Q8_0 / Q4_0; a 1-element dummy otherwise.
    pub scales: GpuBuf,
    pub format: TensorType,
}

impl GpuWeight {
    /// Upload `elems` weights encoded as in a GGUF pack (`bytes` in `ty`'s layout).
    /// GGUF blocks are 34 (Q8_0) or 18 (Q4_0) bytes, not 4-byte aligned: they are repacked into
    /// an f32 scale array and u32-aligned quant words that WGSL reads directly.
    pub fn upload(gpu: &Gpu, name: &str, ty: TensorType, bytes: &[u8], elems: usize) -> Result<Self> {
        if bytes.len() != ty.bytes_for(elems)? {
            return Err(Error::Gpu(format!("{name}: {} bytes for {elems} {} weights", bytes.len(), ty.name())));
        }
        let (mut words, scales): (Vec<u32>, _) = match ty {
            TensorType::F32 | TensorType::F16 => (le_words(bytes), gpu.zeros("no scales", 1)?),
            TensorType::Q8_0 | TensorType::Q4_0 => {
                let block = ty.block_bytes();
                let quant = block - 2;
                let nblocks = elems / 32;
                let mut words = Vec::with_capacity(nblocks * quant / 4);
                let mut sc = Vec::with_capacity(nblocks);
                for blk in bytes.chunks_exact(block) {
                    sc.push(half::f16::from_le_bytes([blk[0], blk[1]]).to_f32());
                    for q in blk[2..].chunks_exact(4) {
                        words.push(u32::from_le_bytes([q[0], q[1], q[2], q[3]]));
                    }
                }
                (words, gpu.upload(&format!("{name}.scales"), &sc)?)
            }
        };
        // Whole 16-byte vectors: linear_soft.wgsl reads W as array<vec4<u32>>, and a partial
        // last vector would be out of its binding's bounds.
        words.resize(words.len().next_multiple_of(4), 0);
        let w = gpu.upload(name, &words)?;
        Ok(GpuWeight { w, scales, format: ty })
    }
}

impl GpuLinear {
    /// From weights encoded as in a GGUF pack (`bytes` in `ty`'s layout, PyTorch (N, K) order).
    pub fn from_encoded(gpu: &Gpu, name: &str, ty: TensorType, bytes: &[u8], n_out: usize, k_in: usize, bias: &[f32]) -> Result<Self> {
        let weight = GpuWeight::upload(gpu, name, ty, bytes, n_out * k_in)?;
        Self::from_weight(gpu, name, weight, n_out, k_in, bias)
    }

    /// From a weight already on the GPU (a streamed pack) and its bias.
    pub fn from_weight(gpu: &Gpu, name: &str, weight: GpuWeight, n_out: usize, k_in: usize, bias: &[f32]) -> Result<Self> {
        if bias.len() != n_out {
            return Err(Error::Gpu(format!("{name}: {} biases for ({n_out}, {k_in})", bias.len())));
        }
        let GpuWeight { w, scales, format } = weight;
        Ok(GpuLinear { name: name.to_string(), w, scales, bias: gpu.upload(&format!("{name}.bias"), bias)?, format, n_out, k_in })
    }
}

/// Bytes as little-endian u32 words, the last one zero-padded.
fn le_words(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks(4).map(|c| {
        let mut a = [0u8; 4];
        a[..c.len()].copy_from_slice(c);
        u32::from_le_bytes(a)
    }).collect()
}

/// What a linear layer does with its result v = x W^T + b.
pub enum Epilogue<'a> {
    /// y = v
    Store,
    /// y = gelu_tanh(v)
    Gelu,
    /// y = silu(v)
    Silu,
    /// y += gate[b] * v, gate = mods[b, offset .. offset + N] with rows of `stride` floats and
    /// `tokens` rows per batch element (the adaLN-Zero gated residual, in place).
    GatedResidual { mods: &'a GpuBuf, tokens: usize, stride: usize, offset: usize },
    /// y = v + table[row % tokens] (the position table after the patch embedding).
    AddRows { table: &'a GpuBuf, tokens: usize },
    /// y += v
    Accumulate,
}

impl Epilogue<'_> {
    /// The `EPI` specialisation constant of `shaders/linear_common.wgsl` selecting this epilogue.
    fn code(&self) -> u32 {
        match self {
            Epilogue::Store => 0,
            Epilogue::Gelu => 1,
            Epilogue::GatedResidual { .. } => 2,
            Epilogue::AddRows { .. } => 3,
            Epilogue::Accumulate => 4,
            Epilogue::Silu => 5,
        }
    }
}

/// Arithmetic precision of the linear kernels. Storage (activations, biases, epilogues) is f32
/// either way; weights stay in their stored format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 tiles and fma: every adapter, the reference path.
    #[default]
    F32,
    /// x and W tiles in f16 workgroup memory, products in f16, sums in f32
    /// (`shaders/linear_f16.wgsl`). Needs a device with shader-f16 ([`Gpu::has_f16`]).
    F16,
}

impl Precision {
    /// Fail clearly when `gpu` cannot run this precision (F16 without shader-f16); `what`
    /// names the caller in the message.
    pub fn check(self, gpu: &Gpu, what: &str) -> Result<()> {
        match self {
            Precision::F16 if !gpu.has_f16 => Err(Error::Gpu(format!(
                "{what}: f16 arithmetic needs a device with shader-f16, and {} has none (use Precision::F32)",
                gpu.describe()
            ))),
            _ => Ok(()),
        }
    }
}

/// y (rows, N) = epilogue(x (rows, K) W^T + b), in f32 arithmetic.
pub fn linear(gpu: &Gpu, label: &str, lin: &GpuLinear, x: &GpuBuf, rows: usize, y: &GpuBuf, epi: Epilogue) -> Result<Dispatch> {
    linear_with(gpu, label, lin, x, rows, y, epi, Precision::F32)
}

/// [`linear`] in the arithmetic `precision`; F16 errors on a device without shader-f16.
#[allow(clippy::too_many_arguments)]
pub fn linear_with(gpu: &Gpu, label: &str, lin: &GpuLinear, x: &GpuBuf, rows: usize, y: &GpuBuf, epi: Epilogue, precision: Precision) -> Result<Dispatch> {
    precision.check(gpu, label)?;
    let (n, k) = (lin.n_out, lin.k_in);
    need(&format!("{label} input"), x, rows * k)?;
    need(&format!("{label} output"), y, rows * n)?;
    let dummy;
    let (t, stride, offset, aux) = match epi {
        Epilogue::Store | Epilogue::Gelu | Epilogue::Silu | Epilogue::Accumulate => (1usize, 0usize, 0usize, None),
        Epilogue::GatedResidual { mods, tokens, stride, offset } => {
            if tokens == 0 || !rows.is_multiple_of(tokens) || offset + n > stride {
                return Err(Error::Gpu(format!("{label}: gate slice {offset}+{n} of {stride} over {tokens}-token rows")));
            }
            need(&format!("{label} gate"), mods, rows / tokens * stride)?;
            (tokens, stride, offset, Some(mods))
        }
        Epilogue::AddRows { table, tokens } => {
            need(&format!("{label} row table"), table, tokens * n)?;
            (tokens, 0, 0, Some(table))
        }
    };
    let aux = match aux {
        Some(a) => a,
        None => {
            dummy = gpu.zeros("no aux", 1)?;
            &dummy
        }
    };
    let fmt = match lin.format {
        TensorType::F32 => 0.0,
        TensorType::F16 => 1.0,
        TensorType::Q8_0 => 2.0,
        TensorType::Q4_0 => 3.0,
    };
    let (name, source) = match precision {
        Precision::F32 => ("linear", LINEAR_WGSL),
        Precision::F16 => ("linear_f16", LINEAR_F16_WGSL),
    };
    let constants = [("WFMT", fmt), ("EPI", epi.code() as f64)];
    let params = [rows as u32, n as u32, k as u32, t as u32, stride as u32, offset as u32];
    // Software adapters (lavapipe, SwiftShader) run barrier-free kernels: the register-blocked
    // one (linear_soft.wgsl) where K % 4 == 0 in f32 arithmetic, 1.6-2.8x the tiled kernel on
    // lavapipe at every measured shape (docs/BENCHMARKS.md); otherwise the direct entry for
    // matrix-vector shapes (adaLN, timestep MLP: 85 -> 2.5 ms), the tiled one above 16 rows.
    let (kernel, groups) = if gpu.software && k.is_multiple_of(4) && precision == Precision::F32 {
        // 4 x 4 outputs per invocation, 64 invocations per workgroup.
        (gpu.kernel("linear_soft", LINEAR_SOFT_WGSL, &constants)?, [n.div_ceil(256) as u32, rows.div_ceil(4) as u32, 1])
    } else if gpu.software && rows <= 16 {
        // 4 outputs of one row per invocation, 64 invocations per workgroup.
        (gpu.kernel_entry(name, source, "main_direct", &constants)?, [n.div_ceil(256) as u32, rows as u32, 1])
    } else {
        (gpu.kernel(name, source, &constants)?, [n.div_ceil(64) as u32, rows.div_ceil(64) as u32, 1])
    };
    gpu.dispatch(&kernel, label, &params, &[x, &lin.w, &lin.scales, &lin.bias, aux, y], groups)
}

/// h (rows, C) = LN(x) * (1 + scale[b]) + shift[b], shift/scale at `shift_off` / `scale_off`
/// in rows of `stride` floats of `mods` (B, stride), `tokens` rows per batch element.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_modulate(
    gpu: &Gpu,
    label: &str,
    x: &GpuBuf,
    rows: usize,
    c: usize,
    tokens: usize,
    mods: &GpuBuf,
    stride: usize,
    shift_off: usize,
    scale_off: usize,
    h: &GpuBuf,
) -> Result<Dispatch> {
    need(&format!("{label} input"), x, rows * c)?;
    need(&format!("{label} output"), h, rows * c)?;
    if tokens == 0 || !rows.is_multiple_of(tokens) || shift_off + c > stride || scale_off + c > stride {
        return Err(Error::Gpu(format!("{label}: bad modulation slices")));
    }
    need(&format!("{label} modulation"), mods, rows / tokens * stride)?;
    let kernel = gpu.kernel("layernorm_modulate", LAYERNORM_WGSL, &[])?;
    let params = [rows as u32, c as u32, tokens as u32, stride as u32, shift_off as u32, scale_off as u32];
    gpu.dispatch(&kernel, label, &params, &[x, mods, h], groups_1d(rows, 1))
}
