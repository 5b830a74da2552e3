//! diffusers' DiT layout (`DiTTransformer2DModel`, as published in `facebook/DiT-XL-2-256` /
//! `-512`) read back to the official DiT names, the layout every other part of the crate uses.
//!
//! The mapping is that of diffusers' `scripts/convert_dit_to_diffusers.py`, reversed:
//! `pos_embed.proj` -> `x_embedder.proj`; per block `norm1.linear` -> `adaLN_modulation.1`,
//! `attn1.to_q / to_k / to_v` -> the three thirds of `attn.qkv`, `attn1.to_out.0` -> `attn.proj`,
//! `ff.net.0.proj` / `ff.net.2` -> `mlp.fc1` / `mlp.fc2`; `proj_out_1` / `proj_out_2` -> the final
//! layer's `adaLN_modulation.1` / `linear`. diffusers keeps a copy of the timestep and class
//! embedders in every block (`norm1.emb.*`); the converted official weights hold identical
//! copies, which is checked (a file whose copies differ is not a converted DiT and is refused).
//! There is no position table in diffusers' files: the official frozen sin-cos table is computed
//! from `sample_size / patch_size` of the `config.json` next to the weights.
//!
//! Only the weight layout is diffusers'; the model stays the official DiT (diffusers' own pipeline
//! embeds timesteps with `downscale_freq_shift=1`, the official code with 0).
//!
//! The latent decoders come in diffusers folders too: `AutoencoderTiny` (madebyollin/taesd's
//! `diffusion_pytorch_model.safetensors`: `decoder.layers.{i}` is the published TAESD
//! sequence's `{i + 1}`, its index 0 being the parameter-free clamp; the encoder is dropped) and
//! `AutoencoderKL` (stabilityai/sd-vae-ft-ema / -mse: already the names the decoder import reads).

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::grid::sincos_pos_embed;
use crate::model::TensorMap;

/// What a diffusers `config.json` says that the weights do not (the DiT's geometry and heads;
/// for the autoencoders only the class matters).
#[derive(Clone, Debug, Deserialize)]
pub struct DiffusersConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    #[serde(default)]
    pub sample_size: Option<usize>,
    #[serde(default)]
    pub patch_size: Option<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<usize>,
    #[serde(default)]
    pub num_layers: Option<usize>,
    #[serde(default)]
    pub attention_head_dim: Option<usize>,
    #[serde(default)]
    pub in_channels: Option<usize>,
    #[serde(default)]
    pub out_channels: Option<usize>,
    #[serde(default)]
    pub num_embeds_ada_norm: Option<usize>,
}

/// The model classes read here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffusersClass {
    /// `DiTTransformer2DModel` (or the older `Transformer2DModel` name of the same weights).
    Dit,
    /// `AutoencoderTiny` (TAESD).
    AutoencoderTiny,
    /// `AutoencoderKL` (the SD-VAE).
    AutoencoderKl,
}

impl DiffusersConfig {
    pub fn class(&self) -> DiffusersClass {
        match self.class_name.as_deref() {
            Some("AutoencoderTiny") => DiffusersClass::AutoencoderTiny,
            Some("AutoencoderKL") => DiffusersClass::AutoencoderKl,
            _ => DiffusersClass::Dit,
        }
    }

    /// A DiT's (sample_size, patch_size, heads), all required.
    fn dit_geometry(&self) -> Result<(usize, usize, usize)> {
        match (self.sample_size, self.patch_size, self.num_attention_heads) {
            (Some(s), Some(p), Some(h)) => Ok((s, p, h)),
            _ => Err(Error::arch("diffusers DiT: config.json lacks sample_size, patch_size or num_attention_heads")),
        }
    }

    /// `config.json` text (`origin` names it in messages), checked as [`read_config`] checks.
    pub fn parse(json: &str, origin: &str) -> Result<DiffusersConfig> {
        let bad = |reason: String| Error::Checkpoint { path: origin.to_string(), reason };
        let cfg: DiffusersConfig = serde_json::from_str(json).map_err(|e| bad(format!("not a diffusers config.json: {e}")))?;
        match cfg.class_name.as_deref() {
            // What a DiT needs is required where it is used; what is given must be consistent.
            None | Some("DiTTransformer2DModel" | "Transformer2DModel") => {
                if let (Some(s), Some(p)) = (cfg.sample_size, cfg.patch_size) {
                    if p == 0 || s == 0 || !s.is_multiple_of(p) {
                        return Err(bad(format!("sample_size {s} is not a multiple of patch_size {p}")));
                    }
                }
            }
            Some("AutoencoderTiny" | "AutoencoderKL") => {}
            Some(c) => return Err(bad(format!("a {c}: read are DiT transformers, AutoencoderTiny (TAESD) and AutoencoderKL (SD-VAE)"))),
        }
        Ok(cfg)
    }

    /// A DiT's grid side `sample_size / patch_size`.
    pub fn grid(&self) -> Result<usize> {
        let (s, p, _) = self.dit_geometry()?;
        Ok(s / p)
    }

    /// The dense DiT this config describes, without the weights (what a streamed conversion
    /// plans before any tensor arrives).
    pub fn dit_config(&self) -> Result<crate::config::Config> {
        let need = |v: Option<usize>, what: &str| v.ok_or_else(|| Error::arch(format!("diffusers DiT: config.json lacks {what}")));
        let (_, patch, heads) = self.dit_geometry()?;
        let head_dim = need(self.attention_head_dim, "attention_head_dim")?;
        let in_channels = self.in_channels.unwrap_or(4);
        let out_channels = self.out_channels.unwrap_or(in_channels);
        let hidden = heads.checked_mul(head_dim).ok_or_else(|| Error::arch("diffusers DiT: heads x head dim overflows"))?;
        let learn_sigma = match out_channels {
            o if o == 2 * in_channels => true,
            o if o == in_channels => false,
            o => return Err(Error::arch(format!("diffusers DiT: {o} output channels for {in_channels} input channels"))),
        };
        let cfg = crate::config::Config {
            input_size: self.grid()? * patch,
            patch_size: patch,
            in_channels,
            hidden_size: hidden,
            num_heads: heads,
            mlp_hidden: 4 * hidden,
            num_classes: need(self.num_embeds_ada_norm, "num_embeds_ada_norm (the class count)")?,
            class_null: true,
            learn_sigma,
            layout: crate::config::Layout::Dense { depth: need(self.num_layers, "num_layers")? },
            semantic_size: 8,
            num_frames: None,
            trained_rates: None,
            pooled_middle: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Where a diffusers DiT lives: its weights file and the `config.json` beside it.
#[derive(Clone, Debug)]
pub struct DiffusersFiles {
    pub weights: PathBuf,
    pub config: PathBuf,
}

/// Whether `map` holds diffusers' DiT names.
pub fn is_diffusers_dit(map: &TensorMap) -> bool {
    map.contains_key("pos_embed.proj.weight") && map.keys().any(|k| k.starts_with("transformer_blocks."))
}

/// The diffusers files of `path`: a snapshot folder (`model_index.json` with `transformer/`), a
/// model folder (`config.json` + `diffusion_pytorch_model[.fp16].safetensors`), or a weights file
/// with its `config.json` beside it. `None` when `path` is none of these.
pub fn locate(path: &Path) -> Option<DiffusersFiles> {
    if path.is_dir() {
        let dir = if path.join("transformer").is_dir() { path.join("transformer") } else { path.to_path_buf() };
        // The full-precision file when both are there (it converts to f32 exactly).
        let weights = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())?;
        let config = dir.join("config.json");
        return config.is_file().then_some(DiffusersFiles { weights, config });
    }
    let name = path.file_name()?.to_str()?;
    if name.starts_with("diffusion_pytorch_model") && name.ends_with(".safetensors") {
        let config = path.parent()?.join("config.json");
        return config.is_file().then(|| DiffusersFiles { weights: path.to_path_buf(), config });
    }
    None
}

pub fn read_config(path: &Path) -> Result<DiffusersConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?;
    DiffusersConfig::parse(&text, &path.display().to_string())
}

fn take(map: &mut TensorMap, name: &str) -> Result<Tensor> {
    map.remove(name).ok_or_else(|| Error::arch(format!("diffusers DiT: '{name}' is missing")))
}

/// The copies of one shared tensor (one per block) must be identical; returns block 0's.
fn shared(map: &mut TensorMap, copies: &[String]) -> Result<Tensor> {
    let first = take(map, &copies[0])?;
    let want = first.flatten_all()?.to_vec1::<f32>()?;
    for name in &copies[1..] {
        let t = take(map, name)?;
        if t.dims() != first.dims() || t.flatten_all()?.to_vec1::<f32>()? != want {
            return Err(Error::arch(format!(
                "diffusers DiT: {name} differs from block 0's copy; a converted DiT shares one embedder (this checkpoint is not one)"
            )));
        }
    }
    Ok(first)
}

/// A diffusers model's tensors (f32) under the names the rest of the crate reads, and the heads
/// its config states (DiTs). `weights` names the file in messages.
pub fn to_official(map: TensorMap, cfg: &DiffusersConfig, weights: &Path) -> Result<(TensorMap, Option<usize>)> {
    let not = |what: &str| Error::Checkpoint { path: weights.display().to_string(), reason: format!("not a diffusers {what}") };
    match cfg.class() {
        DiffusersClass::Dit => {
            if !is_diffusers_dit(&map) {
                return Err(not("DiT transformer (no transformer_blocks / pos_embed.proj)"));
            }
            Ok((dit_from_diffusers(map, cfg)?, cfg.num_attention_heads))
        }
        DiffusersClass::AutoencoderTiny => {
            let out = taesd_from_diffusers(map)?;
            if out.is_empty() {
                return Err(not("AutoencoderTiny (no decoder.layers)"));
            }
            Ok((out, None))
        }
        // The decoder import keeps `decoder.*` / `post_quant_conv.*` and drops the encoder.
        DiffusersClass::AutoencoderKl if map.contains_key("decoder.conv_in.weight") => Ok((map, None)),
        DiffusersClass::AutoencoderKl => Err(not("AutoencoderKL (no decoder.conv_in)")),
    }
}

/// `AutoencoderTiny`'s decoder -> the published TAESD decoder's `nn.Sequential` names:
/// `decoder.layers.{i}.rest` -> `{i + 1}.rest`; the encoder is dropped.
pub fn taesd_from_diffusers(map: TensorMap) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    for (k, v) in map {
        if let Some(rest) = k.strip_prefix("decoder.layers.") {
            let (i, tail) = rest.split_once('.').ok_or_else(|| Error::arch(format!("AutoencoderTiny: odd name {k}")))?;
            let i: usize = i.parse().map_err(|_| Error::arch(format!("AutoencoderTiny: odd name {k}")))?;
            out.insert(format!("{}.{tail}", i + 1), v);
        } else if !k.starts_with("encoder.") {
            return Err(Error::arch(format!("AutoencoderTiny: unexpected tensor '{k}'")));
        }
    }
    Ok(out)
}

/// Where an official DiT tensor comes from in diffusers' layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DitSource {
    /// One tensor, renamed.
    One(String),
    /// q, k and v, concatenated on dim 0 (`attn.qkv`).
    Joined(Vec<String>),
    /// The per-block copies of a shared embedder, which must be identical (block 0's is kept).
    Shared(Vec<String>),
}

/// The blocks of a diffusers DiT (`contains` tells which tensors there are), checked against
/// `config.json`'s `num_layers` when it states one.
pub fn dit_depth(contains: impl Fn(&str) -> bool, cfg: &DiffusersConfig) -> Result<usize> {
    let depth = (0..).take_while(|i| contains(&format!("transformer_blocks.{i}.attn1.to_q.weight"))).count();
    if depth == 0 {
        return Err(Error::arch("diffusers DiT: no transformer_blocks.0.attn1.to_q.weight"));
    }
    if let Some(n) = cfg.num_layers.filter(|&n| n != depth) {
        return Err(Error::arch(format!("diffusers DiT: config.json says {n} layers, the weights hold {depth}")));
    }
    Ok(depth)
}

/// The mapping of diffusers' `convert_dit_to_diffusers.py`, reversed: every official tensor of a
/// DiT of `depth` blocks and its diffusers sources (`pos_embed` is not there: it is computed).
/// The one spelling of the layout, for the folder import and the streamed conversion alike.
pub fn dit_name_map(depth: usize) -> Vec<(String, DitSource)> {
    let one = |s: String| DitSource::One(s);
    let mut m = Vec::new();
    for w in ["weight", "bias"] {
        m.push((format!("x_embedder.proj.{w}"), one(format!("pos_embed.proj.{w}"))));
    }
    let shared = [
        ("t_embedder.mlp.0.weight", "norm1.emb.timestep_embedder.linear_1.weight"),
        ("t_embedder.mlp.0.bias", "norm1.emb.timestep_embedder.linear_1.bias"),
        ("t_embedder.mlp.2.weight", "norm1.emb.timestep_embedder.linear_2.weight"),
        ("t_embedder.mlp.2.bias", "norm1.emb.timestep_embedder.linear_2.bias"),
        ("y_embedder.embedding_table.weight", "norm1.emb.class_embedder.embedding_table.weight"),
    ];
    for (official, suffix) in shared {
        m.push((official.to_string(), DitSource::Shared((0..depth).map(|i| format!("transformer_blocks.{i}.{suffix}")).collect())));
    }
    for i in 0..depth {
        let (d, o) = (format!("transformer_blocks.{i}."), format!("blocks.{i}."));
        for w in ["weight", "bias"] {
            m.push((format!("{o}attn.qkv.{w}"), DitSource::Joined(["q", "k", "v"].iter().map(|p| format!("{d}attn1.to_{p}.{w}")).collect())));
            for (official, ours) in [("attn.proj", "attn1.to_out.0"), ("adaLN_modulation.1", "norm1.linear"), ("mlp.fc1", "ff.net.0.proj"), ("mlp.fc2", "ff.net.2")] {
                m.push((format!("{o}{official}.{w}"), one(format!("{d}{ours}.{w}"))));
            }
        }
    }
    for w in ["weight", "bias"] {
        m.push((format!("final_layer.adaLN_modulation.1.{w}"), one(format!("proj_out_1.{w}"))));
        m.push((format!("final_layer.linear.{w}"), one(format!("proj_out_2.{w}"))));
    }
    m
}

/// diffusers' DiT tensors (f32) -> the official names, with the position table of `cfg`.
pub fn dit_from_diffusers(mut map: TensorMap, cfg: &DiffusersConfig) -> Result<TensorMap> {
    let depth = dit_depth(|k| map.contains_key(k), cfg)?;
    let mut out = TensorMap::new();
    for (official, source) in dit_name_map(depth) {
        let t = match source {
            DitSource::One(s) => take(&mut map, &s)?,
            DitSource::Joined(parts) => {
                let parts = parts.iter().map(|p| take(&mut map, p)).collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0)?
            }
            DitSource::Shared(copies) => shared(&mut map, &copies)?,
        };
        out.insert(official, t);
    }
    let hidden = out["x_embedder.proj.weight"].dim(0)?;
    let (sample_size, patch, _) = cfg.dit_geometry()?;
    let n = sample_size / patch;
    let table = Tensor::from_vec(sincos_pos_embed(hidden, n), (1, n * n, hidden), &candle_core::Device::Cpu)?;
    out.insert("pos_embed".to_string(), table);
    // A stored position buffer must be the official table.
    if let Some(stored) = map.remove("pos_embed.pos_embed") {
        let (a, b) = (stored.flatten_all()?.to_vec1::<f32>()?, out["pos_embed"].flatten_all()?.to_vec1::<f32>()?);
        if a.len() != b.len() || a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-4) {
            return Err(Error::arch("diffusers DiT: pos_embed.pos_embed is not the sin-cos table of sample_size / patch_size"));
        }
    }
    // Anything left is not part of a DiT.
    if let Some(extra) = map.keys().next() {
        return Err(Error::arch(format!("diffusers DiT: unexpected tensor '{extra}' ({} left over)", map.len())));
    }
    Ok(out)
}

/// A diffusers autoencoder held in memory — `AutoencoderTiny` (TAESD) or `AutoencoderKL`
/// (SD-VAE; the decoder's tensors suffice) as safetensors bytes, with its `config.json` — as a
/// decoder pack of `quant` (the page's decoder from the Hub). Checked as `convert` checks: the
/// whole decoder is built before the pack is written.
pub fn decoder_pack_from_bytes(safetensors: &[u8], config_json: &str, quant: crate::gguf::TensorType, name: &str) -> Result<Vec<u8>> {
    use crate::decoder::{canonical_decoder_tensors, Decoder, DecoderConfig, DecoderOptions};
    let cfg = DiffusersConfig::parse(config_json, "config.json")?;
    if cfg.class() == DiffusersClass::Dit {
        return Err(Error::arch("a DiT transformer, not an autoencoder (AutoencoderTiny / AutoencoderKL)"));
    }
    let map = crate::import::read_safetensors_bytes(safetensors, "decoder weights")?;
    let (map, _) = to_official(map, &cfg, Path::new("decoder weights"))?;
    let map = canonical_decoder_tensors(map)?;
    let v: serde_json::Value = serde_json::from_str(config_json).map_err(|e| Error::arch(format!("config.json: {e}")))?;
    let opts = DecoderOptions {
        norm_groups: v.get("norm_num_groups").and_then(|x| x.as_u64()).map(|x| x as usize),
        scaling_factor: v.get("scaling_factor").and_then(|x| x.as_f64()).filter(|_| cfg.class() == DiffusersClass::AutoencoderKl),
    };
    let dcfg = DecoderConfig::infer(&map, &opts)?.ok_or_else(|| Error::arch("no latent decoder in these weights"))?;
    drop(Decoder::from_tensors(dcfg.clone(), map.clone())?);
    let mut out = Vec::new();
    crate::pack::write_decoder_pack(&mut out, &dcfg, &map, quant, name, |_, _| {})?;
    Ok(out)
}
