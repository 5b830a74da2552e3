//! `bench`: dense vs sparse timing on one backend (forward, full sample, per-block GPU time,
//! matmul GFLOP/s).

use std::path::PathBuf;

use clap::Args;
use sparsedit::bench::{bench_model, block_times, counterpart, matmul_gflops, random_tensors, table, BenchOptions};
use sparsedit::config::Config;
use sparsedit::gguf::TensorType;
use sparsedit::gpu::Gpu;
use sparsedit::pack::load_pack_file;
use sparsedit::{Error, Result};

use super::{Backend, Quant};

#[derive(Args)]
pub(super) struct BenchArgs {
    /// A preset (random weights), e.g. sparsedit-tiny, sparsedit-xl2-256.
    #[arg(long, conflicts_with = "model", required_unless_present = "model")]
    preset: Option<String>,
    /// A pack (its dense/sparse counterpart gets random weights of the same widths).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Sampling steps for the full-sample time.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Images per sample (the model batch is twice this, for CFG).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed repetitions of the forward pass (median reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Weight format on the GPU: f32, f16, q8_0, q4_0.
    #[arg(long, value_enum, ignore_case = true, hide_possible_values = true, default_value_t = Quant::F32)]
    quant: Quant,
}

pub(super) fn bench(a: BenchArgs) -> Result<()> {
    let quant: TensorType = a.quant.into();
    let opts = BenchOptions { steps: a.steps, batch: a.batch, repeats: a.repeats, quant };
    // `auto` falls back to the CPU silently: the table names the device.
    let gpu = match a.backend {
        Backend::Cpu => None,
        Backend::Gpu => Some(Gpu::new_blocking()?),
        Backend::Auto => Gpu::new_blocking().ok(),
    };
    let (cfg, tensors) = match (&a.preset, &a.model) {
        (Some(p), _) => {
            let cfg = Config::preset(p)?;
            let t = random_tensors(&cfg, 0)?;
            (cfg, t)
        }
        (None, Some(m)) => {
            let p = load_pack_file(m)?;
            (p.cfg, p.tensors)
        }
        _ => return Err(Error::InvalidArgument("give --preset or --model".into())),
    };
    let other = counterpart(&cfg);
    let other_t = random_tensors(&other, 1)?;
    let (dense, sparse) = if cfg.layout.is_sparse() { ((other, other_t), (cfg, tensors)) } else { ((cfg, tensors), (other, other_t)) };
    let device = match &gpu {
        Some(g) => g.describe(),
        None => format!("CPU (candle, {} threads)", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
    };
    let name = |c: &Config| {
        let frames = c.num_frames.map(|f| format!(", F={f}")).unwrap_or_default();
        match c.layout {
            sparsedit::Layout::Dense { depth } => format!("{}, {depth} blocks, N={}{frames}", c.arch_title(), c.num_tokens()),
            sparsedit::Layout::Sparse(s) => format!(
                "{} {}+{}x{:?}+{}, s={}{frames}",
                c.arch_title(), s.num_poolingformer, s.num_sdtm, s.group, s.num_top, c.semantic_size
            ),
        }
    };
    eprintln!("benchmarking on {device} ...");
    let rows = vec![
        bench_model(gpu.as_ref(), &dense.0, &dense.1, &opts, &name(&dense.0))?,
        bench_model(gpu.as_ref(), &sparse.0, &sparse.1, &opts, &name(&sparse.0))?,
    ];
    println!("{}", table(&device, &rows, &opts)?);
    if let Some(g) = &gpu {
        if g.has_timestamps {
            let rows = 2 * a.batch.max(1);
            let (d, s) = (block_times(g, &dense.0, &dense.1, rows, quant)?, block_times(g, &sparse.0, &sparse.1, rows, quant)?);
            println!("| GPU time per block (timestamp queries) | tokens | ms |\n|---|---:|---:|");
            for (label, rows) in [("dense", &d), ("sparse", &s)] {
                let total: f64 = rows.iter().map(|r| r.2).sum();
                for (name, tokens, ms) in rows {
                    println!("| {label}: {name} | {tokens} | {ms:.3} |");
                }
                println!("| **{label}: total** | | **{total:.3}** |");
            }
            println!();
        }
        let c = dense.0.hidden_size;
        let m = 2 * a.batch.max(1) * dense.0.num_tokens();
        println!("| matmul (linear.wgsl) | M x K x N | GFLOP/s |\n|---|---|---:|");
        for (k, n) in [(c, 4 * c), (4 * c, c), (c, 3 * c)] {
            let gf = matmul_gflops(g, m, k, n, quant, a.repeats)?;
            println!("| {} | {m} x {k} x {n} | {gf:.1} |", quant.name());
        }
    }
    Ok(())
}
