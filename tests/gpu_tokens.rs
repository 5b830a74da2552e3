//! The token-layout / elementwise WGSL kernels and the fused sampler step against the CPU
//! reference (`model` and `diffusion`): patchify / unpatchify, conditioning, Poolingformer mean
//! and broadcast residual, adaptive average pooling and nearest upsampling on odd grids
//! (overlapping windows, s > n, s == n), DDPM (learned range, fixed variance) and DDIM (eta 0,
//! 0.5) steps with and without guidance, a dispatch past 65535 workgroups, and shape errors.

mod common;

use common::gpu_or_skip as gpu;
use common::random_nonzero as random;

use candle_core::{Device, Tensor};
use sparsedit::diffusion::{Diffusion, Guidance, SamplerKind, VarianceType};
use sparsedit::gpu::ops::tokens::{
    adaptive_avg_pool, condition, mean_tokens, patchify, residual_broadcast, sampler_step, transpose_frames, unpatchify, upsample_nearest, Resize,
    SamplerStepParams,
};
use sparsedit::gpu::{Dispatch, Gpu, GpuBuf};
use sparsedit::model::{adaptive_avg_pool_matrix, apply_cfg, nearest_upsample_index};



/// common::assert_close on the first `want.len()` values (GPU buffers may be longer).
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert!(got.len() >= want.len(), "{what}: got {} values, want {}", got.len(), want.len());
    common::assert_close(what, &got[..want.len()], want, tol);
}

fn vec_of(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn run(gpu: &Gpu, d: Dispatch) {
    gpu.run(&[d]).unwrap();
}

const TOL: f32 = 1e-5;

#[test]
fn patchify_and_unpatchify_match_the_reference() {
    let Some(gpu) = gpu() else { return };
    let dev = Device::Cpu;
    let b = 2;
    // (cin, input size, patch): n = 4, 3, 5, 2.
    for (case, &(cin, size, p)) in [(4usize, 8usize, 2usize), (1, 12, 4), (4, 10, 2), (1, 8, 4)].iter().enumerate() {
        let n = size / p;
        let seed = 100 + case as u64;
        // patchify: as Model::forward_traced.
        let x = random(seed, b * cin * size * size, 2.0);
        let xt = Tensor::from_slice(&x, (b, cin, size, size), &dev).unwrap();
        let want = xt.reshape((b, cin, n, p, n, p)).unwrap().permute((0, 2, 4, 1, 3, 5)).unwrap().reshape((b, n * n, cin * p * p)).unwrap();
        let xb = gpu.upload("x", &x).unwrap();
        let out = gpu.zeros("patches", x.len()).unwrap();
        run(&gpu, patchify(&gpu, "patchify", &xb, b, cin, size, p, &out).unwrap());
        assert_close(&format!("patchify cin {cin} I {size} p {p}"), &gpu.read(&out).unwrap(), &vec_of(&want), 0.0);

        // unpatchify: as model::unpatchify, c output channels (odd ones too).
        let c = [8usize, 3, 1, 5][case];
        let tok = random(seed + 50, b * n * n * p * p * c, 2.0);
        let tt = Tensor::from_slice(&tok, (b, n * n, p * p * c), &dev).unwrap();
        let want = tt.reshape((b, n, n, p, p, c)).unwrap().permute((0, 5, 1, 3, 2, 4)).unwrap().reshape((b, c, n * p, n * p)).unwrap();
        let tb = gpu.upload("tokens", &tok).unwrap();
        let img = gpu.zeros("images", tok.len()).unwrap();
        run(&gpu, unpatchify(&gpu, "unpatchify", &tb, b, n, p, c, &img).unwrap());
        assert_close(&format!("unpatchify n {n} p {p} c {c}"), &gpu.read(&img).unwrap(), &vec_of(&want), 0.0);
    }
}

#[test]
fn condition_matches_the_reference() {
    let Some(gpu) = gpu() else { return };
    let dev = Device::Cpu;
    let (b, c, rows) = (3usize, 20usize, 11usize);
    let t_emb = random(1, b * c, 3.0);
    let table = random(2, rows * c, 3.0);
    let labels: Vec<u32> = vec![7, 10, 0];
    let te = Tensor::from_slice(&t_emb, (b, c), &dev).unwrap();
    let tab = Tensor::from_slice(&table, (rows, c), &dev).unwrap();
    let idx = Tensor::from_slice(&labels, b, &dev).unwrap();
    let want = (te + tab.index_select(&idx, 0).unwrap()).unwrap().silu().unwrap();
    let out = gpu.zeros("c", b * c).unwrap();
    let d = condition(
        &gpu,
        "condition",
        &gpu.upload("t_emb", &t_emb).unwrap(),
        &gpu.upload("table", &table).unwrap(),
        &gpu.upload("labels", &labels).unwrap(),
        b,
        c,
        rows,
        &out,
    )
    .unwrap();
    run(&gpu, d);
    assert_close("condition", &gpu.read(&out).unwrap(), &vec_of(&want), TOL);

    // An out-of-range label is clamped to the last row (never read out of bounds).
    let bad_labels: Vec<u32> = vec![7, 9999, 0];
    let d = condition(
        &gpu,
        "condition clamp",
        &gpu.upload("t_emb", &t_emb).unwrap(),
        &gpu.upload("table", &table).unwrap(),
        &gpu.upload("labels", &bad_labels).unwrap(),
        b,
        c,
        rows,
        &out,
    )
    .unwrap();
    run(&gpu, d);
    let idx = Tensor::from_slice(&[7u32, 10, 0], b, &dev).unwrap();
    let te = Tensor::from_slice(&t_emb, (b, c), &dev).unwrap();
    let want = (te + tab.index_select(&idx, 0).unwrap()).unwrap().silu().unwrap();
    assert_close("condition clamped", &gpu.read(&out).unwrap(), &vec_of(&want), TOL);
}

#[test]
fn poolingformer_mean_and_broadcast_residual_match_the_reference() {
    let Some(gpu) = gpu() else { return };
    let dev = Device::Cpu;
    // C = 20 and 130 (one and three 64-channel chunks); T odd and larger than 4 lanes.
    for (case, &(b, t, c)) in [(2usize, 37usize, 20usize), (3, 9, 130), (1, 1, 5)].iter().enumerate() {
        let seed = 10 * case as u64;
        let x = random(seed, b * t * c, 2.0);
        let xt = Tensor::from_slice(&x, (b, t, c), &dev).unwrap();
        let want = xt.mean_keepdim(1).unwrap();
        let xb = gpu.upload("x", &x).unwrap();
        let out = gpu.zeros("mean", b * c).unwrap();
        run(&gpu, mean_tokens(&gpu, "mean", &xb, b, t, c, &out).unwrap());
        assert_close(&format!("mean_tokens B {b} T {t} C {c}"), &gpu.read(&out).unwrap(), &vec_of(&want), TOL);

        // x += gate * a with the gate at offset 2C of rows of 6C (gate_msa), as PoolingformerBlock.
        let (stride, off) = (6 * c, 2 * c);
        let mods = random(seed + 1, b * stride, 1.5);
        let a = random(seed + 2, b * c, 1.5);
        let gate = Tensor::from_slice(&mods, (b, 1, stride), &dev).unwrap().narrow(2, off, c).unwrap();
        let at = Tensor::from_slice(&a, (b, 1, c), &dev).unwrap();
        let want = xt.broadcast_add(&gate.broadcast_mul(&at).unwrap()).unwrap();
        let d = residual_broadcast(&gpu, "residual", &xb, b, t, c, &gpu.upload("mods", &mods).unwrap(), stride, off, &gpu.upload("a", &a).unwrap(), 1).unwrap();
        run(&gpu, d);
        assert_close(&format!("residual_broadcast B {b} T {t} C {c}"), &gpu.read(&xb).unwrap(), &vec_of(&want), TOL);
    }
}

#[test]
fn video_ops_match_the_reference() {
    let Some(gpu) = gpu() else { return };
    let dev = Device::Cpu;
    // Latte's rearranges around a temporal block, as Model::forward_traced: (B, F, T, C) ->
    // (B, T, F, C) + temp_embed (F, C), and back without a table. F = 3 and 8, T odd.
    for (case, &(b, f, t, c)) in [(2usize, 3usize, 5usize, 20usize), (1, 8, 9, 7), (3, 1, 4, 6)].iter().enumerate() {
        let seed = 400 + case as u64;
        let x = random(seed, b * f * t * c, 2.0);
        let te = random(seed + 1, f * c, 1.0);
        let xt = Tensor::from_slice(&x, (b, f, t, c), &dev).unwrap();
        let tet = Tensor::from_slice(&te, (f, c), &dev).unwrap();
        let want = xt.transpose(1, 2).unwrap().contiguous().unwrap().broadcast_add(&tet).unwrap();
        let (xb, teb) = (gpu.upload("x", &x).unwrap(), gpu.upload("temp_embed", &te).unwrap());
        let out = gpu.zeros("frames", x.len()).unwrap();
        run(&gpu, transpose_frames(&gpu, "in", &xb, b, f, t, c, Some(&teb), &out).unwrap());
        assert_close(&format!("transpose_frames in B {b} F {f} T {t}"), &gpu.read(&out).unwrap(), &vec_of(&want), 0.0);
        let back = gpu.zeros("back", x.len()).unwrap();
        run(&gpu, transpose_frames(&gpu, "out", &out, b, t, f, c, None, &back).unwrap());
        let want_back = want.transpose(1, 2).unwrap();
        assert_close(&format!("transpose_frames out B {b} F {f} T {t}"), &gpu.read(&back).unwrap(), &vec_of(&want_back), 0.0);

        // A video Poolingformer's residual: one vector per frame, one modulation row per clip.
        let (stride, off) = (6 * c, 2 * c);
        let mods = random(seed + 2, b * stride, 1.5);
        let a = random(seed + 3, b * f * c, 1.5);
        let gate = Tensor::from_slice(&mods, (b, 1, 1, stride), &dev).unwrap().narrow(3, off, c).unwrap();
        let at = Tensor::from_slice(&a, (b, f, 1, c), &dev).unwrap();
        let want = xt.broadcast_add(&gate.broadcast_mul(&at).unwrap()).unwrap();
        let d = residual_broadcast(&gpu, "residual", &xb, b * f, t, c, &gpu.upload("mods", &mods).unwrap(), stride, off, &gpu.upload("a", &a).unwrap(), f).unwrap();
        run(&gpu, d);
        assert_close(&format!("residual_broadcast per clip B {b} F {f}"), &gpu.read(&xb).unwrap(), &vec_of(&want), TOL);
    }
    let msg = |r: sparsedit::error::Result<Dispatch>| r.err().expect("an error").to_string();
    let z = |n| gpu.zeros("z", n).unwrap();
    assert!(msg(transpose_frames(&gpu, "tf", &z(59), 1, 3, 4, 5, None, &z(60))).contains("tf input"));
    assert!(msg(transpose_frames(&gpu, "tf", &z(60), 1, 3, 4, 5, Some(&z(14)), &z(60))).contains("tf table"));
    let xb = z(60);
    assert!(msg(transpose_frames(&gpu, "tf", &xb, 1, 3, 4, 5, None, &xb)).contains("also"));
    assert!(msg(residual_broadcast(&gpu, "res", &z(300), 3, 5, 20, &z(240), 120, 40, &z(60), 2)).contains("modulation rows"));
}

#[test]
fn pooling_and_upsampling_match_the_reference() {
    let Some(gpu) = gpu() else { return };
    let dev = Device::Cpu;
    let (b, c) = (2usize, 20usize);
    // Overlapping windows (6 -> 4, 8 -> 3), s > n (4 -> 6), identity (5 -> 5), 7 -> 1.
    for (case, &(n, s)) in [(6usize, 4usize), (8, 3), (4, 6), (5, 5), (7, 1), (3, 7)].iter().enumerate() {
        let seed = 200 + case as u64;
        let dense = random(seed, b * n * n * c, 2.0);
        let dt = Tensor::from_slice(&dense, (b, n * n, c), &dev).unwrap();
        let pool = adaptive_avg_pool_matrix(n, s, &dev).unwrap();
        let want = pool.broadcast_matmul(&dt).unwrap();
        let db = gpu.upload("dense", &dense).unwrap();
        let out = gpu.zeros("sparse", b * s * s * c).unwrap();
        run(&gpu, adaptive_avg_pool(&gpu, "pool", &db, Resize { batch: b, from: n, to: s, channels: c }, &out).unwrap());
        assert_close(&format!("adaptive_avg_pool {n} -> {s}"), &gpu.read(&out).unwrap(), &vec_of(&want), TOL);

        // Nearest upsampling s -> n, as TokenRecoverBlock (index_select over tokens).
        let sparse = random(seed + 50, b * s * s * c, 2.0);
        let st = Tensor::from_slice(&sparse, (b, s * s, c), &dev).unwrap();
        let want = st.index_select(&nearest_upsample_index(s, n, &dev).unwrap(), 1).unwrap();
        let sb = gpu.upload("sparse", &sparse).unwrap();
        let up = gpu.zeros("up", b * n * n * c).unwrap();
        run(&gpu, upsample_nearest(&gpu, "upsample", &sb, Resize { batch: b, from: s, to: n, channels: c }, &up).unwrap());
        assert_close(&format!("upsample_nearest {s} -> {n}"), &gpu.read(&up).unwrap(), &vec_of(&want), 0.0);
    }
}

#[test]
fn dpm_solver_step_matches_the_reference() {
    // The sampler kernel's DPM-Solver++ mode against dpm_solver::DpmSolverPp::step: guided and
    // not, first and second order, the previous data prediction read from the x0 buffer.
    let Some(gpu) = gpu() else { return };
    let (n, ch, h, w) = (2usize, 4usize, 3usize, 5usize);
    let total = n * ch * h * w;
    let dpm = sparsedit::dpm_solver::DpmSolverPp::new(&sparsedit::diffusion::linear_betas(1000), 5).unwrap();
    for (k, guidance) in [(0usize, None), (1, Some(Guidance { scale: 4.0, guided_channels: 3, null_label: 10 })), (4, None), (2, Some(Guidance { scale: 2.0, guided_channels: 4, null_label: 10 }))] {
        let c_out = 2 * ch; // learned sigma: eps is the first C channels
        let rows = if guidance.is_some() { 2 * n } else { n };
        let x = random(500 + k as u64, total, 2.0);
        let raw = random(510 + k as u64, rows * c_out * h * w, 1.0);
        let m_prev = random(520 + k as u64, total, 1.5);
        // The reference: CFG as model::apply_cfg, the first C channels of the first half.
        let raw_t = Tensor::from_slice(&raw, (rows, c_out, h, w), &Device::Cpu).unwrap();
        let out = match guidance {
            Some(g) => apply_cfg(&raw_t, g.scale, g.guided_channels).unwrap().narrow(0, 0, n).unwrap(),
            None => raw_t,
        };
        let eps = vec_of(&out.narrow(1, 0, ch).unwrap());
        let (want_x, want_m) = dpm.step(k, &x, &eps, &m_prev).unwrap();
        let params = SamplerStepParams::dpm_solver(&dpm.steps[k], n, ch, c_out, h * w, guidance);
        let xb = gpu.upload("x", &x).unwrap();
        let x0b = gpu.upload("x0 = previous data prediction", &m_prev).unwrap();
        let d = sampler_step(&gpu, "dpm", &xb, &gpu.upload("out", &raw).unwrap(), &gpu.zeros("noise", total).unwrap(), &x0b, &params).unwrap();
        run(&gpu, d);
        let what = format!("DPM-Solver++ step {k} (order {}) guidance {:?}", dpm.steps[k].order, guidance.map(|g| g.scale));
        assert_close(&format!("{what}: data prediction"), &gpu.read(&x0b).unwrap(), &want_m, TOL);
        assert_close(&format!("{what}: next x"), &gpu.read(&xb).unwrap(), &want_x, TOL);
    }
}

#[test]
fn elementwise_dispatch_past_65535_workgroups() {
    let Some(gpu) = gpu() else { return };
    // 65535 * 256 + a bit: the flat index spans two rows of workgroups.
    let (b, t, c) = (1usize, 65536 + 3, 256usize);
    let x = random(7, b * t * c, 1.0);
    let mods = random(8, 3 * c, 1.0);
    let a = random(9, c, 1.0);
    let xb = gpu.upload("x", &x).unwrap();
    let d = residual_broadcast(&gpu, "residual big", &xb, b, t, c, &gpu.upload("mods", &mods).unwrap(), 3 * c, c, &gpu.upload("a", &a).unwrap(), 1).unwrap();
    assert!(d.groups[1] > 1, "expected a 2-D dispatch, got {:?}", d.groups);
    run(&gpu, d);
    let want: Vec<f32> = x.iter().enumerate().map(|(e, &v)| v + mods[c + e % c] * a[e % c]).collect();
    assert_close("residual_broadcast past 65535 workgroups", &gpu.read(&xb).unwrap(), &want, TOL);
}

/// The CPU reference of one guided / unguided step: (next x, predicted x0).
#[allow(clippy::too_many_arguments)]
fn reference_step(
    d: &Diffusion,
    kind: SamplerKind,
    var: VarianceType,
    i: usize,
    x: &[f32],
    raw: &[f32],
    dims: (usize, usize, usize, usize),
    guidance: Option<Guidance>,
    noise: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let (n, ch, h, w) = dims;
    let c_out = if var == VarianceType::LearnedRange { 2 * ch } else { ch };
    let out = match guidance {
        Some(g) => {
            let rt = Tensor::from_slice(raw, (2 * n, c_out, h, w), &Device::Cpu).unwrap();
            vec_of(&apply_cfg(&rt, g.scale, g.guided_channels).unwrap().narrow(0, 0, n).unwrap())
        }
        None => raw.to_vec(),
    };
    d.step(kind, var, i, x, &out, n, ch, noise).unwrap()
}

#[test]
fn sampler_step_matches_diffusion_step() {
    let Some(gpu) = gpu() else { return };
    let (n, ch, h, w) = (2usize, 4usize, 5usize, 3usize);
    let total = n * ch * h * w;
    let mut checked = 0;
    for (respacing, kind) in [
        ("10", SamplerKind::Ddpm),
        ("ddim10", SamplerKind::Ddim { eta: 0.0 }),
        ("ddim10", SamplerKind::Ddim { eta: 0.5 }),
        ("250", SamplerKind::Ddim { eta: 0.5 }),
    ] {
        let d = Diffusion::new(respacing).unwrap();
        let vars: &[VarianceType] = match kind {
            SamplerKind::Ddpm => &[VarianceType::LearnedRange, VarianceType::FixedLarge],
            // DDIM ignores the variance; with learned sigma the output still has 2C channels.
            _ => &[VarianceType::LearnedRange, VarianceType::FixedLarge],
        };
        for &var in vars {
            let c_out = if var == VarianceType::LearnedRange { 2 * ch } else { ch };
            let guidances = [
                None,
                Some(Guidance { scale: 4.0, guided_channels: 3, null_label: 10 }),
                Some(Guidance { scale: 1.5, guided_channels: c_out, null_label: 10 }),
            ];
            for guidance in guidances {
                for i in [d.num_steps() / 2, 1, 0] {
                    let seed = checked as u64 * 7;
                    let x = random(seed, total, 2.0);
                    let rows = if guidance.is_some() { 2 * n } else { n };
                    // v in [-1, 1] for the learned range, eps around unit scale.
                    let raw = random(seed + 1, rows * c_out * h * w, 1.0);
                    let noise = random(seed + 2, total, 2.0);
                    let (want_x, want_x0) = reference_step(&d, kind, var, i, &x, &raw, (n, ch, h, w), guidance, &noise);

                    let params = SamplerStepParams::new(&d, i, kind, var, n, ch, h * w, guidance).unwrap();
                    let xb = gpu.upload("x", &x).unwrap();
                    let ob = gpu.upload("model out", &raw).unwrap();
                    let nb = gpu.upload("noise", &noise).unwrap();
                    let x0b = gpu.zeros("x0", total).unwrap();
                    run(&gpu, sampler_step(&gpu, "step", &xb, &ob, &nb, &x0b, &params).unwrap());
                    let what = format!("{respacing} {kind:?} {var:?} guidance {:?} i {i}", guidance.map(|g| (g.scale, g.guided_channels)));
                    assert_close(&format!("{what}: x0"), &gpu.read(&x0b).unwrap(), &want_x0, TOL);
                    assert_close(&format!("{what}: next x"), &gpu.read(&xb).unwrap(), &want_x, TOL);
                    checked += 1;
                }
            }
        }
    }
    eprintln!("{checked} sampler steps checked");
}

#[test]
fn step_coefficients_are_consistent() {
    let d = Diffusion::new("ddim10").unwrap();
    let k = d.coefficients(5).unwrap();
    let ac = d.alphas_cumprod[5];
    assert_eq!(k.alpha_bar, ac as f32);
    assert_eq!(k.alpha_bar_prev, d.alphas_cumprod[4] as f32);
    assert_eq!(k.sqrt_recip_ac, (1.0 / ac).sqrt() as f32);
    assert_eq!(k.max_log, k.fixed_log);
    let k0 = d.coefficients(0).unwrap();
    assert_eq!(k0.fixed_log, k0.min_log);
    assert_eq!(k0.alpha_bar_prev, 1.0);
    assert!(d.coefficients(10).is_err());
    assert!(SamplerStepParams::new(&d, 10, SamplerKind::Ddpm, VarianceType::FixedLarge, 1, 4, 4, None).is_err());
}

#[test]
fn shape_errors_are_reported() {
    let Some(gpu) = gpu() else { return };
    let z = |len: usize| -> GpuBuf { gpu.zeros("buf", len).unwrap() };
    let msg = |r: sparsedit::Result<Dispatch>| -> String {
        match r {
            Ok(_) => panic!("expected a shape error"),
            Err(e) => e.to_string(),
        }
    };
    // patchify: side not a multiple of the patch, input too small, output aliasing the input.
    let x = z(2 * 4 * 8 * 8);
    let e = msg(patchify(&gpu, "pf", &x, 2, 4, 9, 2, &z(2 * 4 * 81)));
    assert!(e.contains("pf") && e.contains("multiple"), "{e}");
    assert!(msg(patchify(&gpu, "pf", &x, 3, 4, 8, 2, &z(3 * 4 * 64))).contains("pf images"));
    assert!(msg(patchify(&gpu, "pf", &x, 2, 4, 8, 2, &z(10))).contains("pf tokens"));
    assert!(msg(patchify(&gpu, "pf", &x, 2, 4, 8, 2, &x)).contains("also"));
    assert!(msg(patchify(&gpu, "pf", &x, 0, 4, 8, 2, &z(10))).contains("empty"));
    assert!(msg(patchify(&gpu, "pf", &x, 2, 4, 8, 0, &z(10))).contains("multiple"));
    // unpatchify.
    assert!(msg(unpatchify(&gpu, "up", &z(10), 2, 4, 2, 8, &z(2 * 8 * 64))).contains("up tokens"));
    assert!(msg(unpatchify(&gpu, "up", &z(2 * 8 * 64), 2, 4, 2, 8, &z(5))).contains("up images"));
    // condition.
    let e = msg(condition(&gpu, "cond", &z(40), &z(200), &z(1), 2, 20, 10, &z(40)));
    assert!(e.contains("cond labels"), "{e}");
    assert!(msg(condition(&gpu, "cond", &z(40), &z(199), &z(2), 2, 20, 10, &z(40))).contains("label table"));
    assert!(msg(condition(&gpu, "cond", &z(40), &z(200), &z(2), 2, 20, 0, &z(40))).contains("no rows"));
    // mean_tokens / residual_broadcast.
    assert!(msg(mean_tokens(&gpu, "mean", &z(2 * 5 * 20 - 1), 2, 5, 20, &z(40))).contains("mean input"));
    assert!(msg(mean_tokens(&gpu, "mean", &z(200), 2, 5, 20, &z(39))).contains("mean output"));
    let e = msg(residual_broadcast(&gpu, "res", &z(200), 2, 5, 20, &z(240), 120, 110, &z(40), 1));
    assert!(e.contains("gate slice"), "{e}");
    assert!(msg(residual_broadcast(&gpu, "res", &z(200), 2, 5, 20, &z(239), 120, 40, &z(40), 1)).contains("res modulation"));
    assert!(msg(residual_broadcast(&gpu, "res", &z(200), 2, 5, 20, &z(240), 120, 40, &z(39), 1)).contains("res broadcast vector"));
    let xb = z(200);
    assert!(msg(residual_broadcast(&gpu, "res", &xb, 2, 5, 20, &z(240), 120, 40, &xb, 1)).contains("also"));
    // pooling / upsampling.
    let rs = |from, to| Resize { batch: 2, from, to, channels: 20 };
    assert!(msg(adaptive_avg_pool(&gpu, "pool", &z(2 * 36 * 20 - 1), rs(6, 4), &z(2 * 16 * 20))).contains("pool input"));
    assert!(msg(adaptive_avg_pool(&gpu, "pool", &z(2 * 36 * 20), rs(6, 4), &z(10))).contains("pool output"));
    assert!(msg(adaptive_avg_pool(&gpu, "pool", &z(2 * 36 * 20), rs(6, 0), &z(10))).contains("empty"));
    assert!(msg(upsample_nearest(&gpu, "ups", &z(2 * 16 * 20), rs(4, 6), &z(10))).contains("ups output"));
    assert!(msg(upsample_nearest(&gpu, "ups", &z(10), rs(4, 6), &z(2 * 36 * 20))).contains("ups input"));
    // sampler_step: model output of the unguided size for a guided step, too few channels,
    // small noise, aliased x0.
    let d = Diffusion::new("ddim10").unwrap();
    let g = Some(Guidance { scale: 4.0, guided_channels: 3, null_label: 10 });
    let p = SamplerStepParams::new(&d, 5, SamplerKind::Ddpm, VarianceType::LearnedRange, 2, 4, 9, g).unwrap();
    let (xs, x0) = (z(72), z(72));
    let e = msg(sampler_step(&gpu, "step", &xs, &z(2 * 8 * 9), &z(72), &x0, &p));
    assert!(e.contains("step model output"), "{e}");
    let mut p2 = p.clone();
    p2.out_channels = 5;
    assert!(msg(sampler_step(&gpu, "step", &xs, &z(4 * 8 * 9), &z(72), &x0, &p2)).contains("model output channels"));
    assert!(msg(sampler_step(&gpu, "step", &xs, &z(4 * 8 * 9), &z(71), &x0, &p)).contains("step noise"));
    assert!(msg(sampler_step(&gpu, "step", &xs, &z(4 * 8 * 9), &z(72), &xs, &p)).contains("also"));
    assert!(sampler_step(&gpu, "step", &xs, &z(4 * 8 * 9), &z(72), &x0, &p).is_ok());
}
