//! Model packs: a GGUF v3 file holding the architecture in metadata and every tensor under its
//! official checkpoint name. 2-D linear weights may be F16 / Q8_0 / Q4_0; everything else
//! (biases, the patch-embedding conv, pos_embed, the label table) stays F32.
//!
//! Metadata keys (`A` = `general.architecture`, "dit", "sparsedit", "latte" or "sparselatte"):
//! `A.input_size`, `A.patch_size`, `A.in_channels`, `A.hidden_size`, `A.num_heads`,
//! `A.mlp_hidden`, `A.num_classes`, `A.class_null`, `A.learn_sigma`, `A.semantic_size`,
//! `A.depth`; sparse only: `A.num_poolingformer`, `A.num_sdtm`, `A.dumbbell_group` (4 x u32),
//! `A.num_top`; video only: `A.num_frames`; optional (sparse): `A.trained_rates` (2 x f64, the
//! pruning rates of the schedule the model was fine-tuned with).
//!
//! Latent decoders (`A` = "taesd" or "sdvae", see [`crate::decoder`]) keep the published tensor
//! names; metadata `A.latent_channels`, `A.out_channels`, and `taesd.width` or
//! `sdvae.block_out_channels` (array), `sdvae.layers_per_block`, `sdvae.norm_num_groups`,
//! `sdvae.scaling_factor` (f64). Their conv weights are F32, or F16 when a reduced type is asked for.

use std::borrow::Cow;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::config::{Config, Layout, SparseLayout};
use crate::decoder::DecoderConfig;
use crate::error::{Error, Result};
use crate::gguf::{self, Gguf, GgufHeader, MetaValue, TensorToWrite, TensorType};
use crate::model::{to_vec_f32, TensorMap};

/// Quantization error of one tensor, as `convert` prints it.
#[derive(Clone, Debug)]
pub struct TensorStats {
    pub name: String,
    pub shape: Vec<usize>,
    pub ty: TensorType,
    pub bytes: usize,
    /// max |w - q(w)|
    pub max_abs_err: f32,
    /// ||w - q(w)|| / ||w||
    pub rel_err: f32,
}

/// The type a tensor is stored with when `quant` is asked for: only 2-D linear weights are
/// quantized, and Q8_0 / Q4_0 only where rows are whole 32-element blocks (else F16).
pub fn storage_type(name: &str, shape: &[usize], quant: TensorType) -> TensorType {
    let linear_weight = shape.len() == 2 && name.ends_with(".weight") && name != "y_embedder.embedding_table.weight";
    if !linear_weight || quant == TensorType::F32 {
        return TensorType::F32;
    }
    match quant {
        TensorType::Q8_0 | TensorType::Q4_0 if !shape[1].is_multiple_of(quant.block_size()) => TensorType::F16,
        q => q,
    }
}

/// Architecture as GGUF metadata.
pub fn config_metadata(cfg: &Config, name: &str) -> Vec<(String, MetaValue)> {
    let a = cfg.arch_name();
    let u = |v: usize| MetaValue::U32(v as u32);
    let mut m = vec![
        ("general.architecture".to_string(), MetaValue::String(a.to_string())),
        ("general.name".to_string(), MetaValue::String(name.to_string())),
        (format!("{a}.input_size"), u(cfg.input_size)),
        (format!("{a}.patch_size"), u(cfg.patch_size)),
        (format!("{a}.in_channels"), u(cfg.in_channels)),
        (format!("{a}.hidden_size"), u(cfg.hidden_size)),
        (format!("{a}.num_heads"), u(cfg.num_heads)),
        (format!("{a}.mlp_hidden"), u(cfg.mlp_hidden)),
        (format!("{a}.num_classes"), u(cfg.num_classes)),
        (format!("{a}.class_null"), MetaValue::Bool(cfg.class_null)),
        (format!("{a}.learn_sigma"), MetaValue::Bool(cfg.learn_sigma)),
        (format!("{a}.semantic_size"), u(cfg.semantic_size)),
        (format!("{a}.depth"), u(cfg.layout.depth())),
    ];
    if let Some(f) = cfg.num_frames {
        m.push((format!("{a}.num_frames"), u(f)));
    }
    if let Some(r) = cfg.trained_rates {
        m.push((format!("{a}.trained_rates"), MetaValue::Array(r.iter().map(|&x| MetaValue::F64(x)).collect())));
    }
    if let Layout::Sparse(s) = cfg.layout {
        m.push((format!("{a}.num_poolingformer"), u(s.num_poolingformer)));
        m.push((format!("{a}.num_sdtm"), u(s.num_sdtm)));
        m.push((format!("{a}.dumbbell_group"), MetaValue::Array(s.group.iter().map(|&g| u(g)).collect())));
        m.push((format!("{a}.num_top"), u(s.num_top)));
    }
    m
}

/// Read the architecture back from a pack's metadata.
pub fn config_from_header(h: &GgufHeader) -> Result<Config> {
    let arch = h
        .meta("general.architecture")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| Error::gguf("no general.architecture: not a sparsedit pack"))?
        .to_string();
    if arch == "taesd" || arch == "sdvae" {
        return Err(Error::gguf(format!("architecture {arch:?} is a latent decoder, not a DiT / SparseDiT model (use it with `decode`)")));
    }
    if !["dit", "sparsedit", "latte", "sparselatte"].contains(&arch.as_str()) {
        return Err(Error::gguf(format!("architecture {arch:?} is not 'dit', 'sparsedit', 'latte' or 'sparselatte'")));
    }
    let video = arch.ends_with("latte");
    let num = |key: &str| -> Result<usize> {
        let k = format!("{arch}.{key}");
        h.meta(&k)
            .and_then(MetaValue::as_u64)
            .filter(|&v| v <= u32::MAX as u64)
            .map(|v| v as usize)
            .ok_or_else(|| Error::gguf(format!("metadata {k} is missing or not an integer")))
    };
    let flag = |key: &str| -> Result<bool> {
        let k = format!("{arch}.{key}");
        h.meta(&k).and_then(MetaValue::as_bool).ok_or_else(|| Error::gguf(format!("metadata {k} is missing or not a bool")))
    };
    let depth = num("depth")?;
    let layout = if arch.starts_with("sparse") {
        let k = format!("{arch}.dumbbell_group");
        let g = h
            .meta(&k)
            .and_then(MetaValue::as_array)
            .filter(|a| a.len() == 4)
            .ok_or_else(|| Error::gguf(format!("metadata {k} must be 4 integers")))?;
        let mut group = [0usize; 4];
        for (dst, v) in group.iter_mut().zip(g) {
            *dst = v.as_u64().filter(|&x| x < 1 << 16).ok_or_else(|| Error::gguf(format!("metadata {k} must be 4 integers")))? as usize;
        }
        Layout::Sparse(SparseLayout {
            num_poolingformer: num("num_poolingformer")?,
            num_sdtm: num("num_sdtm")?,
            group,
            num_top: num("num_top")?,
        })
    } else {
        Layout::Dense { depth }
    };
    if layout.depth() != depth {
        return Err(Error::gguf(format!("metadata depth {depth} disagrees with the layout ({} blocks)", layout.depth())));
    }
    let cfg = Config {
        input_size: num("input_size")?,
        patch_size: num("patch_size")?,
        in_channels: num("in_channels")?,
        hidden_size: num("hidden_size")?,
        num_heads: num("num_heads")?,
        mlp_hidden: num("mlp_hidden")?,
        num_classes: num("num_classes")?,
        class_null: flag("class_null")?,
        learn_sigma: flag("learn_sigma")?,
        layout,
        semantic_size: num("semantic_size")?,
        num_frames: if video { Some(num("num_frames")?) } else { None },
        trained_rates: match h.meta(&format!("{arch}.trained_rates")) {
            None => None,
            Some(v) => {
                let bad = || Error::gguf(format!("metadata {arch}.trained_rates must be 2 numbers (r_min, r_max)"));
                let a = v.as_array().filter(|a| a.len() == 2).ok_or_else(bad)?;
                Some([a[0].as_f64().ok_or_else(bad)?, a[1].as_f64().ok_or_else(bad)?])
            }
        },
        pooled_middle: None,
    };
    cfg.validate().map_err(|e| Error::gguf(format!("inconsistent architecture in metadata: {e}")))?;
    Ok(cfg)
}

/// Storage type of a latent decoder's tensor: conv weights (4-D) become F16 when any reduced type
/// is asked for (they are never block-quantized), 2-D linear weights (the SD-VAE's attention)
/// follow [`storage_type`], everything else (biases, norms) stays F32.
pub fn decoder_storage_type(name: &str, shape: &[usize], quant: TensorType) -> TensorType {
    match shape.len() {
        4 if quant != TensorType::F32 => TensorType::F16,
        2 => storage_type(name, shape, quant),
        _ => TensorType::F32,
    }
}

/// One tensor encoded for the pack: (name, shape, type, bytes).
type Encoded = (String, Vec<usize>, TensorType, Vec<u8>);

/// Encode every tensor (sorted by name) with the type `ty_of(name, shape)` gives, measuring the
/// quantization error. `progress(done, total)` is called after each tensor.
fn encode_all(
    tensors: &TensorMap,
    ty_of: impl Fn(&str, &[usize]) -> TensorType,
    mut progress: impl FnMut(usize, usize),
) -> Result<(Vec<Encoded>, Vec<TensorStats>)> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut encoded = Vec::with_capacity(names.len());
    let mut stats = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        let t = &tensors[*n];
        let shape = t.dims().to_vec();
        let values = to_vec_f32(t)?;
        let ty = ty_of(n, &shape);
        let bytes = gguf::encode(&values, ty)?;
        let back = gguf::decode(&bytes, ty, values.len())?;
        let (mut max_abs, mut err2, mut ref2) = (0f32, 0f64, 0f64);
        for (a, b) in values.iter().zip(&back) {
            let d = (a - b).abs();
            max_abs = max_abs.max(d);
            err2 += (d as f64) * (d as f64);
            ref2 += (*a as f64) * (*a as f64);
        }
        let rel = if ref2 > 0.0 { (err2 / ref2).sqrt() as f32 } else { 0.0 };
        stats.push(TensorStats { name: n.to_string(), shape: shape.clone(), ty, bytes: bytes.len(), max_abs_err: max_abs, rel_err: rel });
        encoded.push((n.to_string(), shape, ty, bytes));
        progress(i + 1, names.len());
    }
    Ok((encoded, stats))
}

fn write_encoded<W: std::io::Write>(out: &mut W, mut meta: Vec<(String, MetaValue)>, quant: TensorType, encoded: &[Encoded]) -> Result<()> {
    let to_write: Vec<TensorToWrite> = encoded
        .iter()
        .map(|(n, shape, ty, bytes)| TensorToWrite { name: n, shape, ty: *ty, data: Cow::Borrowed(bytes.as_slice()) })
        .collect();
    meta.push(("sparsedit.quantization".to_string(), MetaValue::String(quant.name().to_string())));
    gguf::write(out, &meta, &to_write)
}

/// Encode every tensor (sorted by name) with its storage type and write the pack.
/// `progress(done, total)` is called after each tensor.
pub fn write_pack<W: std::io::Write>(
    out: &mut W,
    cfg: &Config,
    tensors: &TensorMap,
    quant: TensorType,
    name: &str,
    progress: impl FnMut(usize, usize),
) -> Result<Vec<TensorStats>> {
    cfg.validate()?;
    let (encoded, stats) = encode_all(tensors, |n, s| storage_type(n, s, quant), progress)?;
    write_encoded(out, config_metadata(cfg, name), quant, &encoded)?;
    Ok(stats)
}

/// Write a latent decoder's pack (`general.architecture` "taesd" / "sdvae"; tensor types by
/// [`decoder_storage_type`]).
pub fn write_decoder_pack<W: std::io::Write>(
    out: &mut W,
    cfg: &DecoderConfig,
    tensors: &TensorMap,
    quant: TensorType,
    name: &str,
    progress: impl FnMut(usize, usize),
) -> Result<Vec<TensorStats>> {
    cfg.validate()?;
    let (encoded, stats) = encode_all(tensors, |n, s| decoder_storage_type(n, s, quant), progress)?;
    write_encoded(out, cfg.metadata(name), quant, &encoded)?;
    Ok(stats)
}

/// A parsed decoder pack: its architecture and its tensors decoded to f32 on the CPU.
pub struct LoadedDecoderPack {
    pub cfg: DecoderConfig,
    pub tensors: TensorMap,
    /// (name, type) of every tensor, in file order.
    pub types: Vec<(String, TensorType)>,
}

/// Parse and validate a decoder pack held in memory (a DiT pack is refused).
pub fn load_decoder_pack_bytes(bytes: &[u8]) -> Result<LoadedDecoderPack> {
    let g = Gguf::parse(bytes)?;
    let cfg = DecoderConfig::from_header(&g.header)?;
    let (tensors, types) = decode_tensors(&g)?;
    Ok(LoadedDecoderPack { cfg, tensors, types })
}

fn decode_tensors(g: &Gguf) -> Result<(TensorMap, Vec<(String, TensorType)>)> {
    let mut tensors = TensorMap::new();
    let mut types = Vec::new();
    for info in &g.header.tensors {
        let values = g.dequantize_f32(info)?;
        tensors.insert(info.name.clone(), Tensor::from_vec(values, info.shape.as_slice(), &Device::Cpu)?);
        types.push((info.name.clone(), info.ty));
    }
    Ok((tensors, types))
}

/// A parsed pack: its architecture and its tensors decoded to f32 on the CPU.
pub struct LoadedPack {
    pub cfg: Config,
    pub tensors: TensorMap,
    /// (name, type) of every tensor, in file order.
    pub types: Vec<(String, TensorType)>,
    pub file_bytes: usize,
}

/// Parse and fully validate a pack held in memory, decoding every tensor to f32.
pub fn load_pack_bytes(bytes: &[u8]) -> Result<LoadedPack> {
    let g = Gguf::parse(bytes)?;
    let cfg = config_from_header(&g.header)?;
    let (tensors, types) = decode_tensors(&g)?;
    Ok(LoadedPack { cfg, tensors, types, file_bytes: bytes.len() })
}

/// Read a pack file (see [`load_pack_bytes`]).
pub fn load_pack_file(path: &Path) -> Result<LoadedPack> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
    load_pack_bytes(&bytes).map_err(|e| match e {
        Error::Gguf(m) => Error::Gguf(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Read a pack's header only (for `info`).
pub fn read_header_file(path: &Path) -> Result<(GgufHeader, u64)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
    let g = Gguf::parse(&bytes).map_err(|e| match e {
        Error::Gguf(m) => Error::Gguf(format!("{}: {m}", path.display())),
        other => other,
    })?;
    Ok((g.header, bytes.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The architecture read back from a header-only pack written with `meta`.
    fn read_back(meta: &[(String, MetaValue)]) -> Result<Config> {
        let mut bytes = Vec::new();
        gguf::write(&mut bytes, meta, &[])?;
        config_from_header(&Gguf::parse(&bytes)?.header)
    }

    #[test]
    fn trained_rates_round_trip_and_bad_ones_are_refused() {
        let mut cfg = Config::tiny_video(true);
        assert_eq!(read_back(&config_metadata(&cfg, "m")).unwrap().trained_rates, None);
        cfg.trained_rates = Some([0.7, 0.88]);
        assert_eq!(read_back(&config_metadata(&cfg, "m")).unwrap(), cfg);
        let with = |v: MetaValue| {
            let mut m = config_metadata(&Config::tiny_video(true), "m");
            m.push(("sparselatte.trained_rates".into(), v));
            read_back(&m).unwrap_err().to_string()
        };
        let f = MetaValue::F64;
        for bad in [MetaValue::String("0.7:0.88".into()), MetaValue::Array(vec![f(0.7)]), MetaValue::Array(vec![MetaValue::Bool(true); 2])] {
            let e = with(bad);
            assert!(e.contains("trained_rates must be 2 numbers"), "{e}");
        }
        let e = with(MetaValue::Array(vec![f(0.9), f(0.5)]));
        assert!(e.contains("inconsistent architecture") && e.contains("r_min <= r_max"), "{e}");
        // a dense model records none
        let mut m = config_metadata(&Config::tiny_video(false), "m");
        m.push(("latte.trained_rates".into(), MetaValue::Array(vec![f(0.7), f(0.88)])));
        let e = read_back(&m).unwrap_err().to_string();
        assert!(e.contains("dense"), "{e}");
    }
}
