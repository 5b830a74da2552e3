//! Multi-head attention (self and cross) with an online softmax, reading q / k / v in place from
//! packed projection outputs, and the head-averaged probabilities for the token view.
//!
//! `shaders/attention.wgsl`: one workgroup per 64 query rows of one (batch, head), keys and values
//! in workgroup-memory tiles, running max / sum / accumulator per query row: no Tq x Tk matrix.
//! `shaders/attention_probs.wgsl`: probs (B, Tq, Tk) = mean over heads of softmax(q k^T / sqrt(d)),
//! used only when tracing.

use super::{groups_1d, need};
use crate::error::{Error, Result};
use crate::gpu::{Dispatch, Gpu, GpuBuf};

pub const ATTENTION_WGSL: &str = include_str!("../../../shaders/attention.wgsl");
pub const ATTENTION_PROBS_WGSL: &str = include_str!("../../../shaders/attention_probs.wgsl");

/// Largest head dim the kernels support (private arrays of this size).
pub const MAX_HEAD_DIM: usize = 128;
/// Query rows per workgroup of `attention.wgsl` (its `QB`).
const QUERY_BLOCK: usize = 64;
/// Invocations per workgroup of `attention_probs.wgsl` (its `WG`).
const PROBS_WG: usize = 64;

/// Where q, k and v live and how big the attention is.
///
/// q[b, i, c] = q_buf[(b * tq + i) * q_stride + q_off + c], k[b, j, c] = kv_buf[(b * tk + j) *
/// kv_stride + k_off + c], v likewise at `v_off`, for c < channels (head h = columns h*d .. (h+1)*d).
/// Self-attention on a packed qkv (B, T, 3C): q_stride = kv_stride = 3C, offsets 0, C, 2C, with the
/// same buffer as q and kv. Cross-attention: q (B, Tq, C) (stride C, offset 0) and kv (B, Tk, 2C)
/// (stride 2C, k_off 0, v_off C).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub batch: usize,
    pub tq: usize,
    pub tk: usize,
    pub channels: usize,
    pub heads: usize,
    pub q_stride: usize,
    pub q_off: usize,
    pub kv_stride: usize,
    pub k_off: usize,
    pub v_off: usize,
}

impl AttnShape {
    /// Self-attention over a packed qkv buffer (B, T, 3C) = [q | k | v].
    pub fn packed_qkv(batch: usize, tokens: usize, channels: usize, heads: usize) -> Self {
        AttnShape {
            batch,
            tq: tokens,
            tk: tokens,
            channels,
            heads,
            q_stride: 3 * channels,
            q_off: 0,
            kv_stride: 3 * channels,
            k_off: channels,
            v_off: 2 * channels,
        }
    }

    /// Cross-attention: q (B, Tq, C) contiguous, kv (B, Tk, 2C) = [k | v].
    pub fn cross(batch: usize, tq: usize, tk: usize, channels: usize, heads: usize) -> Self {
        AttnShape { batch, tq, tk, channels, heads, q_stride: channels, q_off: 0, kv_stride: 2 * channels, k_off: 0, v_off: channels }
    }

    /// Head dim d = C / H.
    pub fn head_dim(&self) -> usize {
        self.channels.checked_div(self.heads).unwrap_or(0)
    }

    /// Check the shape on its own (not against buffers). `need_v`: the v slice is read.
    fn validate(&self, label: &str, need_v: bool) -> Result<()> {
        let s = self;
        let bad = |msg: String| Err(Error::Gpu(format!("{label}: {msg} (shape {s:?})")));
        if s.batch == 0 || s.tq == 0 || s.tk == 0 {
            return bad(format!("empty attention: batch {}, {} queries, {} keys", s.batch, s.tq, s.tk));
        }
        if s.channels == 0 || s.heads == 0 || !s.channels.is_multiple_of(s.heads) {
            return bad(format!("{} channels do not split into {} heads", s.channels, s.heads));
        }
        let d = s.channels / s.heads;
        if d > MAX_HEAD_DIM {
            return bad(format!("head dim {d} is over the supported {MAX_HEAD_DIM}"));
        }
        if s.q_off + s.channels > s.q_stride {
            return bad(format!("q columns {}..{} do not fit rows of {} floats", s.q_off, s.q_off + s.channels, s.q_stride));
        }
        if s.k_off + s.channels > s.kv_stride {
            return bad(format!("k columns {}..{} do not fit rows of {} floats", s.k_off, s.k_off + s.channels, s.kv_stride));
        }
        if need_v && s.v_off + s.channels > s.kv_stride {
            return bad(format!("v columns {}..{} do not fit rows of {} floats", s.v_off, s.v_off + s.channels, s.kv_stride));
        }
        // Shader indices are u32.
        let limit = u32::MAX as usize;
        let big = [
            s.batch.checked_mul(s.tq).and_then(|r| r.checked_mul(s.q_stride.max(s.channels))),
            s.batch.checked_mul(s.tk).and_then(|r| r.checked_mul(s.kv_stride)),
            s.batch.checked_mul(s.tq).and_then(|r| r.checked_mul(s.tk)),
        ];
        if big.iter().any(|v| v.is_none_or(|v| v >= limit)) {
            return bad("indices overflow 32 bits".to_string());
        }
        Ok(())
    }

    /// Elements the q buffer must hold (up to the end of the last q slice).
    fn q_elems(&self) -> usize {
        (self.batch * self.tq - 1) * self.q_stride + self.q_off + self.channels
    }

    /// Elements the kv buffer must hold (up to the end of the last k / v slice).
    fn kv_elems(&self, need_v: bool) -> usize {
        let end = if need_v { self.k_off.max(self.v_off) } else { self.k_off } + self.channels;
        (self.batch * self.tk - 1) * self.kv_stride + end
    }

    fn params(&self, extra: &[u32]) -> Vec<u32> {
        let mut v = vec![
            self.batch as u32,
            self.tq as u32,
            self.tk as u32,
            self.channels as u32,
            self.heads as u32,
            self.q_stride as u32,
            self.q_off as u32,
            self.kv_stride as u32,
            self.k_off as u32,
            self.v_off as u32,
        ];
        v.extend_from_slice(extra);
        v
    }
}

fn check_not_aliased(label: &str, out: &GpuBuf, inputs: &[&GpuBuf]) -> Result<()> {
    if inputs.iter().any(|b| std::rc::Rc::ptr_eq(&b.buf, &out.buf)) {
        return Err(Error::Gpu(format!("{label}: the output buffer is also an input")));
    }
    Ok(())
}

/// out (B, Tq, C) = multi-head softmax(q k^T / sqrt(d)) v, q from `q`, k and v from `kv` (which
/// may be the same buffer as `q`), laid out as `shape` says.
pub fn attention(gpu: &Gpu, label: &str, shape: &AttnShape, q: &GpuBuf, kv: &GpuBuf, out: &GpuBuf) -> Result<Dispatch> {
    shape.validate(label, true)?;
    need(&format!("{label} q"), q, shape.q_elems())?;
    need(&format!("{label} kv"), kv, shape.kv_elems(true))?;
    need(&format!("{label} output"), out, shape.batch * shape.tq * shape.channels)?;
    check_not_aliased(label, out, &[q, kv])?;
    let d = shape.head_dim();
    let kernel = gpu.kernel("attention", ATTENTION_WGSL, &[("D", d as f64)])?;
    let qblocks = shape.tq.div_ceil(QUERY_BLOCK);
    let total = qblocks * shape.batch * shape.heads;
    if total.div_ceil(65535) > 65535 {
        return Err(Error::Gpu(format!("{label}: {total} workgroups are too many to dispatch")));
    }
    let params = shape.params(&[qblocks as u32]);
    gpu.dispatch(&kernel, label, &params, &[q, kv, out], groups_1d(total, 1))
}

/// probs (B, Tq, Tk) = mean over heads of softmax(q k^T / sqrt(d)) (the token view; v unused).
pub fn attention_probs(gpu: &Gpu, label: &str, shape: &AttnShape, q: &GpuBuf, kv: &GpuBuf, probs: &GpuBuf) -> Result<Dispatch> {
    shape.validate(label, false)?;
    need(&format!("{label} q"), q, shape.q_elems())?;
    need(&format!("{label} kv"), kv, shape.kv_elems(false))?;
    need(&format!("{label} probs"), probs, shape.batch * shape.tq * shape.tk)?;
    check_not_aliased(label, probs, &[q, kv])?;
    let d = shape.head_dim();
    let kernel = gpu.kernel("attention_probs", ATTENTION_PROBS_WGSL, &[("D", d as f64)])?;
    let rows = shape.batch * shape.tq;
    if rows.div_ceil(PROBS_WG).div_ceil(65535) > 65535 {
        return Err(Error::Gpu(format!("{label}: {rows} rows are too many to dispatch")));
    }
    gpu.dispatch(&kernel, label, &shape.params(&[]), &[q, kv, probs], groups_1d(rows, PROBS_WG))
}
