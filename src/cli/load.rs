//! Reading what the commands run: model tensors and latent decoders from a pack or a checkpoint
//! imported on the fly, and the GPU a `--backend` asks for.

use std::path::Path;

use sparsedit::config::Config;
use sparsedit::decoder::{canonical_decoder_tensors, is_decoder_checkpoint, DecoderConfig, DecoderOptions};
use sparsedit::gguf::MetaValue;
use sparsedit::gpu::Gpu;
use sparsedit::import::{infer_config, read_checkpoint_full, ImportOptions};
use sparsedit::model::TensorMap;
use sparsedit::pack::{load_decoder_pack_bytes, load_pack_file};
use sparsedit::{Error, Result};

use super::{Backend, DecoderFlags, ImportFlags};

/// The import flags, with the heads a checkpoint's own files state when `--heads` is not given.
pub(super) fn import_opts_for(f: &ImportFlags, ck_heads: Option<usize>) -> ImportOptions {
    ImportOptions { heads: f.heads.or(ck_heads), semantic_size: f.semantic_size }
}

pub(super) fn is_pack(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// `--semantic-size` overrides a pack's stored grid; `--heads` must agree with the pack's.
pub(super) fn apply_pack_flags(cfg: &mut Config, flags: &ImportFlags) -> Result<()> {
    if let Some(s) = flags.semantic_size {
        cfg.semantic_size = s;
    }
    match flags.heads {
        Some(h) if h != cfg.num_heads => Err(Error::InvalidArgument(format!("--heads {h} disagrees with the pack's {} heads", cfg.num_heads))),
        _ => Ok(()),
    }
}

/// A pack's parse errors name the file.
pub(super) fn in_file(path: &Path) -> impl Fn(Error) -> Error + '_ {
    move |e| match e {
        Error::Gguf(m) => Error::Gguf(format!("{}: {m}", path.display())),
        other => other,
    }
}

/// A pack, or a checkpoint imported on the fly; flags override the stored semantic size.
pub(super) fn load_model_tensors(path: &Path, flags: &ImportFlags) -> Result<(Config, TensorMap)> {
    if is_pack(path) {
        let p = load_pack_file(path)?;
        let mut cfg = p.cfg;
        apply_pack_flags(&mut cfg, flags)?;
        Ok((cfg, p.tensors))
    } else {
        let ck = read_checkpoint_full(path)?;
        let cfg = infer_config(&ck.tensors, &import_opts_for(flags, ck.heads))?;
        Ok((cfg, ck.tensors))
    }
}

/// The GPU for `--backend gpu`, none for `cpu`; `auto` falls back to the CPU with a note.
pub(super) fn open_backend(backend: Backend) -> Result<Option<Gpu>> {
    Ok(noted(sparsedit::engine::Backend::from(backend).open()?))
}

fn noted((gpu, fell_back): (Option<Gpu>, Option<Error>)) -> Option<Gpu> {
    if let Some(e) = fell_back {
        eprintln!("note: {e}; using the CPU backend");
    }
    gpu
}

/// A file given to `convert` / `decode`, read once.
pub(super) enum Loaded {
    /// A latent decoder (pack or checkpoint), tensors under their canonical names.
    Decoder(DecoderConfig, TensorMap),
    /// A checkpoint that is not a decoder (a DiT / SparseDiT state dict, or anything else).
    Checkpoint(TensorMap, Option<usize>),
    /// A pack that is not a decoder pack (read again by the DiT path).
    ModelPack,
}

pub(super) fn load_any(path: &Path, flags: &DecoderFlags) -> Result<Loaded> {
    if is_pack(path) {
        let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
        let g = sparsedit::gguf::Gguf::parse(&bytes).map_err(in_file(path))?;
        let arch = g.header.meta("general.architecture").and_then(MetaValue::as_str).unwrap_or("");
        if arch != "taesd" && arch != "sdvae" {
            return Ok(Loaded::ModelPack);
        }
        if flags.norm_groups.is_some() || flags.scaling_factor.is_some() {
            return Err(Error::InvalidArgument("--norm-groups / --scaling-factor apply to checkpoints; a pack stores them".into()));
        }
        let p = load_decoder_pack_bytes(&bytes).map_err(in_file(path))?;
        return Ok(Loaded::Decoder(p.cfg, p.tensors));
    }
    let ck = read_checkpoint_full(path)?;
    let map = ck.tensors;
    if !is_decoder_checkpoint(&map) {
        return Ok(Loaded::Checkpoint(map, ck.heads));
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
    // diffusers' config.json: beside the weights file, or in the model / pipeline folder given.
    let json = match sparsedit::diffusers::locate(ckpt) {
        Some(files) => files.config,
        None => ckpt.with_file_name("config.json"),
    };
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
pub(super) fn load_decoder(path: &Path, flags: &DecoderFlags) -> Result<(DecoderConfig, TensorMap)> {
    match load_any(path, flags)? {
        Loaded::Decoder(cfg, tensors) => Ok((cfg, tensors)),
        Loaded::ModelPack => Err(Error::InvalidArgument(format!(
            "{}: a DiT / SparseDiT pack, not a latent decoder (taesd / sdvae)",
            path.display()
        ))),
        Loaded::Checkpoint(..) => Err(Error::InvalidArgument(format!(
            "{}: not a latent decoder checkpoint (expected TAESD keys 1.weight, 3.conv.0.weight, ... or SD-VAE decoder.* keys)",
            path.display()
        ))),
    }
}
