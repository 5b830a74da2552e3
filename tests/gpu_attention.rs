//! The WGSL attention kernels against a candle reference: self-attention on packed qkv, cross
//! attention with Tq != Tk, head dims 8 .. 128, strided / offset inputs, the head-averaged
//! probabilities, dispatches past 65535 workgroups, and shape errors.

mod common;

use common::gpu_or_skip as gpu;
use common::random_nonzero as random;

use candle_core::{Device, Tensor, D};
use sparsedit::gpu::ops::attention::{attention, attention_probs, AttnShape};
use sparsedit::gpu::{Gpu, GpuBuf};



fn softmax_last(x: &Tensor) -> Tensor {
    let max = x.max_keepdim(D::Minus1).unwrap();
    let e = x.broadcast_sub(&max).unwrap().exp().unwrap();
    let sum = e.sum_keepdim(D::Minus1).unwrap();
    e.broadcast_div(&sum).unwrap()
}

/// Candle reference (as `model::attention`): (out (B, Tq, C), head-averaged probs (B, Tq, Tk)).
fn reference(s: &AttnShape, q: &[f32], kv: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let dev = Device::Cpu;
    let (b, tq, tk, c, h) = (s.batch, s.tq, s.tk, s.channels, s.heads);
    let d = c / h;
    let qrows = Tensor::from_slice(&q[..b * tq * s.q_stride], (b * tq, s.q_stride), &dev).unwrap();
    let kvrows = Tensor::from_slice(&kv[..b * tk * s.kv_stride], (b * tk, s.kv_stride), &dev).unwrap();
    let split = |rows: &Tensor, off: usize, t: usize| {
        rows.narrow(1, off, c).unwrap().reshape((b, t, h, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
    };
    let (qt, kt, vt) = (split(&qrows, s.q_off, tq), split(&kvrows, s.k_off, tk), split(&kvrows, s.v_off, tk));
    let scale = 1.0 / (d as f64).sqrt();
    let scores = (qt.matmul(&kt.t().unwrap().contiguous().unwrap()).unwrap() * scale).unwrap();
    let probs = softmax_last(&scores);
    let out = probs.matmul(&vt).unwrap().transpose(1, 2).unwrap().reshape((b, tq, c)).unwrap();
    let mean = probs.mean(1).unwrap();
    (out.flatten_all().unwrap().to_vec1().unwrap(), mean.flatten_all().unwrap().to_vec1().unwrap())
}

use common::assert_close;

/// Run attention (and probs) on GPU for `shape` with q and kv in separate or shared buffers.
fn check(gpu: &Gpu, what: &str, s: &AttnShape, q: &[f32], kv: Option<&[f32]>, with_probs: bool) {
    let qbuf = gpu.upload("q", q).unwrap();
    let kvbuf: GpuBuf = match kv {
        Some(kv) => gpu.upload("kv", kv).unwrap(),
        None => qbuf.clone(),
    };
    let kvdata = kv.unwrap_or(q);
    let (want, want_probs) = reference(s, q, kvdata);
    // Pre-filled with garbage: every output value must be written.
    let out = gpu.upload("out", &vec![f32::NAN; s.batch * s.tq * s.channels]).unwrap();
    let mut plan = vec![attention(gpu, what, s, &qbuf, &kvbuf, &out).unwrap()];
    let probs = gpu.upload("probs", &vec![f32::NAN; s.batch * s.tq * s.tk]).unwrap();
    if with_probs {
        plan.push(attention_probs(gpu, &format!("{what} probs"), s, &qbuf, &kvbuf, &probs).unwrap());
    }
    gpu.run(&plan).unwrap();
    let got = gpu.read(&out).unwrap();
    assert_close(what, &got[..want.len()], &want, 1e-4);
    if with_probs {
        let got = gpu.read(&probs).unwrap();
        for (r, row) in got[..want_probs.len()].chunks(s.tk).enumerate() {
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "{what} probs: row {r} sums to {sum}");
        }
        assert_close(&format!("{what} probs"), &got[..want_probs.len()], &want_probs, 1e-4);
    }
}

#[test]
fn self_attention_packed_qkv_odd_shape() {
    let Some(gpu) = gpu() else { return };
    let s = AttnShape::packed_qkv(2, 37, 48, 3); // d = 16
    let qkv = random(1, 2 * 37 * 3 * 48, 2.0);
    check(&gpu, "self B2 T37 C48 H3", &s, &qkv, None, true);
}

#[test]
fn cross_attention_few_queries_many_keys() {
    let Some(gpu) = gpu() else { return };
    let s = AttnShape::cross(2, 9, 64, 32, 4); // d = 8
    let q = random(2, 2 * 9 * 32, 2.0);
    let kv = random(3, 2 * 64 * 64, 2.0);
    check(&gpu, "cross Tq9 Tk64 C32 H4", &s, &q, Some(&kv), true);
}

#[test]
fn cross_attention_many_queries_few_keys() {
    let Some(gpu) = gpu() else { return };
    let s = AttnShape::cross(2, 64, 9, 32, 4);
    let q = random(4, 2 * 64 * 32, 2.0);
    let kv = random(5, 2 * 9 * 64, 2.0);
    check(&gpu, "cross Tq64 Tk9 C32 H4", &s, &q, Some(&kv), true);
}

#[test]
fn head_dim_72() {
    let Some(gpu) = gpu() else { return };
    // 61 tokens: tiles of 28 keys (28 + 28 + 5).
    let s = AttnShape::packed_qkv(2, 61, 144, 2);
    let qkv = random(6, 2 * 61 * 3 * 144, 1.0);
    check(&gpu, "self d72 T61", &s, &qkv, None, true);
    // The brief's T = 20 (a single partial tile).
    let s = AttnShape::packed_qkv(1, 20, 144, 2);
    let qkv = random(17, 20 * 3 * 144, 1.0);
    check(&gpu, "self d72 T20", &s, &qkv, None, true);
}

#[test]
fn head_dim_128_several_query_blocks() {
    let Some(gpu) = gpu() else { return };
    // 130 queries: three workgroups of 64 rows per (b, h), the last one mostly idle; 70 keys:
    // five tiles of 16 keys, the last one partial.
    let s = AttnShape::cross(1, 130, 70, 256, 2);
    let q = random(7, 130 * 256, 0.7);
    let kv = random(8, 70 * 512, 0.7);
    check(&gpu, "cross d128 Tq130 Tk70", &s, &q, Some(&kv), true);
}

#[test]
fn strided_and_offset_inputs() {
    let Some(gpu) = gpu() else { return };
    // q columns 5..37 of 41-float rows; k at 40..72 and v at 3..35 of 77-float rows (v before k).
    let s = AttnShape { batch: 3, tq: 11, tk: 29, channels: 32, heads: 2, q_stride: 41, q_off: 5, kv_stride: 77, k_off: 40, v_off: 3 };
    let q = random(9, 3 * 11 * 41, 2.0);
    let kv = random(10, 3 * 29 * 77, 2.0);
    check(&gpu, "strided", &s, &q, Some(&kv), true);
}

#[test]
fn large_softmax_range_is_stable() {
    let Some(gpu) = gpu() else { return };
    // Scores of several hundred: exp would overflow without the running max.
    let s = AttnShape::packed_qkv(1, 45, 64, 2);
    let qkv = random(11, 45 * 3 * 64, 12.0);
    check(&gpu, "large scores", &s, &qkv, None, true);
}

#[test]
fn more_than_65535_workgroups() {
    let Some(gpu) = gpu() else { return };
    // 70000 heads of dim 1, one query block each: the dispatch splits over x and y.
    let h = 70_000;
    let s = AttnShape::cross(1, 1, 2, h, h);
    let q = random(12, h, 2.0);
    let kv = random(13, 2 * 2 * h, 2.0);
    check(&gpu, "70000 workgroups", &s, &q, Some(&kv), false);
}

#[test]
fn probs_past_65535_workgroups() {
    let Some(gpu) = gpu() else { return };
    // 65535 * 64 + 100 query rows: the probs dispatch splits over x and y.
    let tq = 65535 * 64 + 100;
    let s = AttnShape::cross(1, tq, 2, 1, 1);
    let q = random(14, tq, 2.0);
    let kv = random(15, 2 * 2, 2.0);
    let (qb, kvb) = (gpu.upload("q", &q).unwrap(), gpu.upload("kv", &kv).unwrap());
    let probs = gpu.upload("probs", &vec![f32::NAN; tq * 2]).unwrap();
    gpu.run(&[attention_probs(&gpu, "probs", &s, &qb, &kvb, &probs).unwrap()]).unwrap();
    let got = gpu.read(&probs).unwrap();
    let want: Vec<f32> = q
        .iter()
        .flat_map(|&qi| {
            let (a, b) = (qi * kv[0], qi * kv[2]);
            let m = a.max(b);
            let (ea, eb) = ((a - m).exp(), (b - m).exp());
            [ea / (ea + eb), eb / (ea + eb)]
        })
        .collect();
    assert_close("probs 4.2M rows", &got, &want, 1e-4);
}

#[test]
fn bad_shapes_are_errors() {
    let Some(gpu) = gpu() else { return };
    let good = AttnShape::packed_qkv(2, 8, 16, 2);
    let qkv = gpu.upload("qkv", &random(16, 2 * 8 * 48, 1.0)).unwrap();
    let out = gpu.zeros("out", 2 * 8 * 16).unwrap();
    let probs = gpu.zeros("probs", 2 * 8 * 8).unwrap();
    assert!(attention(&gpu, "good", &good, &qkv, &qkv, &out).is_ok());
    assert!(attention_probs(&gpu, "good", &good, &qkv, &qkv, &probs).is_ok());

    let cases: Vec<(&str, AttnShape)> = vec![
        ("heads do not divide C", AttnShape { heads: 3, ..good.clone() }),
        ("zero heads", AttnShape { heads: 0, ..good.clone() }),
        ("zero keys", AttnShape { tk: 0, ..good.clone() }),
        ("zero queries", AttnShape { tq: 0, ..good.clone() }),
        ("zero batch", AttnShape { batch: 0, ..good.clone() }),
        ("q slice past the row", AttnShape { q_off: 40, ..good.clone() }),
        ("k slice past the row", AttnShape { k_off: 33, ..good.clone() }),
        ("v slice past the row", AttnShape { v_off: 33, ..good.clone() }),
        ("head dim 129", AttnShape { channels: 129, heads: 1, q_stride: 387, q_off: 0, kv_stride: 387, k_off: 129, v_off: 258, batch: 1, tq: 1, tk: 1 }),
        ("buffers too small", AttnShape { tq: 9, tk: 9, ..good.clone() }),
    ];
    for (what, s) in &cases {
        let r = attention(&gpu, what, s, &qkv, &qkv, &out);
        let e = r.err().unwrap_or_else(|| panic!("{what}: attention accepted {s:?}"));
        eprintln!("{what}: {e}");
        if *what != "v slice past the row" {
            assert!(attention_probs(&gpu, what, s, &qkv, &qkv, &probs).is_err(), "{what}: attention_probs accepted {s:?}");
        }
    }
    // Output too small, output aliasing an input.
    let small = gpu.zeros("small", 2 * 8 * 16 - 1).unwrap();
    assert!(attention(&gpu, "small out", &good, &qkv, &qkv, &small).is_err());
    let small_probs = gpu.zeros("small probs", 2 * 8 * 8 - 1).unwrap();
    assert!(attention_probs(&gpu, "small probs", &good, &qkv, &qkv, &small_probs).is_err());
    assert!(attention(&gpu, "aliased", &good, &qkv, &qkv, &qkv).is_err());
    let small_kv = gpu.zeros("kv", 2 * 8 * 48 - 1).unwrap();
    assert!(attention(&gpu, "small kv", &good, &qkv, &small_kv, &out).is_err());
    gpu.check().unwrap();
}
