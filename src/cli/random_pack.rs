//! `random-pack`: a pack of seeded random weights for a model or decoder preset.

use std::path::PathBuf;

use clap::Args;
use sparsedit::config::Config;
use sparsedit::decoder::DecoderConfig;
use sparsedit::Result;

use super::io::{write_any_pack_file, write_pack_file, PackCfg};
use super::Quant;

#[derive(Args)]
pub(super) struct RandomPackArgs {
    /// A preset: dit-xl2-256, sparsedit-xl2-512, dit-b2, sparsedit-tiny, ...; or a decoder: taesd, sdvae
    #[arg(long)]
    preset: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// f32, f16, q8_0 or q4_0 (linear weights; tables and biases stay f32).
    #[arg(long, value_enum, ignore_case = true, hide_possible_values = true, default_value_t = Quant::Q8_0)]
    quant: Quant,
    #[arg(short, long)]
    out: PathBuf,
}

pub(super) fn random_pack(a: RandomPackArgs) -> Result<()> {
    let quant = a.quant.into();
    let name = format!("{}-random-seed{}", a.preset, a.seed);
    if let Ok(dec) = DecoderConfig::preset(&a.preset) {
        let tensors = dec.random_tensors(a.seed)?;
        return write_any_pack_file(&a.out, PackCfg::Decoder(&dec), &tensors, quant, &name, false);
    }
    let cfg = Config::preset(&a.preset)?;
    let tensors = sparsedit::bench::random_tensors(&cfg, a.seed)?;
    write_pack_file(&a.out, &cfg, &tensors, quant, &name, false)
}
