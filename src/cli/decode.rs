//! `decode`: latents to images with a latent decoder (TAESD or the SD-VAE), on the CPU or the
//! GPU; also the decode step of `sample --decoder`.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use clap::Args;
use sparsedit::decoder::{Decoder, DecoderConfig};
use sparsedit::gpu::Gpu;
use sparsedit::model::{to_vec_f32, TensorMap};
use sparsedit::{Error, Result};

use super::io::{need, read_inputs, save_tensors, write_png};
use super::load::{load_decoder, open_backend};
use super::{Backend, DecoderFlags};

#[derive(Args)]
pub(super) struct DecodeArgs {
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
    #[arg(long, value_enum, hide_possible_values = true, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Decode this many more times with the weights loaded and print the median time (the first
    /// decode's time includes loading and, on the GPU, compiling the pipelines).
    #[arg(long, default_value_t = 0)]
    repeats: usize,
}

pub(super) fn decode(a: DecodeArgs) -> Result<()> {
    let (cfg, tensors) = load_decoder(&a.decoder, &a.flags)?;
    let gpu = open_backend(a.backend)?;
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
    save_tensors(map, &a.out)?;
    println!("wrote {}", a.out.display());
    if let Some(p) = &a.png {
        write_png(&decoded_for_png(&cfg, image)?, p, 1)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// Decode latents z (B, 4, h, w) on the GPU when given, else on the CPU: the raw image
/// (B, 3, 8h, 8w), where it ran, and the median time of `repeats` more decodes with the
/// decoder already loaded (none when 0).
pub(super) fn run_decoder(cfg: &DecoderConfig, tensors: TensorMap, z: &Tensor, gpu: Option<&Gpu>, repeats: usize) -> Result<(Tensor, String, Option<f64>)> {
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
pub(super) fn decoded_for_png(cfg: &DecoderConfig, image: Tensor) -> Result<Tensor> {
    let (a, b) = cfg.to_signed_range();
    Ok(image.affine(a, b)?)
}
