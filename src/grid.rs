//! Token-grid geometry every backend shares, as the official PyTorch code computes it: the
//! timestep features, PyTorch `AdaptiveAvgPool2d` windows, `nearest` upsampling and the 2-D
//! sin-cos position table.

use candle_core::{Device, Tensor};

use crate::config::FREQ_DIM;
use crate::error::Result;

/// DiT's sinusoidal timestep features (B, 256): [cos(t f_k), sin(t f_k)], f_k = 10000^(-k/128),
/// computed in f32 in the same order as the PyTorch reference.
pub fn timestep_embedding(t: &[f32]) -> Vec<f32> {
    let half = FREQ_DIM / 2;
    let neg_log = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half).map(|k| ((neg_log * k as f32) / half as f32).exp()).collect();
    let mut out = Vec::with_capacity(t.len() * FREQ_DIM);
    for &tv in t {
        out.extend(freqs.iter().map(|&f| (tv * f).cos()));
        out.extend(freqs.iter().map(|&f| (tv * f).sin()));
    }
    out
}

/// PyTorch AdaptiveAvgPool2d window [start, end) of output cell `i` (of `out`) over `inp` cells:
/// start = floor(i * inp / out), end = ceil((i + 1) * inp / out). Windows overlap when out does
/// not divide inp.
pub fn adaptive_pool_window(i: usize, inp: usize, out: usize) -> (usize, usize) {
    (i * inp / out, ((i + 1) * inp).div_ceil(out))
}

/// The (s*s, n*n) matrix of 2-D adaptive average pooling from the n x n to the s x s grid.
pub fn adaptive_avg_pool_matrix(n: usize, s: usize, dev: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; s * s * n * n];
    for oi in 0..s {
        let (r0, r1) = adaptive_pool_window(oi, n, s);
        for oj in 0..s {
            let (c0, c1) = adaptive_pool_window(oj, n, s);
            let w = 1.0 / ((r1 - r0) * (c1 - c0)) as f32;
            let row = (oi * s + oj) * n * n;
            for r in r0..r1 {
                for cc in c0..c1 {
                    m[row + r * n + cc] = w;
                }
            }
        }
    }
    Ok(Tensor::from_vec(m, (s * s, n * n), dev)?)
}

/// PyTorch 'nearest' source index of destination `dst` when resizing `inp` -> `out` cells:
/// floor(dst * (inp / out)) in f32, clamped.
pub fn nearest_source(dst: usize, inp: usize, out: usize) -> usize {
    if inp == out {
        return dst;
    }
    let scale = inp as f32 / out as f32;
    (((dst as f32) * scale).floor() as usize).min(inp - 1)
}

/// For each of the n*n dense tokens, the index of the s x s sparse token it copies (nearest).
pub fn nearest_upsample_index(s: usize, n: usize, dev: &Device) -> Result<Tensor> {
    let mut idx = Vec::with_capacity(n * n);
    for i in 0..n {
        let si = nearest_source(i, s, n);
        for j in 0..n {
            idx.push((si * s + nearest_source(j, s, n)) as u32);
        }
    }
    Ok(Tensor::from_vec(idx, n * n, dev)?)
}

/// MAE's 1-D sin-cos encoding of `pos` into `row` (its width D): D/2 sines then D/2 cosines of
/// pos / 10000^(k/(D/2)) (`get_1d_sincos_pos_embed_from_grid`, in f64 as numpy computes it).
fn sincos_row(pos: f64, row: &mut [f32]) {
    let half = row.len() / 2;
    for k in 0..half {
        let omega = 1.0 / 10000f64.powf(k as f64 / half as f64);
        let a = pos * omega;
        row[k] = a.sin() as f32;
        row[half + k] = a.cos() as f32;
    }
}

/// 2-D sin-cos position table (N, C) as MAE's get_2d_sincos_pos_embed: the first C/2 channels
/// encode the column index w, the last C/2 the row index h; each half is [sin, cos].
pub fn sincos_pos_embed(c: usize, n: usize) -> Vec<f32> {
    let half = c / 2;
    let mut out = vec![0f32; n * n * c];
    for (i, row) in out.chunks_mut(c).enumerate() {
        let (hh, ww) = (i / n, i % n);
        sincos_row(ww as f64, &mut row[..half]);
        sincos_row(hh as f64, &mut row[half..2 * half]);
    }
    out
}

/// 1-D sin-cos table (L, C) over positions 0..L (Latte's `temp_embed` over the frames).
pub fn sincos_1d(c: usize, len: usize) -> Vec<f32> {
    let mut out = vec![0f32; len * c];
    for (pos, row) in out.chunks_mut(c).enumerate() {
        sincos_row(pos as f64, row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_pool_windows_match_pytorch() {
        // AdaptiveAvgPool2d(3) over 8 cells: [0,3), [2,6), [5,8) (overlapping).
        assert_eq!((0..3).map(|i| adaptive_pool_window(i, 8, 3)).collect::<Vec<_>>(), vec![(0, 3), (2, 6), (5, 8)]);
        // 6 -> 4: [0,2), [1,3), [3,5), [4,6)
        assert_eq!((0..4).map(|i| adaptive_pool_window(i, 6, 4)).collect::<Vec<_>>(), vec![(0, 2), (1, 3), (3, 5), (4, 6)]);
        // Upsampling windows (s > n) are single cells.
        assert_eq!(adaptive_pool_window(5, 4, 8), (2, 3));
    }

    #[test]
    fn nearest_matches_pytorch() {
        // F.interpolate(mode='nearest') 3 -> 8: floor(i * 0.375)
        let v: Vec<usize> = (0..8).map(|i| nearest_source(i, 3, 8)).collect();
        assert_eq!(v, vec![0, 0, 0, 1, 1, 1, 2, 2]);
        let v: Vec<usize> = (0..6).map(|i| nearest_source(i, 4, 6)).collect();
        assert_eq!(v, vec![0, 0, 1, 2, 2, 3]);
    }

    #[test]
    fn pos_embed_layout() {
        let c = 8;
        let t = sincos_pos_embed(c, 3);
        // token (h=0, w=2): first half encodes w=2: sin(2), sin(2/100), cos(2), cos(2/100)
        let row = &t[2 * c..3 * c];
        assert!((row[0] - 2f32.sin()).abs() < 1e-6);
        assert!((row[1] - (2f64 / 100.0).sin() as f32).abs() < 1e-6);
        assert!((row[2] - 2f32.cos()).abs() < 1e-6);
        // second half encodes h=0: sin(0)=0, cos(0)=1
        assert_eq!(&row[4..8], &[0.0, 0.0, 1.0, 1.0]);
    }
}
