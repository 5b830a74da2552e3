//! Shared helpers for the integration tests: fixture loading and tolerance checks.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sparsedit::config::Config;

pub fn fixture_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data").join(case)
}

pub fn load_st(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn fixture_config(case: &str) -> Config {
    let text = std::fs::read_to_string(fixture_dir(case).join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn f32s(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

pub fn i64s(t: &Tensor) -> Vec<i64> {
    t.flatten_all().unwrap().to_dtype(DType::I64).unwrap().to_vec1().unwrap()
}

/// Relative error check: |a_i - b_i| <= tol * max(|b_i|, rms(b)) for every i. Panics naming the
/// worst index, both values and the overall relative L2 error.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs {}", got.len(), want.len());
    let rms = (want.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / want.len().max(1) as f64).sqrt() as f32;
    let mut worst = (0usize, 0f32);
    let (mut e2, mut r2) = (0f64, 0f64);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(a.is_finite(), "{what}: non-finite value {a} at index {i}");
        let rel = (a - b).abs() / b.abs().max(rms).max(1e-30);
        if rel > worst.1 {
            worst = (i, rel);
        }
        e2 += ((a - b) as f64).powi(2);
        r2 += (*b as f64).powi(2);
    }
    let l2 = (e2 / r2.max(1e-300)).sqrt();
    assert!(
        worst.1 <= tol,
        "{what}: relative error {:.3e} > {tol:.1e} at index {} (got {}, want {}); relative L2 error {l2:.3e}",
        worst.1,
        worst.0,
        got[worst.0],
        want[worst.0]
    );
}

/// Max relative error (same metric as assert_close) for reporting.
pub fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    let rms = (want.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / want.len().max(1) as f64).sqrt() as f32;
    got.iter().zip(want).map(|(a, b)| (a - b).abs() / b.abs().max(rms).max(1e-30)).fold(0.0, f32::max)
}

/// Tensor-level relative error max_i |a_i - b_i| / max_i |b_i| (used for quantized paths, whose
/// per-element error is relative to the weights' block scale, not to each output).
pub fn assert_close_to_scale(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs {}", got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    let (i, d) = got.iter().zip(want).map(|(a, b)| (a - b).abs()).enumerate().fold((0, 0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    assert!(
        d / scale <= tol && got.iter().all(|v| v.is_finite()),
        "{what}: max |error| / max |reference| = {:.3e} > {tol:.1e}, worst at index {i} (got {}, want {})",
        d / scale,
        got[i],
        want[i]
    );
}

/// The WebGPU adapter, or None (the test skips, saying so) when there is none outside CI. In CI
/// (CI=true; lavapipe is installed by scripts/test.sh) a missing adapter is a failure.
pub fn gpu_or_skip() -> Option<sparsedit::gpu::Gpu> {
    match sparsedit::gpu::Gpu::new_blocking() {
        Ok(g) => {
            eprintln!("adapter: {} (shader-f16: {})", g.describe(), g.has_f16);
            Some(g)
        }
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => panic!("CI needs a WebGPU adapter (lavapipe): {e}"),
        Err(e) => {
            eprintln!("skipped: no GPU adapter ({e})");
            None
        }
    }
}

/// The `--backend` values a CLI test runs: `cpu`, and `gpu` when there is an adapter (always in
/// CI, where a missing adapter fails the test, as in [`gpu_or_skip`]).
pub fn backends() -> Vec<&'static str> {
    let mut b = vec!["cpu"];
    if gpu_or_skip().is_some() {
        b.push("gpu");
    }
    b
}

/// Seeded uniform values in (-amp, amp), never closer to zero than 1e-3 (no accidental zeros).
pub fn random_nonzero(seed: u64, n: usize, amp: f32) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let v: f32 = rng.random_range(-amp..amp);
            if v.abs() < 1e-3 {
                1e-3f32.copysign(v)
            } else {
                v
            }
        })
        .collect()
}

// ---- the `sparsedit` binary (tests/cli.rs, tests/decoders.rs)

/// Runs the crate's CLI.
pub fn sparsedit(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sparsedit")).args(args).output().expect("run sparsedit")
}

/// Runs a command that must succeed; its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = sparsedit(args);
    assert!(out.status.success(), "sparsedit {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail: status 2 and exactly one line on stderr, returned.
pub fn fails(args: &[&str]) -> String {
    let out = sparsedit(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "sparsedit {args:?} should exit 2; stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one-line reason expected, got: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A path as a CLI argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// (name, shape) of every tensor of diffusers' `DiTTransformer2DModel` layout for a DiT of width
/// `c`, patch `p`, `depth` blocks, `classes` labels (+1 null), 4 input channels and learned sigma:
/// the shared embedders repeated under every block, as diffusers stores them.
pub fn diffusers_dit_shapes(c: usize, p: usize, depth: usize, classes: usize) -> Vec<(String, Vec<usize>)> {
    let mut v = vec![("pos_embed.proj.weight".to_string(), vec![c, 4, p, p]), ("pos_embed.proj.bias".into(), vec![c])];
    for i in 0..depth {
        let b = format!("transformer_blocks.{i}.");
        for (n, s) in [
            ("attn1.to_q", [c, c]),
            ("attn1.to_k", [c, c]),
            ("attn1.to_v", [c, c]),
            ("attn1.to_out.0", [c, c]),
            ("ff.net.0.proj", [4 * c, c]),
            ("ff.net.2", [c, 4 * c]),
            ("norm1.linear", [6 * c, c]),
            ("norm1.emb.timestep_embedder.linear_1", [c, 256]),
            ("norm1.emb.timestep_embedder.linear_2", [c, c]),
        ] {
            v.push((format!("{b}{n}.weight"), s.to_vec()));
            v.push((format!("{b}{n}.bias"), vec![s[0]]));
        }
        v.push((format!("{b}norm1.emb.class_embedder.embedding_table.weight"), vec![classes + 1, c]));
    }
    for (n, rows) in [("proj_out_1", 2 * c), ("proj_out_2", p * p * 8)] {
        v.push((format!("{n}.weight"), vec![rows, c]));
        v.push((format!("{n}.bias"), vec![rows]));
    }
    v
}
