//! `convert` (a checkpoint or pack to a GGUF pack, models and latent decoders) and
//! `dit-to-sparsedit` (a SparseDiT layout initialised from a dense DiT).

use std::path::PathBuf;

use clap::Args;
use sparsedit::decoder::Decoder;
use sparsedit::import::{dit_to_sparsedit, infer_config, parse_layout};
use sparsedit::model::Model;
use sparsedit::GridSchedule;
use sparsedit::Result;

use super::io::{write_any_pack_file, write_pack_file, PackCfg};
use super::load::{import_opts_for, load_any, load_model_tensors, Loaded};
use super::{DecoderFlags, ImportFlags, Quant};

#[derive(Args)]
pub(super) struct ConvertArgs {
    /// Checkpoint: .pt / .pth (state dict, or under 'ema' / 'model'), .safetensors, a .gguf
    /// pack, a diffusers DiT folder, or hf://owner/repo[@revision][/path] on the Hugging Face Hub.
    ckpt: PathBuf,
    /// Output pack (.gguf), or `.safetensors` for the f32 tensors under official key names.
    #[arg(short, long)]
    out: PathBuf,
    /// Type of the 2-D linear weights: f32, f16, q8_0, q4_0.
    #[arg(long, value_enum, ignore_case = true, hide_possible_values = true, default_value_t = Quant::F32)]
    quant: Quant,
    #[command(flatten)]
    import: ImportFlags,
    /// Latent decoders (TAESD, SD-VAE) only.
    #[command(flatten)]
    decoder: DecoderFlags,
    /// Print every tensor's quantization error (default: the 12 worst).
    #[arg(long)]
    all_tensors: bool,
    /// SparseDiT only: record the timestep schedule RMIN:RMAX the model was fine-tuned with
    /// (`sample --schedule trained` and the page's schedule start from it).
    #[arg(long, value_name = "RMIN:RMAX")]
    trained_rates: Option<String>,
}

#[derive(Args)]
pub(super) struct DitToSparseArgs {
    /// Dense DiT checkpoint (a file, a diffusers folder, or hf://owner/repo[@revision][/path]).
    ckpt: PathBuf,
    /// Output pack (.gguf), or `.safetensors` for the f32 tensors under official key names.
    #[arg(short, long)]
    out: PathBuf,
    /// SparseDiT layout POOL,SDTM,a:b:c:d,TOP; default 1,4,1:3:1:1,3 (the released 256 px run).
    #[arg(long, default_value = "1,4,1:3:1:1,3")]
    layout: String,
    #[arg(long, value_enum, ignore_case = true, default_value_t = Quant::F32)]
    quant: Quant,
    #[command(flatten)]
    import: ImportFlags,
}

/// The pack's `general.name`: the Hub repo (`owner/name`) of an `hf://` address, else the file or
/// folder name without its extension.
fn pack_name(ckpt: &std::path::Path) -> String {
    match ckpt.to_str().and_then(|s| s.strip_prefix("hf://")) {
        Some(rest) => rest.split('/').take(2).collect::<Vec<_>>().join("/").split('@').next().unwrap_or("model").to_string(),
        None => ckpt.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string(),
    }
}

pub(super) fn convert(mut a: ConvertArgs) -> Result<()> {
    let name = pack_name(&a.ckpt);
    a.ckpt = super::hub::local(&a.ckpt)?;
    let quant = a.quant.into();
    let (cfg, tensors) = match load_any(&a.ckpt, &a.decoder)? {
        Loaded::Decoder(cfg, tensors) => {
            // Validate the whole decoder before writing anything.
            drop(Decoder::from_tensors(cfg.clone(), tensors.clone())?);
            return write_any_pack_file(&a.out, PackCfg::Decoder(&cfg), &tensors, quant, &name, a.all_tensors);
        }
        Loaded::Checkpoint(map, heads) => {
            let cfg = infer_config(&map, &import_opts_for(&a.import, heads))?;
            (cfg, map)
        }
        Loaded::ModelPack => load_model_tensors(&a.ckpt, &a.import)?,
    };
    let mut cfg = cfg;
    if let Some(r) = &a.trained_rates {
        cfg.trained_rates = GridSchedule::parse_rates(r)?.rates();
        cfg.validate()?;
    }
    // Validate the whole model before writing anything.
    let check = Model::from_tensors(cfg.clone(), tensors.clone())?;
    drop(check);
    write_pack_file(&a.out, &cfg, &tensors, quant, &name, a.all_tensors)
}

pub(super) fn dit_to_sparse(mut a: DitToSparseArgs) -> Result<()> {
    let name = format!("{}-sparsedit", pack_name(&a.ckpt));
    a.ckpt = super::hub::local(&a.ckpt)?;
    let layout = parse_layout(&a.layout)?;
    let (dense_cfg, dense) = load_model_tensors(&a.ckpt, &a.import)?;
    let (cfg, sparse) = dit_to_sparsedit(&dense, &dense_cfg, layout)?;
    let check = Model::from_tensors(cfg.clone(), sparse.clone())?;
    drop(check);
    write_pack_file(&a.out, &cfg, &sparse, a.quant.into(), &name, false)
}
