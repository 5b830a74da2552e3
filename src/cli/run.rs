//! `forward` (model(x, t, y) on given inputs) and `sample` (a class's images or latents), on the
//! backend `--backend` picks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};
use clap::Args;
use sparsedit::config::{Config, GridSchedule, PooledMiddle};
use sparsedit::engine::{Engine, SampleRequest};
use sparsedit::flops::sample_macs;
use sparsedit::model::to_vec_f32;
use sparsedit::{Error, Result};

use super::decode::{decoded_for_png, run_decoder};
use super::io::{bar, labels, need, read_inputs, save_tensors, write_gif, write_png};
use super::load::{apply_pack_flags, in_file, is_pack, load_decoder, load_model_tensors, open_backend};
use super::{Backend, DecoderFlags, ImportFlags, SamplerChoice};

#[derive(Args)]
pub(super) struct ModelFlags {
    /// Model: a .gguf pack, or a checkpoint (.pt/.pth/.safetensors) imported on the fly.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    import: ImportFlags,
    /// Compute backend: gpu (WebGPU via wgpu), cpu (the candle reference), or auto (gpu when a
    /// hardware adapter exists; a software one such as llvmpipe is slower than the CPU path).
    #[arg(long, value_enum, hide_possible_values = true, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Training-free sparsification of a plain DiT: blocks START:END (or `default`, the middle
    /// 60%) run on the pooled --semantic-size grid, their update added back to the dense tokens.
    #[arg(long)]
    pooled_middle: Option<String>,
}

#[derive(Args)]
pub(super) struct ForwardArgs {
    #[command(flatten)]
    model: ModelFlags,
    /// safetensors with x (B,C,H,W) — (B,F,C,H,W) for a video model —, t (B), y (B; ignored by an
    /// unconditional model, may be absent), optional cfg_scale (1).
    #[arg(long)]
    inputs: PathBuf,
    /// Output safetensors: out, and out_cfg when cfg_scale is given.
    #[arg(long)]
    out: PathBuf,
    /// Guide all eps channels instead of the reference's first 3 (DiT) or 4 (Latte).
    #[arg(long)]
    cfg_all_channels: bool,
}

#[derive(Args)]
pub(super) struct SampleArgs {
    #[command(flatten)]
    model: ModelFlags,
    /// Class label: 0..N-1 for a model of N classes, or N (the null label) for an unconditional
    /// sample; not needed by an unconditional model.
    #[arg(long)]
    class: Option<i64>,
    /// Number of images / clips (ignored when --noise gives the batch).
    #[arg(long, default_value_t = 1)]
    num: usize,
    /// Denoising steps [default: the official script's: 50 for DiT / SparseDiT, 250 for Latte].
    #[arg(long)]
    steps: Option<usize>,
    /// ddim or ddpm [default: the official script's: ddim for DiT / SparseDiT, ddpm for Latte].
    #[arg(long, value_enum, ignore_case = true, hide_possible_values = true)]
    sampler: Option<SamplerChoice>,
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Classifier-free guidance scale, <= 1: no guidance [default: the official script's: 4 for
    /// DiT / SparseDiT, 7 for a class-conditional Latte, none for an unconditional one].
    #[arg(long)]
    cfg: Option<f64>,
    /// Guide all eps channels instead of the reference's first 3 (DiT) or 4 (Latte).
    #[arg(long)]
    cfg_all_channels: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Respacing (e.g. 250, ddim50); default K for both samplers: K evenly strided steps up to
    /// t = 999, as DiT's sample.py (`ddimK` gives DDIM's stride 1000/K: 0, 1000/K, ...).
    #[arg(long)]
    respacing: Option<String>,
    /// Starting latent: safetensors with z (n,C,H,W), or (n,F,C,H,W) for a video model.
    #[arg(long)]
    noise: Option<PathBuf>,
    /// Write the final latent as safetensors (tensor `sample`).
    #[arg(long)]
    latent_out: Option<PathBuf>,
    /// Write a PNG (pixel-space models: 1 or 3 channels in [-1, 1], or with --decoder): the
    /// images in a row; for a video model one row per clip, its frames left to right.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Video models: write the clips as a looping animated GIF (the clips side by side).
    #[arg(long)]
    gif: Option<PathBuf>,
    /// Frames per second of --gif (GIF delays are whole 1/100 s: 10, 20, 25, 50 are exact).
    #[arg(long, default_value_t = 10)]
    fps: u32,
    /// Scale --out and --gif up this many times (nearest neighbour; tiny models draw 16 px).
    #[arg(long, default_value_t = 1)]
    zoom: usize,
    /// Timestep-wise pruning (instead of the fixed --semantic-size grid): RMIN:RMAX (e.g.
    /// 0.61:0.86), or `trained` for the rates the pack records its fine-tuning with.
    #[arg(long)]
    schedule: Option<String>,
    /// Latent decoder (taesd / sdvae pack, or its checkpoint): `--out` then writes the decoded
    /// images; runs on the sampling backend.
    #[arg(long)]
    decoder: Option<PathBuf>,
}

pub(super) fn forward(a: ForwardArgs) -> Result<()> {
    let inputs = read_inputs(&a.inputs)?;
    let x = need(&inputs, "x", &a.inputs)?.to_dtype(DType::F32)?;
    let t: Vec<f32> = need(&inputs, "t", &a.inputs)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    let engine = load_model(&a.model)?;
    let y = match inputs.get("y") {
        Some(y) => labels(y)?,
        // An unconditional model ignores labels (the official Latte forward with `extras: 1`).
        None if !engine.cfg().is_class_conditional() => vec![0; x.dim(0)?],
        None => need(&inputs, "y", &a.inputs).map(|_| Vec::new())?,
    };
    let grid = engine.cfg().semantic_size;
    let out = engine.forward(&x, &t, &y, grid)?;
    let mut tensors = vec![("out".to_string(), out)];
    let guided = inputs.get("cfg_scale").filter(|_| {
        let conditional = engine.cfg().is_class_conditional();
        if !conditional {
            eprintln!("note: an unconditional model has no guidance: cfg_scale ignored, no out_cfg");
        }
        conditional
    });
    if let Some(scale) = guided {
        let s = scale.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let s = *s.first().ok_or_else(|| Error::InvalidArgument("cfg_scale is empty".into()))?;
        let channels = if a.cfg_all_channels { engine.cfg().in_channels } else { engine.cfg().official_guided_channels() };
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
    save_tensors(tensors.into_iter().collect(), &a.out)?;
    println!("wrote {}", a.out.display());
    Ok(())
}

pub(super) fn sample(a: SampleArgs) -> Result<()> {
    let engine = load_model(&a.model)?;
    let cfg = engine.cfg().clone();
    if a.gif.is_some() && !cfg.is_video() {
        return Err(Error::InvalidArgument(format!("--gif needs a video model; this is {} (use --out for a PNG)", cfg.arch_name())));
    }
    let schedule = match (&a.schedule, a.model.import.semantic_size) {
        (Some(_), Some(_)) => {
            return Err(Error::InvalidArgument("give --semantic-size (fixed grid) or --schedule (timestep-wise), not both".into()))
        }
        (Some(s), None) if s == "trained" => match cfg.trained_rates {
            Some([r_min, r_max]) => Some(GridSchedule::Timestep { r_min, r_max }),
            None => {
                return Err(Error::InvalidArgument(
                    "--schedule trained: this pack records no training schedule (convert --trained-rates RMIN:RMAX); give the rates".into(),
                ))
            }
        },
        (Some(s), None) => Some(GridSchedule::parse_rates(s)?),
        (None, _) => None, // the model's (or --semantic-size's) grid at every step
    };
    let latent = match &a.noise {
        Some(p) => Some(read_latent(p, &cfg)?),
        None => None,
    };
    // Unset flags take the official sampling script's values for this model family.
    let official = SampleRequest::official_for(&cfg);
    let label = match (a.class, cfg.is_class_conditional()) {
        (Some(l), _) => l,
        (None, false) => 0, // ignored by an unconditional model
        (None, true) => {
            return Err(Error::InvalidArgument(format!(
                "--class is required: 0..{} for this model's {} classes{}",
                cfg.num_classes - 1,
                cfg.num_classes,
                cfg.null_label().map(|n| format!(", or {n} (the null label) for an unconditional sample")).unwrap_or_default()
            )))
        }
    };
    let req = SampleRequest {
        label,
        num: a.num,
        steps: a.steps.unwrap_or(official.steps),
        sampler: match a.sampler {
            Some(s) => s.kind(a.eta)?,
            None => official.sampler.with_eta(a.eta)?,
        },
        respacing: a.respacing.clone(),
        cfg_scale: a.cfg.unwrap_or(official.cfg_scale),
        guide_all_channels: a.cfg_all_channels,
        seed: a.seed,
        schedule,
        latent,
        preview: false,
        trace: false,
    };
    // Every option and the decoder are checked before any sampling work.
    let plan = req.plan(&cfg)?;
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

    let pb = bar(plan.grids.len() as u64, "sampling");
    let started = std::time::Instant::now();
    let sampled = pollster::block_on(engine.sample(&req, |s| {
        pb.set_position(s.iter as u64 + 1);
        Ok(true)
    }))?;
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let macs = sample_macs(&cfg, &plan.schedule, &plan.timesteps, plan.rows());
    eprintln!(
        "{} sample(s), {} steps ({}), {:.2} s on {}, {:.1} GMACs (linear+norm+attention)",
        plan.images,
        plan.grids.len(),
        plan.respacing,
        secs,
        engine.describe(),
        macs as f64 / 1e9
    );
    let out = Tensor::from_vec(sampled.latent, sampled.shape.to_vec(), &Device::Cpu)?;
    if let Some(p) = &a.latent_out {
        let map: HashMap<String, Tensor> = [("sample".to_string(), out.clone())].into_iter().collect();
        save_tensors(map, p)?;
        println!("wrote {}", p.display());
    }
    let image = match decoder {
        Some((dcfg, tensors)) => {
            let started = std::time::Instant::now();
            // A clip's frames decode as images: (n, F, C, H, W) -> (n·F, C, H, W) and back.
            let dims = out.dims().to_vec();
            let frames = if dims.len() == 5 { out.reshape((dims[0] * dims[1], dims[2], dims[3], dims[4]))? } else { out };
            let (image, on, _) = run_decoder(&dcfg, tensors, &frames, engine.gpu().map(|g| g.as_ref()), 0)?;
            eprintln!("decoded with {} in {:.2} s ({on})", dcfg.arch_name(), started.elapsed().as_secs_f64());
            let image = decoded_for_png(&dcfg, image)?;
            match dims[..] {
                [n, f, ..] if dims.len() == 5 => {
                    let (_, c, h, w) = image.dims4()?;
                    image.reshape((n, f, c, h, w))?
                }
                _ => image,
            }
        }
        None => out,
    };
    if let Some(p) = &a.out {
        write_png(&image, p, a.zoom)?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &a.gif {
        write_gif(&image, p, a.zoom, 1000 / a.fps.clamp(1, 100))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// `--noise`: the starting latent `z` (n, C, I, I) — (n, F, C, I, I) for a video model — of a
/// safetensors file, flattened.
fn read_latent(p: &Path, cfg: &Config) -> Result<Vec<f32>> {
    let want = cfg.latent_shape(1);
    let m = read_inputs(p)?;
    let z = need(&m, "z", p)?.to_dtype(DType::F32)?;
    let z = if z.rank() + 1 == want.len() { z.unsqueeze(0)? } else { z };
    if z.rank() != want.len() || z.dims()[1..] != want[1..] {
        return Err(Error::InvalidArgument(format!("{}: z has shape {:?}, the model needs (n, {})", p.display(), z.dims(), cfg.latent_dims_text())));
    }
    to_vec_f32(&z)
}

/// The model of `--model` on `--backend`, with `--pooled-middle` applied.
fn load_model(flags: &ModelFlags) -> Result<Engine> {
    let mut engine = if is_pack(&flags.model) {
        // A pack's linear weights go to the GPU as stored (quantized).
        let bytes = std::fs::read(&flags.model).map_err(|e| Error::Io { path: flags.model.display().to_string(), source: e })?;
        let in_file = in_file(&flags.model);
        let pack = sparsedit::gguf::Gguf::parse(&bytes).map_err(&in_file)?;
        let mut cfg = sparsedit::pack::config_from_header(&pack.header).map_err(&in_file)?;
        apply_pack_flags(&mut cfg, &flags.import)?;
        let gpu = open_backend(flags.backend)?.map(Rc::new);
        Engine::from_pack(gpu, cfg, &pack).map_err(&in_file)?
    } else {
        let (cfg, tensors) = load_model_tensors(&flags.model, &flags.import)?;
        let gpu = open_backend(flags.backend)?.map(Rc::new);
        Engine::from_tensors(gpu, cfg, tensors)?
    };
    if let Some(pm) = &flags.pooled_middle {
        let pm = Some(PooledMiddle::parse(pm, engine.cfg().layout.depth())?);
        engine.set_pooled_middle(pm)?;
    }
    Ok(engine)
}
