//! File input and output shared by the commands: safetensors in and out, PNG images, GGUF packs
//! written whole with their quantization-error table, and the progress bar.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use sparsedit::config::Config;
use sparsedit::decoder::DecoderConfig;
use sparsedit::gguf::TensorType;
use sparsedit::model::{to_vec_f32, TensorMap};
use sparsedit::pack::{write_decoder_pack, write_pack};
use sparsedit::{Error, Result};

pub(super) fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

pub(super) fn read_inputs(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| Error::Checkpoint {
        path: path.display().to_string(),
        reason: e.to_string().lines().next().unwrap_or("").to_string(),
    })
}

pub(super) fn need<'a>(m: &'a HashMap<String, Tensor>, name: &str, path: &Path) -> Result<&'a Tensor> {
    m.get(name).ok_or_else(|| Error::InvalidArgument(format!("{}: no tensor '{name}'", path.display())))
}

/// Labels as integers; float labels must be whole numbers.
pub(super) fn labels(t: &Tensor) -> Result<Vec<i64>> {
    let v: Vec<f64> = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
    v.iter()
        .map(|&x| if x.fract() == 0.0 && x.is_finite() { Ok(x as i64) } else { Err(Error::InvalidArgument(format!("label {x} is not an integer"))) })
        .collect()
}

/// Write named tensors as one safetensors file.
pub(super) fn save_tensors(tensors: HashMap<String, Tensor>, path: &Path) -> Result<()> {
    candle_core::safetensors::save(&tensors, path)
        .map_err(|e| Error::Io { path: path.display().to_string(), source: std::io::Error::other(e.to_string()) })
}

/// Pixels of images in [-1, 1], laid out as a grid: x (n, C, H, W) is one row of n images; a
/// video's x (n, F, C, H, W) is one row per clip with its F frames left to right. Returns (width,
/// height, channels, bytes) scaled up `zoom` times (nearest), or an error for latent channels.
fn grid_pixels(x: &Tensor, zoom: usize, flag: &str) -> Result<(usize, usize, usize, Vec<u8>)> {
    let (rows, cols, c, h, w) = match *x.dims() {
        [n, c, h, w] => (1, n, c, h, w),
        [n, f, c, h, w] => (n, f, c, h, w),
        ref d => return Err(Error::InvalidArgument(format!("{flag}: images of shape {d:?} (want rank 4 or 5)"))),
    };
    if c != 1 && c != 3 {
        return Err(Error::InvalidArgument(format!(
            "{flag} needs a pixel-space model (1 or 3 channels) or --decoder; this one has {c} latent channels: use --latent-out"
        )));
    }
    let zoom = zoom.max(1);
    let v = to_vec_f32(x)?;
    let to_u8 = |f: f32| (((f.clamp(-1.0, 1.0) + 1.0) * 127.5).round()) as u8;
    let (gw, gh) = (cols * w * zoom, rows * h * zoom);
    let mut buf = vec![0u8; gw * gh * c];
    for (i, img) in v.chunks_exact(c * h * w).enumerate() {
        let (r, col) = (i / cols, i % cols);
        for ch in 0..c {
            for yy in 0..h * zoom {
                for xx in 0..w * zoom {
                    let src = (ch * h + yy / zoom) * w + xx / zoom;
                    buf[((r * h * zoom + yy) * gw + col * w * zoom + xx) * c + ch] = to_u8(img[src]);
                }
            }
        }
    }
    Ok((gw, gh, c, buf))
}

fn image_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io { path: path.display().to_string(), source: std::io::Error::other(e.to_string()) }
}

/// A PNG of images in [-1, 1] (see [`grid_pixels`]: a row of images, or a strip of frames per
/// clip), `zoom` times larger.
pub(super) fn write_png(x: &Tensor, path: &Path, zoom: usize) -> Result<()> {
    let (gw, gh, c, buf) = grid_pixels(x, zoom, "--out")?;
    let color = if c == 1 { image::ExtendedColorType::L8 } else { image::ExtendedColorType::Rgb8 };
    image::save_buffer(path, &buf, gw as u32, gh as u32, color).map_err(|e| image_error(path, e))
}

/// An animated GIF of clips x (n, F, C, H, W) in [-1, 1], looping: GIF frame f shows frame f of
/// every clip side by side, `delay_ms` per frame, `zoom` times larger.
pub(super) fn write_gif(x: &Tensor, path: &Path, zoom: usize, delay_ms: u32) -> Result<()> {
    let [n, f, c, h, w] = *x.dims() else {
        return Err(Error::InvalidArgument(format!("--gif needs a video model's clips (n, F, C, H, W); got shape {:?}", x.dims())));
    };
    // One GIF frame = the n clips' frame j as one row of images.
    let frames = (0..f)
        .map(|j| {
            let row = x.narrow(1, j, 1)?.reshape((n, c, h, w))?;
            let (gw, gh, c, px) = grid_pixels(&row, zoom, "--gif")?;
            let rgba: Vec<u8> = px.chunks_exact(c).flat_map(|p| if c == 1 { [p[0], p[0], p[0], 255] } else { [p[0], p[1], p[2], 255] }).collect();
            let img = image::RgbaImage::from_raw(gw as u32, gh as u32, rgba).ok_or_else(|| Error::InvalidArgument("--gif: frame buffer size".into()))?;
            Ok(image::Frame::from_parts(img, 0, 0, image::Delay::from_numer_denom_ms(delay_ms, 1)))
        })
        .collect::<Result<Vec<_>>>()?;
    let file = std::fs::File::create(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
    let mut enc = image::codecs::gif::GifEncoder::new(std::io::BufWriter::new(file));
    enc.set_repeat(image::codecs::gif::Repeat::Infinite).map_err(|e| image_error(path, e))?;
    enc.encode_frames(frames).map_err(|e| image_error(path, e))
}

/// What a pack holds: a DiT / SparseDiT model or a latent decoder.
#[derive(Clone, Copy)]
pub(super) enum PackCfg<'a> {
    Model(&'a Config),
    Decoder(&'a DecoderConfig),
}

pub(super) fn write_pack_file(out: &Path, cfg: &Config, tensors: &TensorMap, quant: TensorType, name: &str, all: bool) -> Result<()> {
    if out.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors")) {
        return write_safetensors_file(out, cfg, tensors, quant);
    }
    write_any_pack_file(out, PackCfg::Model(cfg), tensors, quant, name, all)
}

/// A model's tensors as an f32 `.safetensors` file under the official key names (a pack
/// dequantised, for PyTorch: e.g. `train/` initialising a video model from the bundled image
/// DiT), written through a `.partial` file. Packs alone hold quantized weights.
fn write_safetensors_file(out: &Path, cfg: &Config, tensors: &TensorMap, quant: TensorType) -> Result<()> {
    if quant != TensorType::F32 {
        return Err(Error::InvalidArgument(format!("{}: a .safetensors output holds f32 tensors; --quant {quant:?} is for .gguf packs", out.display())));
    }
    let f32s = tensors.iter().map(|(k, t)| Ok((k.clone(), t.to_dtype(candle_core::DType::F32)?))).collect::<Result<TensorMap>>()?;
    let tmp = out.with_extension("safetensors.partial");
    candle_core::safetensors::save(&f32s, &tmp)?;
    std::fs::rename(&tmp, out).map_err(|e| Error::Io { path: out.display().to_string(), source: e })?;
    println!("wrote {} ({}, {} f32 tensors, official key names)", out.display(), cfg.arch_name(), f32s.len());
    Ok(())
}

/// Encode a pack and write it (through a `.partial` file, renamed when complete), then print the
/// tensors' quantization errors, worst first (all of them with `all`, else 12).
pub(super) fn write_any_pack_file(out: &Path, cfg: PackCfg, tensors: &TensorMap, quant: TensorType, name: &str, all: bool) -> Result<()> {
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
