//! `sparsedit`: convert checkpoints to packs, inspect them, run the model and sample images.
//!
//! Every failure exits with status 2 and one line `error: <reason>` on stderr.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use candle_core::{DType, Device, Tensor};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sparsedit::config::{Config, GridSchedule, PooledMiddle};
use sparsedit::diffusion::{default_respacing, Guidance, NoiseSource, Sampler, SamplerKind, SeededNoise};
use sparsedit::flops::{count_macs, sample_macs};
use sparsedit::gguf::{MetaValue, TensorType};
use sparsedit::import::{dit_to_sparsedit, infer_config, parse_layout, read_checkpoint, ImportOptions};
use sparsedit::model::{to_vec_f32, Model, TensorMap};
use sparsedit::decoder::{canonical_decoder_tensors, is_decoder_checkpoint, Decoder, DecoderConfig, DecoderOptions};
use sparsedit::pack::{load_decoder_pack_bytes, load_pack_file, read_header_file, write_decoder_pack, write_pack};
use sparsedit::gpu::model::{EncodedMap, GpuModel};
use sparsedit::gpu::Gpu;
use sparsedit::{Error, Result};

#[derive(Parser)]
#[command(name = "sparsedit", version, about = "SparseDiT / DiT: convert checkpoints, inspect packs, run and sample")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert an official checkpoint (.pt/.pth/.safetensors, or a pack) to a GGUF pack.
    Convert(ConvertArgs),
    /// Initialise a SparseDiT layout from a dense DiT checkpoint (as the paper's fine-tuning does).
    DitToSparsedit(DitToSparseArgs),
    /// Print a pack's architecture, parameters, bytes and block layout.
    Info {
        /// The pack (.gguf).
        model: PathBuf,
    },
    /// Run model(x, t, y) on inputs from a safetensors file.
    Forward(ForwardArgs),
    /// Sample images / latents for a class.
    Sample(SampleArgs),
    /// MACs of one forward pass at batch 1, per module.
    Flops(FlopsArgs),
    /// Dense vs sparse timing on one backend (forward, full sample, matmul GFLOP/s).
    Bench(BenchArgs),
    /// Decode latents to images with a latent decoder (TAESD or the SD-VAE).
    Decode(DecodeArgs),
    /// Write a pack of seeded random weights for a preset (full-size layouts without the real
    /// checkpoints: tests, benchmarks, browser memory limits).
    RandomPack(RandomPackArgs),
}

#[derive(Args)]
struct RandomPackArgs {
    /// A preset: dit-xl2-256, sparsedit-xl2-512, dit-b2, sparsedit-tiny, ...; or a decoder: taesd, sdvae
    #[arg(long)]
    preset: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// f32, f16, q8_0 or q4_0 (linear weights; tables and biases stay f32).
    #[arg(long, default_value = "q8_0")]
    quant: String,
    #[arg(short, long)]
    out: PathBuf,
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

#[derive(Args)]
struct DecodeArgs {
    /// Decoder: a .gguf pack (taesd / sdvae), or a checkpoint (taesd_decoder.pth / .safetensors,
    /// the SD-VAE's diffusion_pytorch_model.safetensors) imported on the fly.
    #[arg(long)]
    decoder: PathBuf,
    /// safetensors with z (B,4,h,w), the latent as sampled (or `sample`, as `sample --latent-out`
    /// writes it).
    #[arg(long)]
    latents: PathBuf,
    /// Output safetensors: `image` (B,3,8h,8w), the decoder's raw output before clamping
    /// (TAESD: [0, 1], SD-VAE: [-1, 1]).
    #[arg(long)]
    out: PathBuf,
    /// Also write the images side by side as a PNG (clamped).
    #[arg(long)]
    png: Option<PathBuf>,
    #[command(flatten)]
    flags: DecoderFlags,
    /// Compute backend: gpu (WebGPU via wgpu), cpu (the candle reference), or auto.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Decode this many more times with the weights loaded and print the median time (the first
    /// decode's time includes loading and, on the GPU, compiling the pipelines).
    #[arg(long, default_value_t = 0)]
    repeats: usize,
}

#[derive(Args)]
struct BenchArgs {
    /// A preset (random weights), e.g. sparsedit-tiny, sparsedit-xl2-256.
    #[arg(long, conflicts_with = "model", required_unless_present = "model")]
    preset: Option<String>,
    /// A pack (its dense/sparse counterpart gets random weights of the same widths).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    backend: String,
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
    #[arg(long, default_value = "f32")]
    quant: String,
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
struct ConvertArgs {
    /// Checkpoint: .pt / .pth (state dict, or under 'ema' / 'model'), .safetensors, or a .gguf pack.
    ckpt: PathBuf,
    /// Output pack.
    #[arg(short, long)]
    out: PathBuf,
    /// Type of the 2-D linear weights: f32, f16, q8_0, q4_0.
    #[arg(long, default_value = "f32")]
    quant: String,
    #[command(flatten)]
    import: ImportFlags,
    /// Latent decoders (TAESD, SD-VAE) only.
    #[command(flatten)]
    decoder: DecoderFlags,
    /// Print every tensor's quantization error (default: the 12 worst).
    #[arg(long)]
    all_tensors: bool,
}

#[derive(Args)]
struct DitToSparseArgs {
    /// Dense DiT checkpoint.
    ckpt: PathBuf,
    #[arg(short, long)]
    out: PathBuf,
    /// SparseDiT layout POOL,SDTM,a:b:c:d,TOP; default 1,4,1:3:1:1,3 (the released 256 px run).
    #[arg(long, default_value = "1,4,1:3:1:1,3")]
    layout: String,
    #[arg(long, default_value = "f32")]
    quant: String,
    #[command(flatten)]
    import: ImportFlags,
}

#[derive(Args)]
struct ModelFlags {
    /// Model: a .gguf pack, or a checkpoint (.pt/.pth/.safetensors) imported on the fly.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    import: ImportFlags,
    /// Compute backend: gpu (WebGPU via wgpu), cpu (the candle reference), or auto (gpu when an
    /// adapter exists).
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Training-free sparsification of a plain DiT: blocks START:END (or `default`, the middle
    /// 60%) run on the pooled --semantic-size grid, their update added back to the dense tokens.
    #[arg(long)]
    pooled_middle: Option<String>,
}

#[derive(Args)]
struct ForwardArgs {
    #[command(flatten)]
    model: ModelFlags,
    /// safetensors with x (B,C,H,W), t (B), y (B), optional cfg_scale (1).
    #[arg(long)]
    inputs: PathBuf,
    /// Output safetensors: out, and out_cfg when cfg_scale is given.
    #[arg(long)]
    out: PathBuf,
    /// Guide all eps channels instead of the reference's first 3.
    #[arg(long)]
    cfg_all_channels: bool,
}

#[derive(Args)]
struct SampleArgs {
    #[command(flatten)]
    model: ModelFlags,
    /// Class label.
    #[arg(long)]
    class: i64,
    /// Number of images (ignored when --noise gives the batch).
    #[arg(long, default_value_t = 1)]
    num: usize,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// ddim or ddpm.
    #[arg(long, default_value = "ddim")]
    sampler: String,
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Classifier-free guidance scale (<= 1: no guidance, as DiT's sample.py).
    #[arg(long, default_value_t = 4.0)]
    cfg: f64,
    /// Guide all eps channels instead of the reference's first 3.
    #[arg(long)]
    cfg_all_channels: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Respacing (e.g. 250, ddim50); default ddimK for DDIM, K for DDPM.
    #[arg(long)]
    respacing: Option<String>,
    /// Starting latent: safetensors with z (n,C,H,W).
    #[arg(long)]
    noise: Option<PathBuf>,
    /// Write the final latent as safetensors (tensor `sample`).
    #[arg(long)]
    latent_out: Option<PathBuf>,
    /// Write a PNG (pixel-space models: 1 or 3 channels in [-1, 1]).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Timestep-wise pruning (instead of the fixed --semantic-size grid): RMIN:RMAX (e.g. 0.61:0.86).
    #[arg(long)]
    schedule: Option<String>,
    /// Latent decoder (taesd / sdvae pack, or its checkpoint): `--out` then writes the decoded
    /// images; runs on the sampling backend.
    #[arg(long)]
    decoder: Option<PathBuf>,
}

#[derive(Args)]
struct FlopsArgs {
    /// A preset: dit-xl2-256, dit-xl2-512, sparsedit-xl2-256, sparsedit-xl2-512, dit-b2, sparsedit-tiny, ...
    #[arg(long, conflicts_with = "model", required_unless_present = "model")]
    preset: Option<String>,
    /// A pack.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Sparse grid side s (default: the model's semantic size).
    #[arg(long)]
    semantic_size: Option<usize>,
    /// Count a plain DiT with the training-free pooled middle: START:END or `default`.
    #[arg(long)]
    pooled_middle: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // A panic is a bug, but it still ends as one line and status 2, never a backtrace dump.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        eprintln!("error: internal error: {}", msg.lines().next().unwrap_or(""));
    }));
    // Mesa's Vulkan drivers probe Wayland and print a stray line when XDG_RUNTIME_DIR is unset
    // (headless machines, CI); an absolute path silences it. Set before any thread starts.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let cli = Cli::parse();
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {}", one_line(&e.to_string()));
            ExitCode::from(2)
        }
        Err(_) => ExitCode::from(2),
    }
}

/// The reason on one line: a captured backtrace (candle adds one when RUST_BACKTRACE is set) is
/// dropped, other line breaks become spaces.
fn one_line(msg: &str) -> String {
    let kept: Vec<&str> = msg.lines().take_while(|l| !l.trim_start().starts_with("0: ")).map(str::trim).collect();
    kept.join(" ").trim().to_string()
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Convert(a) => convert(a),
        Cmd::DitToSparsedit(a) => dit_to_sparse(a),
        Cmd::Info { model } => info(&model),
        Cmd::Forward(a) => forward(a),
        Cmd::Sample(a) => sample(a),
        Cmd::Flops(a) => flops(a),
        Cmd::Bench(a) => bench(a),
        Cmd::Decode(a) => decode(a),
        Cmd::RandomPack(a) => random_pack(a),
    }
}

fn import_opts(f: &ImportFlags) -> ImportOptions {
    ImportOptions { heads: f.heads, semantic_size: f.semantic_size }
}

fn is_pack(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// A pack, or a checkpoint imported on the fly; flags override the stored semantic size.
fn load_model_tensors(path: &Path, flags: &ImportFlags) -> Result<(Config, TensorMap)> {
    if is_pack(path) {
        let p = load_pack_file(path)?;
        let mut cfg = p.cfg;
        if let Some(s) = flags.semantic_size {
            cfg.semantic_size = s;
        }
        if let Some(h) = flags.heads {
            if h != cfg.num_heads {
                return Err(Error::InvalidArgument(format!("--heads {h} disagrees with the pack's {} heads", cfg.num_heads)));
            }
        }
        Ok((cfg, p.tensors))
    } else {
        let map = read_checkpoint(path)?;
        let cfg = infer_config(&map, &import_opts(flags))?;
        Ok((cfg, map))
    }
}

/// A model on the chosen backend.
enum Engine {
    Cpu(Box<Model>),
    Gpu(Box<Gpu>, Box<GpuModel>),
}

impl Engine {
    fn cfg(&self) -> &Config {
        match self {
            Engine::Cpu(m) => &m.cfg,
            Engine::Gpu(_, m) => &m.cfg,
        }
    }

    fn name(&self) -> String {
        match self {
            Engine::Cpu(_) => "cpu (candle)".into(),
            Engine::Gpu(g, _) => format!("gpu: {}", g.describe()),
        }
    }

    /// model(x, t, y) at sparse grid `grid`.
    fn forward(&self, x: &Tensor, t: &[f32], y: &[i64], grid: usize) -> Result<Tensor> {
        match self {
            Engine::Cpu(m) => m.forward(x, t, y, grid),
            Engine::Gpu(g, m) => {
                let c = &m.cfg;
                let b = c.check_inputs(x.dims(), t, y)?;
                let plan = m.plan(g, b, grid)?;
                let out = m.forward(g, &plan, &to_vec_f32(x)?, t, y)?;
                Ok(Tensor::from_vec(out, (b, c.out_channels(), c.input_size, c.input_size), &Device::Cpu)?)
            }
        }
    }
}

/// The GPU for `--backend gpu`, none for `cpu`; `auto` falls back to the CPU with a note.
fn open_backend(backend: &str) -> Result<Option<Gpu>> {
    match backend {
        "cpu" => Ok(None),
        "gpu" => Ok(Some(Gpu::new_blocking()?)),
        "auto" => match Gpu::new_blocking() {
            Ok(g) => Ok(Some(g)),
            Err(e) => {
                eprintln!("note: {e}; using the CPU backend");
                Ok(None)
            }
        },
        other => Err(Error::InvalidArgument(format!("unknown backend {other:?} (gpu, cpu or auto)"))),
    }
}

fn load_model(flags: &ModelFlags) -> Result<Engine> {
    let mut engine = load_model_plain(flags)?;
    if let Some(pm) = &flags.pooled_middle {
        let pm = Some(PooledMiddle::parse(pm, engine.cfg().layout.depth())?);
        match &mut engine {
            Engine::Cpu(m) => m.set_pooled_middle(pm)?,
            Engine::Gpu(_, m) => m.set_pooled_middle(pm)?,
        }
    }
    Ok(engine)
}

fn load_model_plain(flags: &ModelFlags) -> Result<Engine> {
    let gpu = open_backend(&flags.backend)?;
    match gpu {
        None => {
            let (cfg, tensors) = load_model_tensors(&flags.model, &flags.import)?;
            Ok(Engine::Cpu(Box::new(Model::from_tensors(cfg, tensors)?)))
        }
        Some(g) => {
            let model = if is_pack(&flags.model) {
                let bytes = std::fs::read(&flags.model).map_err(|e| Error::Io { path: flags.model.display().to_string(), source: e })?;
                let g2 = sparsedit::gguf::Gguf::parse(&bytes).map_err(|e| match e {
                    Error::Gguf(m) => Error::Gguf(format!("{}: {m}", flags.model.display())),
                    other => other,
                })?;
                let mut cfg = sparsedit::pack::config_from_header(&g2.header)?;
                if let Some(s) = flags.import.semantic_size {
                    cfg.semantic_size = s;
                }
                GpuModel::load(&g, cfg, &g2)?
            } else {
                let (cfg, tensors) = load_model_tensors(&flags.model, &flags.import)?;
                GpuModel::load(&g, cfg, &EncodedMap { tensors: &tensors, quant: TensorType::F32 })?
            };
            Ok(Engine::Gpu(Box::new(g), Box::new(model)))
        }
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// What a pack holds: a DiT / SparseDiT model or a latent decoder.
#[derive(Clone, Copy)]
enum PackCfg<'a> {
    Model(&'a Config),
    Decoder(&'a DecoderConfig),
}

fn write_pack_file(out: &Path, cfg: &Config, tensors: &TensorMap, quant: TensorType, name: &str, all: bool) -> Result<()> {
    write_any_pack_file(out, PackCfg::Model(cfg), tensors, quant, name, all)
}

fn write_any_pack_file(out: &Path, cfg: PackCfg, tensors: &TensorMap, quant: TensorType, name: &str, all: bool) -> Result<()> {
    // Build the pack in memory first so a failure never leaves a half-written file behind.
    let pb = bar(tensors.len() as u64, "encoding");
    let mut bytes = Vec::new();
    let progress = |done: usize, _: usize| pb.set_position(done as u64);
    let (stats, arch) = match cfg {
        PackCfg::Model(c) => (write_pack(&mut bytes, c, tensors, quant, name, progress)?, c.arch_name()),
        PackCfg::Decoder(c) => (write_decoder_pack(&mut bytes, c, tensors, quant, name, progress)?, c.arch_name()),
    };
    pb.finish_and_clear();
    let tmp = out.with_extension("gguf.partial");
    std::fs::write(&tmp, &bytes).map_err(|e| Error::Io { path: tmp.display().to_string(), source: e })?;
    std::fs::rename(&tmp, out).map_err(|e| Error::Io { path: out.display().to_string(), source: e })?;

    let mut rows: Vec<_> = stats.iter().collect();
    rows.sort_by(|a, b| b.rel_err.total_cmp(&a.rel_err));
    let shown = if all { rows.len() } else { rows.len().min(12) };
    println!("{:<58} {:>14} {:>5} {:>12} {:>12}", "tensor", "shape", "type", "max abs err", "rel err");
    for s in &rows[..shown] {
        println!(
            "{:<58} {:>14} {:>5} {:>12.3e} {:>12.3e}",
            s.name,
            format!("{:?}", s.shape),
            s.ty.name(),
            s.max_abs_err,
            s.rel_err
        );
    }
    if shown < rows.len() {
        println!("... {} more tensors (--all-tensors lists them)", rows.len() - shown);
    }
    let total: usize = stats.iter().map(|s| s.bytes).sum();
    let max_rel = stats.iter().map(|s| s.rel_err).fold(0.0, f32::max);
    println!(
        "wrote {} ({}, {} tensors, {:.2} MB of tensor data, worst relative error {:.3e})",
        out.display(),
        arch,
        stats.len(),
        total as f64 / 1e6,
        max_rel
    );
    Ok(())
}

fn convert(a: ConvertArgs) -> Result<()> {
    let quant = TensorType::parse(&a.quant)?;
    let name = a.ckpt.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string();
    let (cfg, tensors) = match load_any(&a.ckpt, &a.decoder)? {
        Loaded::Decoder(cfg, tensors) => {
            // Validate the whole decoder before writing anything.
            drop(Decoder::from_tensors(cfg.clone(), tensors.clone())?);
            return write_any_pack_file(&a.out, PackCfg::Decoder(&cfg), &tensors, quant, &name, a.all_tensors);
        }
        Loaded::Checkpoint(map) => {
            let cfg = infer_config(&map, &import_opts(&a.import))?;
            (cfg, map)
        }
        Loaded::ModelPack => load_model_tensors(&a.ckpt, &a.import)?,
    };
    // Validate the whole model before writing anything.
    let check = Model::from_tensors(cfg.clone(), tensors.clone())?;
    drop(check);
    write_pack_file(&a.out, &cfg, &tensors, quant, &name, a.all_tensors)
}

/// A file given to `convert` / `decode`, read once.
enum Loaded {
    /// A latent decoder (pack or checkpoint), tensors under their canonical names.
    Decoder(DecoderConfig, TensorMap),
    /// A checkpoint that is not a decoder (a DiT / SparseDiT state dict, or anything else).
    Checkpoint(TensorMap),
    /// A pack that is not a decoder pack (read again by the DiT path).
    ModelPack,
}

fn load_any(path: &Path, flags: &DecoderFlags) -> Result<Loaded> {
    if is_pack(path) {
        let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
        let in_file = |e: Error| match e {
            Error::Gguf(m) => Error::Gguf(format!("{}: {m}", path.display())),
            other => other,
        };
        let g = sparsedit::gguf::Gguf::parse(&bytes).map_err(in_file)?;
        let arch = g.header.meta("general.architecture").and_then(MetaValue::as_str).unwrap_or("");
        if arch != "taesd" && arch != "sdvae" {
            return Ok(Loaded::ModelPack);
        }
        if flags.norm_groups.is_some() || flags.scaling_factor.is_some() {
            return Err(Error::InvalidArgument("--norm-groups / --scaling-factor apply to checkpoints; a pack stores them".into()));
        }
        let p = load_decoder_pack_bytes(&bytes).map_err(in_file)?;
        return Ok(Loaded::Decoder(p.cfg, p.tensors));
    }
    let map = read_checkpoint(path)?;
    if !is_decoder_checkpoint(&map) {
        return Ok(Loaded::Checkpoint(map));
    }
    let map = canonical_decoder_tensors(map)?;
    let opts = decoder_options(path, flags)?;
    let cfg = DecoderConfig::infer(&map, &opts)?.ok_or_else(|| Error::InvalidArgument(format!("{}: not a decoder checkpoint", path.display())))?;
    Ok(Loaded::Decoder(cfg, map))
}

/// The SD-VAE settings shapes cannot tell: flags, else diffusers' config.json next to the
/// checkpoint (`norm_num_groups`, `scaling_factor`), else SD's defaults.
fn decoder_options(ckpt: &Path, flags: &DecoderFlags) -> Result<DecoderOptions> {
    let mut opts = DecoderOptions { norm_groups: flags.norm_groups, scaling_factor: flags.scaling_factor };
    let json = ckpt.with_file_name("config.json");
    if json.is_file() {
        let text = std::fs::read_to_string(&json).map_err(|e| Error::Io { path: json.display().to_string(), source: e })?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Checkpoint { path: json.display().to_string(), reason: format!("not valid JSON: {e}") })?;
        if opts.norm_groups.is_none() {
            opts.norm_groups = v.get("norm_num_groups").and_then(|x| x.as_u64()).map(|x| x as usize);
        }
        if opts.scaling_factor.is_none() {
            opts.scaling_factor = v.get("scaling_factor").and_then(|x| x.as_f64());
        }
    }
    Ok(opts)
}

/// A latent decoder (pack or checkpoint) or a one-line reason why the file is not one.
fn load_decoder(path: &Path, flags: &DecoderFlags) -> Result<(DecoderConfig, TensorMap)> {
    match load_any(path, flags)? {
        Loaded::Decoder(cfg, tensors) => Ok((cfg, tensors)),
        Loaded::ModelPack => Err(Error::InvalidArgument(format!(
            "{}: a DiT / SparseDiT pack, not a latent decoder (taesd / sdvae)",
            path.display()
        ))),
        Loaded::Checkpoint(_) => Err(Error::InvalidArgument(format!(
            "{}: not a latent decoder checkpoint (expected TAESD keys 1.weight, 3.conv.0.weight, ... or SD-VAE decoder.* keys)",
            path.display()
        ))),
    }
}

/// Decode latents z (B, 4, h, w) on the GPU when given, else on the CPU: the raw image
/// (B, 3, 8h, 8w), where it ran, and the median time of `repeats` more decodes with the
/// decoder already loaded (none when 0).
fn run_decoder(cfg: &DecoderConfig, tensors: TensorMap, z: &Tensor, gpu: Option<&Gpu>, repeats: usize) -> Result<(Tensor, String, Option<f64>)> {
    let shape = cfg.output_shape(z.dims())?;
    let mut times = Vec::with_capacity(repeats);
    let mut timed = |f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        for _ in 0..repeats {
            let t0 = std::time::Instant::now();
            f()?;
            times.push(t0.elapsed().as_secs_f64());
        }
        Ok(())
    };
    let (image, on) = match gpu {
        None => {
            let dec = Decoder::from_tensors(cfg.clone(), tensors)?;
            let image = dec.decode(z)?;
            timed(&mut || dec.decode(z).map(drop))?;
            (image, "cpu".to_string())
        }
        Some(g) => {
            let dec = sparsedit::gpu::decoder::GpuDecoder::load(g, cfg.clone(), tensors)?;
            let plan = dec.plan(g, shape[0], shape[2] / cfg.upscale(), shape[3] / cfg.upscale())?;
            let zv = to_vec_f32(z)?;
            let v = dec.decode(g, &plan, &zv)?;
            timed(&mut || dec.decode(g, &plan, &zv).map(drop))?;
            (Tensor::from_vec(v, &shape, &Device::Cpu)?, format!("gpu: {}", g.describe()))
        }
    };
    times.sort_by(f64::total_cmp);
    Ok((image, on, times.get(times.len() / 2).copied()))
}

/// A decoder's raw output mapped to [-1, 1] (what `write_png` takes).
fn decoded_for_png(cfg: &DecoderConfig, image: Tensor) -> Result<Tensor> {
    let (a, b) = cfg.to_signed_range();
    Ok(image.affine(a, b)?)
}

fn decode(a: DecodeArgs) -> Result<()> {
    let (cfg, tensors) = load_decoder(&a.decoder, &a.flags)?;
    let gpu = open_backend(&a.backend)?;
    let inputs = read_inputs(&a.latents)?;
    let z = match inputs.get("z") {
        Some(z) => z,
        None => need(&inputs, "sample", &a.latents).map_err(|_| Error::InvalidArgument(format!("{}: no tensor 'z'", a.latents.display())))?,
    };
    let z = z.to_dtype(DType::F32)?;
    let z = if z.rank() == 3 { z.unsqueeze(0)? } else { z };
    cfg.output_shape(z.dims()).map_err(|e| Error::InvalidArgument(format!("{}: {e}", a.latents.display())))?;
    let started = std::time::Instant::now();
    let (image, on, median) = run_decoder(&cfg, tensors, &z, gpu.as_ref(), a.repeats)?;
    let first = started.elapsed().as_secs_f64() - median.unwrap_or(0.0) * a.repeats as f64;
    eprintln!("decoded {:?} -> {:?} with {} in {first:.2} s ({on})", z.dims(), image.dims(), cfg.arch_name());
    if let Some(m) = median {
        eprintln!("decode time, weights loaded: {:.2} ms (median of {} runs)", m * 1e3, a.repeats);
    }
    let map: HashMap<String, Tensor> = [("image".to_string(), image.clone())].into_iter().collect();
    candle_core::safetensors::save(&map, &a.out)
        .map_err(|e| Error::Io { path: a.out.display().to_string(), source: std::io::Error::other(e.to_string()) })?;
    println!("wrote {}", a.out.display());
    if let Some(p) = &a.png {
        write_png(&decoded_for_png(&cfg, image)?, p)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn random_pack(a: RandomPackArgs) -> Result<()> {
    let quant = TensorType::parse(&a.quant)?;
    let name = format!("{}-random-seed{}", a.preset, a.seed);
    if let Ok(dec) = DecoderConfig::preset(&a.preset) {
        let tensors = dec.random_tensors(a.seed)?;
        return write_any_pack_file(&a.out, PackCfg::Decoder(&dec), &tensors, quant, &name, false);
    }
    let cfg = Config::preset(&a.preset)?;
    let tensors = sparsedit::bench::random_tensors(&cfg, a.seed)?;
    write_pack_file(&a.out, &cfg, &tensors, quant, &name, false)
}

fn dit_to_sparse(a: DitToSparseArgs) -> Result<()> {
    let quant = TensorType::parse(&a.quant)?;
    let layout = parse_layout(&a.layout)?;
    let (dense_cfg, dense) = load_model_tensors(&a.ckpt, &a.import)?;
    let (cfg, sparse) = dit_to_sparsedit(&dense, &dense_cfg, layout)?;
    let check = Model::from_tensors(cfg.clone(), sparse.clone())?;
    drop(check);
    let name = format!("{}-sparsedit", a.ckpt.file_stem().and_then(|s| s.to_str()).unwrap_or("model"));
    write_pack_file(&a.out, &cfg, &sparse, quant, &name, false)
}

fn info(path: &Path) -> Result<()> {
    let (h, file_len) = read_header_file(path)?;
    if matches!(h.meta("general.architecture").and_then(MetaValue::as_str), Some("taesd" | "sdvae")) {
        return decoder_info(&h, file_len);
    }
    let cfg = sparsedit::pack::config_from_header(&h)?;
    let mut types: HashMap<&str, (usize, usize)> = HashMap::new();
    for t in &h.tensors {
        let e = types.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.nbytes;
    }
    let params: usize = h.tensors.iter().map(|t| t.shape.iter().product::<usize>()).sum();
    println!("architecture: {}", cfg.arch_name());
    if let Some(MetaValue::String(n)) = h.meta("general.name") {
        println!("name: {n}");
    }
    println!(
        "input: {}x{}x{} (patch {}, {} tokens on a {}x{} grid)",
        cfg.in_channels,
        cfg.input_size,
        cfg.input_size,
        cfg.patch_size,
        cfg.num_tokens(),
        cfg.grid(),
        cfg.grid()
    );
    println!(
        "width: {}, heads: {}, mlp: {}, classes: {}{}, learned sigma: {}",
        cfg.hidden_size,
        cfg.num_heads,
        cfg.mlp_hidden,
        cfg.num_classes,
        if cfg.class_null { " (+ null label)" } else { "" },
        cfg.learn_sigma
    );
    println!("parameters: {params} ({:.2} M, pos_embed included)", params as f64 / 1e6);
    println!("bytes: {file_len} ({:.2} MB)", file_len as f64 / 1e6);
    let mut tys: Vec<_> = types.into_iter().collect();
    tys.sort();
    let tys: Vec<String> = tys.iter().map(|(k, (n, b))| format!("{k}: {n} tensors, {:.2} MB", *b as f64 / 1e6)).collect();
    println!("tensor types: {}", tys.join("; "));
    match cfg.layout {
        sparsedit::Layout::Dense { depth } => println!("layout: dense, {depth} blocks"),
        sparsedit::Layout::Sparse(s) => {
            println!(
                "layout: {} poolingformer, {} SDTM x [merge {}, semantic {}, recover {}, dense {}], {} top; depth {}; semantic size {}",
                s.num_poolingformer,
                s.num_sdtm,
                s.group[0],
                s.group[1],
                s.group[2],
                s.group[3],
                s.num_top,
                cfg.layout.depth(),
                cfg.semantic_size
            );
        }
    }
    for name in cfg.layout.block_names() {
        println!("  {name}");
    }
    Ok(())
}

fn decoder_info(h: &sparsedit::gguf::GgufHeader, file_len: u64) -> Result<()> {
    let cfg = DecoderConfig::from_header(h)?;
    println!("architecture: {} (latent decoder)", cfg.arch_name());
    if let Some(MetaValue::String(n)) = h.meta("general.name") {
        println!("name: {n}");
    }
    match &cfg {
        DecoderConfig::Taesd(c) => println!("latent channels: {}, width: {}, output channels: {}", c.latent_channels, c.width, c.out_channels),
        DecoderConfig::SdVae(c) => println!(
            "latent channels: {}, block_out_channels: {:?}, layers per block: {}, norm groups: {}, output channels: {}, input = latent / {}",
            c.latent_channels, c.block_out_channels, c.layers_per_block, c.norm_num_groups, c.out_channels, c.scaling_factor
        ),
    }
    println!("upscaling: {}x", cfg.upscale());
    let params: usize = h.tensors.iter().map(|t| t.shape.iter().product::<usize>()).sum();
    println!("parameters: {params} ({:.2} M)", params as f64 / 1e6);
    println!("bytes: {file_len} ({:.2} MB)", file_len as f64 / 1e6);
    Ok(())
}

fn read_inputs(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| Error::Checkpoint {
        path: path.display().to_string(),
        reason: e.to_string().lines().next().unwrap_or("").to_string(),
    })
}

fn need<'a>(m: &'a HashMap<String, Tensor>, name: &str, path: &Path) -> Result<&'a Tensor> {
    m.get(name).ok_or_else(|| Error::InvalidArgument(format!("{}: no tensor '{name}'", path.display())))
}

/// Labels as integers; float labels must be whole numbers.
fn labels(t: &Tensor) -> Result<Vec<i64>> {
    let v: Vec<f64> = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
    v.iter()
        .map(|&x| if x.fract() == 0.0 && x.is_finite() { Ok(x as i64) } else { Err(Error::InvalidArgument(format!("label {x} is not an integer"))) })
        .collect()
}

fn forward(a: ForwardArgs) -> Result<()> {
    let inputs = read_inputs(&a.inputs)?;
    let x = need(&inputs, "x", &a.inputs)?.to_dtype(DType::F32)?;
    let t: Vec<f32> = need(&inputs, "t", &a.inputs)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    let y = labels(need(&inputs, "y", &a.inputs)?)?;
    let engine = load_model(&a.model)?;
    let grid = engine.cfg().semantic_size;
    let out = engine.forward(&x, &t, &y, grid)?;
    let mut tensors = vec![("out".to_string(), out)];
    if let Some(scale) = inputs.get("cfg_scale") {
        let s = scale.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let s = *s.first().ok_or_else(|| Error::InvalidArgument("cfg_scale is empty".into()))?;
        let channels = if a.cfg_all_channels { engine.cfg().in_channels } else { 3 };
        // The reference forward_with_cfg: the first half's latent for both halves.
        let b = x.dim(0)?;
        if b % 2 != 0 {
            return Err(Error::InvalidArgument(format!("cfg_scale needs an even batch ([cond; uncond]), got {b}")));
        }
        let half = x.narrow(0, 0, b / 2)?;
        let combined = Tensor::cat(&[&half, &half], 0)?;
        let raw = engine.forward(&combined, &t, &y, grid)?;
        tensors.push(("out_cfg".to_string(), sparsedit::model::apply_cfg(&raw, s, channels)?));
    }
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, &a.out).map_err(|e| Error::Io {
        path: a.out.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    println!("wrote {}", a.out.display());
    Ok(())
}

fn sample(a: SampleArgs) -> Result<()> {
    let kind = SamplerKind::parse(&a.sampler, a.eta)?;
    if a.steps == 0 || a.steps > 1000 {
        return Err(Error::InvalidArgument(format!("--steps {} must be in 1..=1000", a.steps)));
    }
    if !a.cfg.is_finite() {
        return Err(Error::InvalidArgument("--cfg must be finite".into()));
    }
    let engine = load_model(&a.model)?;
    let cfg = engine.cfg().clone();
    if a.class < 0 || a.class >= cfg.num_classes as i64 {
        return Err(Error::InvalidArgument(format!("--class {} is out of range 0..{} for this model", a.class, cfg.num_classes)));
    }
    let schedule = match (&a.schedule, a.model.import.semantic_size) {
        (Some(_), Some(_)) => {
            return Err(Error::InvalidArgument("give --semantic-size (fixed grid) or --schedule (timestep-wise), not both".into()))
        }
        (Some(s), None) => GridSchedule::parse_rates(s)?,
        (None, _) => GridSchedule::Fixed(cfg.semantic_size),
    };
    schedule.validate()?;
    if let (Some(_), GridSchedule::Fixed(s)) = (cfg.pooled_middle, &schedule) {
        if *s >= cfg.grid() {
            return Err(Error::InvalidArgument(format!(
                "--pooled-middle needs a grid coarser than the model's {0}x{0}: pass --semantic-size below {0} or --schedule",
                cfg.grid()
            )));
        }
    }
    let respacing = a.respacing.clone().unwrap_or_else(|| default_respacing(a.steps, matches!(kind, SamplerKind::Ddim { .. })));
    let sampler = Sampler::new(&respacing, kind, cfg.learn_sigma)?;
    // The decoder is read and checked before any sampling work.
    let decoder = match &a.decoder {
        Some(p) => {
            let (dcfg, tensors) = load_decoder(p, &DecoderFlags { norm_groups: None, scaling_factor: None })?;
            if dcfg.latent_channels() != cfg.in_channels {
                return Err(Error::InvalidArgument(format!(
                    "{}: the decoder takes {} latent channels, the model makes {}",
                    p.display(),
                    dcfg.latent_channels(),
                    cfg.in_channels
                )));
            }
            Some((dcfg, tensors))
        }
        None => None,
    };

    let shape = (cfg.in_channels, cfg.input_size, cfg.input_size);
    let mut seeded = SeededNoise::new(a.seed);
    let z = match &a.noise {
        Some(p) => {
            let m = read_inputs(p)?;
            let z = need(&m, "z", p)?.to_dtype(DType::F32)?;
            let z = if z.rank() == 3 { z.unsqueeze(0)? } else { z };
            if z.rank() != 4 || z.dims()[1..] != [shape.0, shape.1, shape.2] {
                return Err(Error::InvalidArgument(format!(
                    "{}: z has shape {:?}, the model needs (n, {}, {}, {})",
                    p.display(),
                    z.dims(),
                    shape.0,
                    shape.1,
                    shape.2
                )));
            }
            z
        }
        None => {
            if a.num == 0 {
                return Err(Error::InvalidArgument("--num must be at least 1".into()));
            }
            let n = a.num * shape.0 * shape.1 * shape.2;
            Tensor::from_vec(seeded.normal(n), (a.num, shape.0, shape.1, shape.2), &Device::Cpu)?
        }
    };
    let n = z.dim(0)?;
    let y = vec![a.class; n];
    let guidance = (a.cfg > 1.0)
        .then(|| {
            cfg.null_label().map(|null| Guidance {
                scale: a.cfg,
                guided_channels: if a.cfg_all_channels { cfg.in_channels } else { 3 },
                null_label: null as i64,
            })
        })
        .flatten();
    if a.cfg > 1.0 && guidance.is_none() {
        return Err(Error::InvalidArgument("this model has no null label: use --cfg 1".into()));
    }
    let pb = bar(sampler.diffusion.num_steps() as u64, "sampling");
    let n_tok = cfg.num_tokens();
    let noise: &mut dyn NoiseSource = &mut seeded;
    let started = std::time::Instant::now();
    let out = match &engine {
        Engine::Cpu(model) => sampler.sample(
            |x, t, y| model.forward(x, t, y, schedule.grid_at(t[0] as f64, sparsedit::diffusion::NUM_TRAIN_TIMESTEPS, n_tok)),
            &z,
            &y,
            guidance,
            noise,
            |s| {
                pb.set_position(s.iter as u64 + 1);
                Ok(())
            },
        )?,
        Engine::Gpu(g, model) => {
            let v = pollster::block_on(sparsedit::gpu::sample::sample_gpu(
                g,
                model,
                &sampler,
                &to_vec_f32(&z)?,
                &y,
                guidance,
                &schedule,
                noise,
                Default::default(),
                |s| {
                    pb.set_position(s.iter as u64 + 1);
                    Ok(true)
                },
            ))?;
            Tensor::from_vec(v, z.dims(), &Device::Cpu)?
        }
    };
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let calls = sampler.diffusion.num_steps();
    let batch = n * if guidance.is_some() { 2 } else { 1 };
    let macs = sample_macs(&cfg, &schedule, &sampler.diffusion.timestep_map, batch);
    eprintln!(
        "{n} sample(s), {calls} steps ({respacing}), {:.2} s on {}, {:.1} GMACs (linear+norm+attention)",
        secs,
        engine.name(),
        macs as f64 / 1e9
    );
    if let Some(p) = &a.latent_out {
        let map: HashMap<String, Tensor> = [("sample".to_string(), out.clone())].into_iter().collect();
        candle_core::safetensors::save(&map, p)
            .map_err(|e| Error::Io { path: p.display().to_string(), source: std::io::Error::other(e.to_string()) })?;
        println!("wrote {}", p.display());
    }
    let image = match decoder {
        Some((dcfg, tensors)) => {
            let started = std::time::Instant::now();
            let gpu = match &engine {
                Engine::Gpu(g, _) => Some(g.as_ref()),
                Engine::Cpu(_) => None,
            };
            let (image, on, _) = run_decoder(&dcfg, tensors, &out, gpu, 0)?;
            eprintln!("decoded with {} in {:.2} s ({on})", dcfg.arch_name(), started.elapsed().as_secs_f64());
            decoded_for_png(&dcfg, image)?
        }
        None => out,
    };
    if let Some(p) = &a.out {
        write_png(&image, p)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// Write samples in [-1, 1] (n, 1 or 3, H, W) side by side as one PNG.
fn write_png(x: &Tensor, path: &Path) -> Result<()> {
    let (n, c, h, w) = x.dims4()?;
    if c != 1 && c != 3 {
        return Err(Error::InvalidArgument(format!(
            "--out needs a pixel-space model (1 or 3 channels); this one has {c} latent channels: use --latent-out"
        )));
    }
    let v = to_vec_f32(x)?;
    let to_u8 = |f: f32| (((f.clamp(-1.0, 1.0) + 1.0) * 127.5).round()) as u8;
    let (gw, gh) = (n * w, h);
    let mut buf = vec![0u8; gw * gh * c];
    for i in 0..n {
        for ch in 0..c {
            for yy in 0..h {
                for xx in 0..w {
                    let src = ((i * c + ch) * h + yy) * w + xx;
                    buf[(yy * gw + i * w + xx) * c + ch] = to_u8(v[src]);
                }
            }
        }
    }
    let color = if c == 1 { image::ExtendedColorType::L8 } else { image::ExtendedColorType::Rgb8 };
    image::save_buffer(path, &buf, gw as u32, gh as u32, color)
        .map_err(|e| Error::Io { path: path.display().to_string(), source: std::io::Error::other(e.to_string()) })
}

fn flops(a: FlopsArgs) -> Result<()> {
    let cfg = match (&a.preset, &a.model) {
        (Some(p), _) => Config::preset(p)?,
        (None, Some(m)) => sparsedit::pack::config_from_header(&read_header_file(m)?.0)?,
        (None, None) => return Err(Error::InvalidArgument("give --preset or --model".into())),
    };
    let mut cfg = cfg;
    if let Some(pm) = &a.pooled_middle {
        cfg.pooled_middle = Some(PooledMiddle::parse(pm, cfg.layout.depth())?);
        cfg.validate()?;
    }
    let report = count_macs(&cfg, a.semantic_size);
    let mut stdout = std::io::stdout().lock();
    let title = match (&a.preset, &a.model) {
        (Some(p), _) => p.clone(),
        (_, Some(m)) => m.display().to_string(),
        _ => String::new(),
    };
    let text = if a.json { report.to_json() } else { report.to_markdown(&title) };
    writeln!(stdout, "{text}").map_err(|e| Error::Io { path: "stdout".into(), source: e })
}

fn bench(a: BenchArgs) -> Result<()> {
    use sparsedit::bench::{bench_model, counterpart, matmul_gflops, random_tensors, table, BenchOptions};
    let quant = TensorType::parse(&a.quant)?;
    let opts = BenchOptions { steps: a.steps, batch: a.batch, repeats: a.repeats, quant };
    let gpu = match a.backend.as_str() {
        "cpu" => None,
        "gpu" => Some(Gpu::new_blocking()?),
        "auto" => Gpu::new_blocking().ok(),
        other => return Err(Error::InvalidArgument(format!("unknown backend {other:?} (gpu, cpu or auto)"))),
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
    let name = |c: &Config| match c.layout {
        sparsedit::Layout::Dense { depth } => format!("DiT, {depth} blocks, N={}", c.num_tokens()),
        sparsedit::Layout::Sparse(s) => format!(
            "SparseDiT {}+{}x{:?}+{}, s={}",
            s.num_poolingformer, s.num_sdtm, s.group, s.num_top, c.semantic_size
        ),
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
            let (d, s) = (
                sparsedit::bench::block_times(g, &dense.0, &dense.1, rows, quant)?,
                sparsedit::bench::block_times(g, &sparse.0, &sparse.1, rows, quant)?,
            );
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
