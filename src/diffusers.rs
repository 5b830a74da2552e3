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

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::grid::sincos_pos_embed;
use crate::model::TensorMap;

/// What `config.json` of a `DiTTransformer2DModel` says that the weights do not.
#[derive(Clone, Debug, Deserialize)]
pub struct DiffusersConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    pub sample_size: usize,
    pub patch_size: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_layers: Option<usize>,
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
    let cfg: DiffusersConfig = serde_json::from_str(&text)
        .map_err(|e| Error::Checkpoint { path: path.display().to_string(), reason: format!("not a DiT transformer config.json: {e}") })?;
    if let Some(c) = &cfg.class_name {
        if c != "DiTTransformer2DModel" && c != "Transformer2DModel" {
            return Err(Error::Checkpoint { path: path.display().to_string(), reason: format!("a {c}, not a DiT transformer") });
        }
    }
    if cfg.patch_size == 0 || cfg.sample_size == 0 || !cfg.sample_size.is_multiple_of(cfg.patch_size) {
        return Err(Error::Checkpoint {
            path: path.display().to_string(),
            reason: format!("sample_size {} is not a multiple of patch_size {}", cfg.sample_size, cfg.patch_size),
        });
    }
    Ok(cfg)
}

fn take(map: &mut TensorMap, name: &str) -> Result<Tensor> {
    map.remove(name).ok_or_else(|| Error::arch(format!("diffusers DiT: '{name}' is missing")))
}

/// The copies of one shared tensor in every block must be identical; returns block 0's.
fn shared(map: &mut TensorMap, depth: usize, suffix: &str) -> Result<Tensor> {
    let first = take(map, &format!("transformer_blocks.0.{suffix}"))?;
    let want = first.flatten_all()?.to_vec1::<f32>()?;
    for i in 1..depth {
        let name = format!("transformer_blocks.{i}.{suffix}");
        let t = take(map, &name)?;
        if t.dims() != first.dims() || t.flatten_all()?.to_vec1::<f32>()? != want {
            return Err(Error::arch(format!(
                "diffusers DiT: {name} differs from block 0's copy; a converted DiT shares one embedder (this checkpoint is not one)"
            )));
        }
    }
    Ok(first)
}

/// diffusers' DiT tensors (f32) -> the official names, with the position table of `cfg`.
pub fn dit_from_diffusers(mut map: TensorMap, cfg: &DiffusersConfig) -> Result<TensorMap> {
    let depth = (0..).take_while(|i| map.contains_key(&format!("transformer_blocks.{i}.attn1.to_q.weight"))).count();
    if depth == 0 {
        return Err(Error::arch("diffusers DiT: no transformer_blocks.0.attn1.to_q.weight"));
    }
    if let Some(n) = cfg.num_layers.filter(|&n| n != depth) {
        return Err(Error::arch(format!("diffusers DiT: config.json says {n} layers, the weights hold {depth}")));
    }
    let mut out = TensorMap::new();
    let mut put = |k: &str, t: Tensor| out.insert(k.to_string(), t);
    put("x_embedder.proj.weight", take(&mut map, "pos_embed.proj.weight")?);
    put("x_embedder.proj.bias", take(&mut map, "pos_embed.proj.bias")?);
    for (official, ours) in [("t_embedder.mlp.0", "linear_1"), ("t_embedder.mlp.2", "linear_2")] {
        for w in ["weight", "bias"] {
            put(&format!("{official}.{w}"), shared(&mut map, depth, &format!("norm1.emb.timestep_embedder.{ours}.{w}"))?);
        }
    }
    put("y_embedder.embedding_table.weight", shared(&mut map, depth, "norm1.emb.class_embedder.embedding_table.weight")?);
    for i in 0..depth {
        let (d, o) = (format!("transformer_blocks.{i}."), format!("blocks.{i}."));
        for w in ["weight", "bias"] {
            let q = take(&mut map, &format!("{d}attn1.to_q.{w}"))?;
            let k = take(&mut map, &format!("{d}attn1.to_k.{w}"))?;
            let v = take(&mut map, &format!("{d}attn1.to_v.{w}"))?;
            put(&format!("{o}attn.qkv.{w}"), Tensor::cat(&[&q, &k, &v], 0)?);
            put(&format!("{o}attn.proj.{w}"), take(&mut map, &format!("{d}attn1.to_out.0.{w}"))?);
            put(&format!("{o}adaLN_modulation.1.{w}"), take(&mut map, &format!("{d}norm1.linear.{w}"))?);
            put(&format!("{o}mlp.fc1.{w}"), take(&mut map, &format!("{d}ff.net.0.proj.{w}"))?);
            put(&format!("{o}mlp.fc2.{w}"), take(&mut map, &format!("{d}ff.net.2.{w}"))?);
        }
    }
    for w in ["weight", "bias"] {
        put(&format!("final_layer.adaLN_modulation.1.{w}"), take(&mut map, &format!("proj_out_1.{w}"))?);
        put(&format!("final_layer.linear.{w}"), take(&mut map, &format!("proj_out_2.{w}"))?);
    }
    let hidden = out["x_embedder.proj.weight"].dim(0)?;
    let n = cfg.sample_size / cfg.patch_size;
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
