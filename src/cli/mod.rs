//! The command line's shape: clap's `Cli` / `Cmd`, the flags and value enums commands share, and
//! dispatch to one file per command.

mod bench;
mod convert;
mod decode;
mod flops;
mod hub;
mod info;
mod io;
mod load;
mod random_pack;
mod run;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sparsedit::diffusion::SamplerKind;
use sparsedit::gguf::TensorType;
use sparsedit::Result;

#[derive(Parser)]
#[command(name = "sparsedit", version, about = "SparseDiT / DiT: convert checkpoints, inspect packs, run and sample")]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert an official checkpoint (.pt/.pth/.safetensors, or a pack) to a GGUF pack.
    Convert(convert::ConvertArgs),
    /// Initialise a SparseDiT layout from a dense DiT checkpoint (as the paper's fine-tuning does).
    DitToSparsedit(convert::DitToSparseArgs),
    /// Print a pack's architecture, parameters, bytes and block layout.
    Info {
        /// The pack (.gguf).
        model: PathBuf,
    },
    /// Run model(x, t, y) on inputs from a safetensors file.
    Forward(run::ForwardArgs),
    /// Sample images / latents for a class.
    Sample(run::SampleArgs),
    /// MACs of one forward pass at batch 1, per module.
    Flops(flops::FlopsArgs),
    /// Dense vs sparse timing on one backend (forward, full sample, matmul GFLOP/s).
    Bench(bench::BenchArgs),
    /// Decode latents to images with a latent decoder (TAESD or the SD-VAE).
    Decode(decode::DecodeArgs),
    /// Write a pack of seeded random weights for a preset (full-size layouts without the real
    /// checkpoints: tests, benchmarks, browser memory limits).
    RandomPack(random_pack::RandomPackArgs),
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Convert(a) => convert::convert(a),
        Cmd::DitToSparsedit(a) => convert::dit_to_sparse(a),
        Cmd::Info { model } => info::info(&model),
        Cmd::Forward(a) => run::forward(a),
        Cmd::Sample(a) => run::sample(a),
        Cmd::Flops(a) => flops::flops(a),
        Cmd::Bench(a) => bench::bench(a),
        Cmd::Decode(a) => decode::decode(a),
        Cmd::RandomPack(a) => random_pack::random_pack(a),
    }
}

/// `--backend`: where a command computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    Gpu,
    Cpu,
    Auto,
}

impl From<Backend> for sparsedit::engine::Backend {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Gpu => sparsedit::engine::Backend::Gpu,
            Backend::Cpu => sparsedit::engine::Backend::Cpu,
            Backend::Auto => sparsedit::engine::Backend::Auto,
        }
    }
}

/// `--sampler`: the reverse-process update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SamplerChoice {
    Ddim,
    Ddpm,
    /// DPM-Solver++ (2M), as the reference dpm_solver_pytorch.py: good samples in 10-25 steps.
    #[value(name = "dpm-solver++", alias = "dpmsolver++")]
    DpmSolverPp,
}

impl SamplerChoice {
    /// The library's sampler; DDIM's `eta` must lie in [0, 1] (DDPM ignores it).
    fn kind(self, eta: f64) -> Result<SamplerKind> {
        match self {
            SamplerChoice::Ddpm => Ok(SamplerKind::Ddpm),
            SamplerChoice::DpmSolverPp => Ok(SamplerKind::DpmSolverPp),
            // The library's parser checks eta and words the error.
            SamplerChoice::Ddim => SamplerKind::parse("ddim", eta),
        }
    }
}

/// `--quant`: the stored type of the 2-D linear weights (any case: `q8_0`, `Q8_0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Quant {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
}

impl From<Quant> for TensorType {
    fn from(q: Quant) -> TensorType {
        match q {
            Quant::F32 => TensorType::F32,
            Quant::F16 => TensorType::F16,
            Quant::Q8_0 => TensorType::Q8_0,
            Quant::Q4_0 => TensorType::Q4_0,
        }
    }
}

#[derive(Args)]
struct ImportFlags {
    /// Attention heads (default by width: 1152/1024 -> 16, 768 -> 12, 384 -> 6).
    #[arg(long)]
    heads: Option<usize>,
    /// Sparse grid side s: stored in the pack by convert; for forward/sample, the grid used.
    #[arg(long)]
    semantic_size: Option<usize>,
}

#[derive(Args)]
struct DecoderFlags {
    /// SD-VAE GroupNorm groups (default: `norm_num_groups` of a diffusers config.json next to
    /// the checkpoint, else 32).
    #[arg(long)]
    norm_groups: Option<usize>,
    /// SD-VAE latent scaling factor (default: config.json's `scaling_factor`, else 0.18215).
    #[arg(long)]
    scaling_factor: Option<f64>,
}
