//! The CPU path's f32 matmul for the browser: y = x · w (+ b), 4-lane SIMD (wasm `simd128`).
//!
//! candle's CPU matmul goes through the `gemm` crate, whose kernels are AVX / AVX-512 / NEON:
//! in wasm it falls back to one float at a time, and the linear layers are most of a forward
//! (60-65% natively with gemm's FMA kernels, `perf`). This kernel is register-blocked for a
//! 4-wide vector unit: a 4 × 8 tile of `y` lives in eight 4-lane accumulators while k runs, each
//! step loading two vectors of `w`'s row k and broadcasting one `x` value per row. No packing:
//! `w` (k, n) row-major is read eight columns at a time, and one 8-column strip (k × 32 bytes)
//! stays in the L1 cache while every row block passes over it.
//!
//! The lane type is `core::arch::wasm32::v128` on wasm32 with simd128 and a plain `[f32; 4]`
//! elsewhere, so native tests check the tiling, the tails and the sums of the same code that the
//! browser runs; only the four lane operations differ. Sums run in k order per output, as a
//! scalar loop would (gemm's order differs: the two agree to f32 rounding, see the tests).
//!
//! [`Kernel`] chooses between this and candle's matmul at run time (default: this one on wasm32,
//! gemm natively, where its AVX kernels are faster), so a benchmark can time both in one run.

use std::sync::atomic::{AtomicU8, Ordering};

/// Which f32 matmul the CPU model's linear layers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// candle's `matmul` (the `gemm` crate).
    Gemm,
    /// [`linear`], this module's 4-lane kernel.
    Lanes4,
}

const DEFAULT: u8 = if cfg!(target_arch = "wasm32") { 1 } else { 0 };
static KERNEL: AtomicU8 = AtomicU8::new(DEFAULT);

/// The kernel the CPU model's linear layers use now.
pub fn kernel() -> Kernel {
    if KERNEL.load(Ordering::Relaxed) == 1 {
        Kernel::Lanes4
    } else {
        Kernel::Gemm
    }
}

/// Chooses the kernel for every CPU model in this process (benchmarks, tests).
pub fn set_kernel(k: Kernel) {
    KERNEL.store(matches!(k, Kernel::Lanes4) as u8, Ordering::Relaxed);
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod lanes {
    use core::arch::wasm32::*;
    pub type L = v128;
    #[inline(always)]
    pub fn splat(v: f32) -> L {
        f32x4_splat(v)
    }
    #[inline(always)]
    pub fn load(s: &[f32]) -> L {
        assert!(s.len() >= 4);
        // SAFETY: 4 floats are in bounds (asserted); v128_load allows unaligned addresses.
        unsafe { v128_load(s.as_ptr() as *const v128) }
    }
    /// # Safety
    /// `at + 4 <= s.len()`.
    #[inline(always)]
    pub unsafe fn load_at(s: &[f32], at: usize) -> L {
        debug_assert!(at + 4 <= s.len());
        v128_load(s.as_ptr().add(at) as *const v128)
    }
    #[inline(always)]
    pub fn mul_add(acc: L, a: L, b: L) -> L {
        f32x4_add(acc, f32x4_mul(a, b))
    }
    #[inline(always)]
    pub fn store(v: L, out: &mut [f32]) {
        assert!(out.len() >= 4);
        // SAFETY: 4 floats are in bounds (asserted); v128_store allows unaligned addresses.
        unsafe { v128_store(out.as_mut_ptr() as *mut v128, v) }
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod lanes {
    pub type L = [f32; 4];
    #[inline(always)]
    pub fn splat(v: f32) -> L {
        [v; 4]
    }
    #[inline(always)]
    pub fn load(s: &[f32]) -> L {
        [s[0], s[1], s[2], s[3]]
    }
    /// # Safety
    /// `at + 4 <= s.len()`.
    #[inline(always)]
    pub unsafe fn load_at(s: &[f32], at: usize) -> L {
        debug_assert!(at + 4 <= s.len());
        let p = s.as_ptr().add(at);
        [*p, *p.add(1), *p.add(2), *p.add(3)]
    }
    #[inline(always)]
    pub fn mul_add(acc: L, a: L, b: L) -> L {
        [acc[0] + a[0] * b[0], acc[1] + a[1] * b[1], acc[2] + a[2] * b[2], acc[3] + a[3] * b[3]]
    }
    #[inline(always)]
    pub fn store(v: L, out: &mut [f32]) {
        out[..4].copy_from_slice(&v);
    }
}

use lanes::{load, load_at, mul_add, splat, store, L};

/// Rows of `w` per pass: one packed strip of 8 columns (KC × 32 bytes = 8 KiB) stays in L1.
const KC: usize = 256;

/// y (rows, n) = x (rows, k) · w (k, n) + bias (n), all row-major and contiguous.
///
/// k runs in passes of [`KC`]; each pass copies an 8-column strip of `w` into a contiguous
/// buffer (DiT-XL/2's rows are 4.6-18 KiB apart: read in place, every k would touch a new page),
/// then every 4-row tile of `y` adds that pass to its accumulators. Each output is still summed
/// bias first, then in k order. Panics when a slice is shorter than its shape says.
pub fn linear(x: &[f32], w: &[f32], bias: Option<&[f32]>, rows: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(x.len() >= rows * k && w.len() >= k * n, "linear: buffers shorter than ({rows}, {k}) x ({k}, {n})");
    let mut y = vec![0f32; rows * n];
    if let Some(b) = bias {
        assert!(b.len() >= n, "linear: bias shorter than {n}");
        for row in y.chunks_exact_mut(n.max(1)) {
            row.copy_from_slice(&b[..n]);
        }
    }
    let mut strip = vec![0f32; KC * 8];
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let mut j = 0;
        // Strips of 8 columns, then one of 4; the last n % 4 columns by plain loops below.
        while j + 4 <= n {
            let wide = if j + 8 <= n { 8 } else { 4 };
            for kk in 0..kc {
                strip[kk * wide..(kk + 1) * wide].copy_from_slice(&w[(k0 + kk) * n + j..][..wide]);
            }
            if wide == 8 {
                pass::<2>(x, &strip, &mut y, rows, k, n, k0, kc, j);
            } else {
                pass::<1>(x, &strip, &mut y, rows, k, n, k0, kc, j);
            }
            j += wide;
        }
        for col in j..n {
            for r in 0..rows {
                let mut acc = y[r * n + col];
                for kk in k0..k0 + kc {
                    acc += x[r * k + kk] * w[kk * n + col];
                }
                y[r * n + col] = acc;
            }
        }
    }
    y
}

/// One pass: y[:, j .. j + 4V] += x[:, k0 .. k0 + kc] · strip, where strip (kc, 4V) holds those
/// columns of w's rows k0 .. k0 + kc. 4-row tiles, then single rows.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pass<const V: usize>(x: &[f32], strip: &[f32], y: &mut [f32], rows: usize, k: usize, n: usize, k0: usize, kc: usize, j: usize) {
    let width = 4 * V;
    assert!(strip.len() >= kc * width && j + width <= n && k0 + kc <= k && x.len() >= rows * k && y.len() >= rows * n);
    let mut r = 0;
    while r + 4 <= rows {
        let mut acc: [[L; V]; 4] = std::array::from_fn(|i| std::array::from_fn(|v| load(&y[(r + i) * n + j + 4 * v..])));
        let xs: [&[f32]; 4] = std::array::from_fn(|i| &x[(r + i) * k + k0..(r + i) * k + k0 + kc]);
        for kk in 0..kc {
            // SAFETY: kk < kc and strip holds kc * width floats (asserted above).
            let wv: [L; V] = std::array::from_fn(|v| unsafe { load_at(strip, kk * width + 4 * v) });
            for i in 0..4 {
                // SAFETY: every xs[i] has kc floats.
                let a = splat(unsafe { *xs[i].get_unchecked(kk) });
                for v in 0..V {
                    acc[i][v] = mul_add(acc[i][v], a, wv[v]);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, &lane) in row.iter().enumerate() {
                store(lane, &mut y[(r + i) * n + j + 4 * v..]);
            }
        }
        r += 4;
    }
    while r < rows {
        let mut acc: [L; V] = std::array::from_fn(|v| load(&y[r * n + j + 4 * v..]));
        let xr = &x[r * k + k0..r * k + k0 + kc];
        for (kk, &xv) in xr.iter().enumerate() {
            let a = splat(xv);
            for (v, lane) in acc.iter_mut().enumerate() {
                // SAFETY: kk < kc (xr has kc floats) and strip holds kc * width floats.
                *lane = mul_add(*lane, a, unsafe { load_at(strip, kk * width + 4 * v) });
            }
        }
        for (v, &lane) in acc.iter().enumerate() {
            store(lane, &mut y[r * n + j + 4 * v..]);
        }
        r += 1;
    }
}

/// The linear layers' two CPU kernels timed inside a JavaScript engine: candle's matmul (the
/// `gemm` crate, scalar in wasm) and [`linear`] (simd128), exported from the wasm module built
/// with `--features wasm-bench` and driven by `scripts/wasm-matmul-bench.mjs` (Node's V8, the
/// engine of Chromium), which prints the table.
#[cfg(all(target_arch = "wasm32", feature = "wasm-bench"))]
pub mod bench {
    use super::linear;
    use candle_core::{Device, Tensor};

    fn operands(rows: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let f = |len: usize, salt: usize| (0..len).map(|i| ((i * 7919 + salt) % 1000) as f32 / 1000.0 - 0.5).collect::<Vec<_>>();
        (f(rows * k, 1), f(k * n, 2), f(n, 3))
    }

    /// Runs `reps` products of (rows, k) x (k, n) + bias with kernel 0 (candle / gemm) or 1 (own);
    /// returns a checksum of the last result (so nothing is optimised away). Time it from outside.
    #[no_mangle]
    pub extern "C" fn bench_linear(kernel: u32, rows: usize, k: usize, n: usize, reps: usize) -> f64 {
        let (x, w, b) = operands(rows, k, n);
        let mut last = Vec::new();
        if kernel == 0 {
            let (xt, wt, bt) = (
                Tensor::from_vec(x, (rows, k), &Device::Cpu).unwrap(),
                Tensor::from_vec(w, (k, n), &Device::Cpu).unwrap(),
                Tensor::from_vec(b, n, &Device::Cpu).unwrap(),
            );
            let mut y = None;
            for _ in 0..reps {
                y = Some(xt.matmul(&wt).unwrap().broadcast_add(&bt).unwrap());
            }
            last = y.map(|y| y.flatten_all().unwrap().to_vec1::<f32>().unwrap()).unwrap_or_default();
        } else {
            for _ in 0..reps {
                last = linear(&x, &w, Some(&b), rows, k, n);
            }
        }
        last.iter().map(|&v| v as f64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Every tail: rows and columns around the 4 × 8 tile, k from 1 to more than two passes.
    #[test]
    fn linear_equals_the_plain_sum_for_every_tail() {
        for &(rows, k, n) in &[(1, 1, 1), (3, 5, 7), (4, 8, 8), (5, 3, 12), (9, 17, 13), (8, 64, 36), (13, 33, 21), (5, 300, 13), (6, 513, 20)] {
            let (x, w, b) = (values(rows * k, 1), values(k * n, 2), values(n, 3));
            for bias in [None, Some(&b[..])] {
                let y = linear(&x, &w, bias, rows, k, n);
                for r in 0..rows {
                    for c in 0..n {
                        let mut want = bias.map_or(0.0, |b| b[c]);
                        for kk in 0..k {
                            want += x[r * k + kk] * w[kk * n + c];
                        }
                        // Same k order as the plain loop: equal to the last bit.
                        assert_eq!(y[r * n + c], want, "({rows}, {k}, {n}) bias {}: y[{r}][{c}]", bias.is_some());
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "buffers shorter")]
    fn linear_refuses_short_buffers() {
        linear(&[0.0; 3], &[0.0; 4], None, 2, 2, 2);
    }
}
