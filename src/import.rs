//! Reading official checkpoints and inferring their architecture.
//!
//! - PyTorch `.pt` / `.pth` (zip pickles, via candle's pickle reader): a plain state dict, or one
//!   stored under `ema` (preferred, as the official fine-tuning script does), `model` or
//!   `state_dict`. A DistributedDataParallel `module.` prefix is stripped.
//! - `.safetensors` state dicts.
//!
//! The architecture (width, patch, channels, classes, learned sigma, input size, segment
//! layout) is read off tensor names and shapes; what shapes cannot tell (heads, the sparse grid
//! side) comes from [`ImportOptions`].

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::blocks::{BlockWeights, SDTM_PARTS};
use crate::config::{Config, Layout, SparseLayout};
use crate::error::{Error, Result};
use crate::model::TensorMap;

/// What tensor shapes cannot tell.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Attention heads; default by width: 1152 -> 16, 1024 -> 16, 768 -> 12, 384 -> 6.
    pub heads: Option<usize>,
    /// Default sparse grid side s (the official `semantic_size`); default 8.
    pub semantic_size: Option<usize>,
}

/// Default head count of the published widths.
pub fn default_heads(width: usize) -> Option<usize> {
    match width {
        1152 | 1024 => Some(16),
        768 => Some(12),
        384 => Some(6),
        _ => None,
    }
}

/// Read a checkpoint into f32 CPU tensors with official names.
pub fn read_checkpoint(path: &Path) -> Result<TensorMap> {
    Ok(read_checkpoint_full(path)?.tensors)
}

/// A checkpoint under the official names, and what its files say beyond the tensors.
pub struct Checkpoint {
    pub tensors: TensorMap,
    /// Attention heads a diffusers `config.json` states (the weights cannot tell).
    pub heads: Option<usize>,
}

/// As [`read_checkpoint`], also reading diffusers' DiT layout (`crate::diffusers`): a snapshot
/// folder, a model folder, or `diffusion_pytorch_model[.fp16].safetensors` beside its
/// `config.json`, converted to the official names.
pub fn read_checkpoint_full(path: &Path) -> Result<Checkpoint> {
    if let Some(files) = crate::diffusers::locate(path) {
        let cfg = crate::diffusers::read_config(&files.config)?;
        let map = read_tensor_file(&files.weights)?;
        let (tensors, heads) = crate::diffusers::to_official(map, &cfg, &files.weights)?;
        return Ok(Checkpoint { tensors, heads });
    }
    if path.is_dir() {
        return Err(Error::Checkpoint {
            path: path.display().to_string(),
            reason: "a folder that is not a diffusers DiT snapshot (model_index.json + transformer/, or config.json + diffusion_pytorch_model.safetensors)".into(),
        });
    }
    let tensors = read_tensor_file(path)?;
    if crate::diffusers::is_diffusers_dit(&tensors) {
        return Err(Error::Checkpoint {
            path: path.display().to_string(),
            reason: "diffusers' DiT layout: give the folder (or keep its config.json beside the file) so sample_size and heads are known".into(),
        });
    }
    Ok(Checkpoint { tensors, heads: None })
}

/// Every tensor of a .safetensors / .pt / .pth file as f32, `module.` prefixes dropped.
fn read_tensor_file(path: &Path) -> Result<TensorMap> {
    let shown = path.display().to_string();
    let ck_err = |reason: String| Error::Checkpoint { path: shown.clone(), reason };
    if !path.exists() {
        return Err(Error::io(&shown, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let raw: Vec<(String, Tensor)> = if ext == "safetensors" {
        let bytes = std::fs::read(path).map_err(|e| Error::io(&shown, e))?;
        safetensors_tensors(&bytes).map_err(ck_err)?
    } else {
        read_pickle(path).map_err(ck_err)?
    };
    if raw.is_empty() {
        return Err(ck_err("no tensors found (expected a state dict, or one under 'ema' / 'model')".into()));
    }
    let mut map = TensorMap::new();
    for (name, t) in raw {
        let name = name.strip_prefix("module.").unwrap_or(&name).to_string();
        let t = t.to_dtype(DType::F32)?;
        map.insert(name, t);
    }
    Ok(map)
}

/// Every tensor of safetensors bytes, in the file's dtypes (a reason string on failure).
fn safetensors_tensors(bytes: &[u8]) -> std::result::Result<Vec<(String, Tensor)>, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("not a valid safetensors file: {e}"))?;
    st.tensors().into_iter().map(|(name, view)| Ok((name.to_string(), safetensor_to_tensor(&name, &view).map_err(|e| e.to_string())?))).collect()
}

/// Safetensors bytes held in memory (`origin` names them in messages) as f32 tensors.
pub fn read_safetensors_bytes(bytes: &[u8], origin: &str) -> Result<TensorMap> {
    let raw = safetensors_tensors(bytes).map_err(|reason| Error::Checkpoint { path: origin.to_string(), reason })?;
    raw.into_iter().map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?))).collect()
}

/// A safetensors view as a CPU tensor (f32 / f16 / bf16 / f64 / integer types).
fn safetensor_to_tensor(name: &str, view: &safetensors::tensor::TensorView) -> Result<Tensor> {
    use safetensors::Dtype as S;
    let dtype = match view.dtype() {
        S::F32 => DType::F32,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::F64 => DType::F64,
        S::I64 => DType::I64,
        S::U32 => DType::U32,
        S::U8 => DType::U8,
        S::I32 => DType::I32,
        other => return Err(Error::UnsupportedType(format!("{other:?} for tensor {name}"))),
    };
    Ok(Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)?)
}

/// The state dict of a zip pickle: under `ema`, `model` or `state_dict` if present, else the
/// top-level dict. Never panics (a malformed pickle is an error; a panic in candle's pickle parser
/// is caught).
fn read_pickle(path: &Path) -> std::result::Result<Vec<(String, Tensor)>, String> {
    let attempt = |key: Option<&str>| {
        let p = path.to_path_buf();
        let key = key.map(str::to_string);
        std::panic::catch_unwind(move || read_pickle_key(&p, key.as_deref()))
            .map_err(|_| "the pickle reader failed on this file (corrupt or unsupported checkpoint)".to_string())
    };
    let mut last_err = String::new();
    for key in [Some("ema"), Some("model"), Some("state_dict"), None] {
        match attempt(key)? {
            Ok(tensors) if !tensors.is_empty() => return Ok(tensors),
            Ok(_) => {}
            Err(e) => {
                let msg = e.to_string();
                if msg.contains("not found") && key.is_some() {
                    continue;
                }
                last_err = if msg.contains("zip") || msg.contains("Zip") || msg.contains("archive") {
                    format!("not a zip-format PyTorch checkpoint ({msg}); re-save it with torch.save in PyTorch >= 1.6")
                } else {
                    msg
                };
                if key.is_none() {
                    break;
                }
            }
        }
    }
    if last_err.is_empty() {
        last_err = "no tensors found (expected a state dict, or one under 'ema' / 'model')".into();
    }
    Err(last_err)
}

/// All tensors of a zip pickle's state dict (under `key`): candle parses the pickle, each tensor
/// is read here from its storage record ([`read_view`]).
fn read_pickle_key(path: &Path, key: Option<&str>) -> candle_core::Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path)?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    check_pickles(&mut zip)?;
    let pth = candle_core::pickle::PthTensors::new(path, key)?;
    let mut out = Vec::with_capacity(pth.tensor_infos().len());
    for (name, info) in pth.tensor_infos() {
        out.push((name.clone(), read_view(&mut zip, info)?));
    }
    Ok(out)
}

/// Walks the opcodes of every `data.pkl` of the archive before candle reads them: candle
/// allocates a string's claimed length (`BinUnicode`, up to 4 GiB) before reading it, so a length
/// that runs past the pickle is refused here first.
fn check_pickles<R: std::io::Read + std::io::Seek>(zip: &mut zip::ZipArchive<R>) -> candle_core::Result<()> {
    use std::io::Read;
    let names: Vec<String> = zip.file_names().filter_map(|n| n.ok()).filter(|n| n.ends_with("data.pkl")).map(|n| n.into_owned()).collect();
    for name in names {
        let mut pkl = Vec::new();
        zip.by_name(&name).map_err(|e| candle_core::Error::Msg(e.to_string()))?.read_to_end(&mut pkl)?;
        let mut i = 0;
        while let Some(&op) = pkl.get(i) {
            i += 1;
            let arg = match op {
                b'.' => break,
                // Global: module and class, each a line
                b'c' => {
                    for _ in 0..2 {
                        i += pkl.get(i..).and_then(|r| r.iter().position(|&b| b == b'\n')).map_or(pkl.len(), |p| p + 1);
                    }
                    0
                }
                b'X' => {
                    let len = pkl.get(i..i + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
                    if len > pkl.len().saturating_sub(i + 4) {
                        return Err(candle_core::Error::Msg(format!("{name}: a {len}-byte string at byte {} runs past the {}-byte pickle", i - 1, pkl.len())));
                    }
                    4 + len
                }
                0x80 | b'q' | b'K' | b'h' => 1,
                b'M' => 2,
                b'r' | b'J' | b'j' => 4,
                b'G' => 8,
                0x8a => 1 + pkl.get(i).map_or(0, |&n| n as usize),
                // opcodes without an argument; candle refuses any other
                b')' | b'R' | b'(' | b't' | b'Q' | b'N' | 0x81 | 0x85..=0x89 | b's' | b'u' | b'}' | b'd' | b'b' | b']' | b'a' | b'e' => 0,
                _ => break,
            };
            i += arg;
        }
    }
    Ok(())
}

/// Most elements a view may have beyond its storage's (a stride-0 view repeats elements).
const MAX_BROADCAST_ELEMS: usize = 1 << 24;

/// One tensor of a zip pickle, from its storage record: contiguous, Fortran-order or strided
/// (slices saved without `.contiguous()`, gathered element by element). The view must lie inside
/// the storage bytes actually there, so a pickle's claimed shape alone allocates nothing.
fn read_view<R: std::io::Read + std::io::Seek>(zip: &mut zip::ZipArchive<R>, info: &candle_core::pickle::TensorInfo) -> candle_core::Result<Tensor> {
    use std::io::Read;
    let err = |m: String| candle_core::Error::Msg(format!("tensor {}: {m}", info.name));
    let mut entry = zip.by_name(&info.path).map_err(|e| err(e.to_string()))?;
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes)?;
    let elem = info.dtype.size_in_bytes();
    let storage_elems = bytes.len() / elem;
    let dims = info.layout.dims().to_vec();
    let stride = info.layout.stride().to_vec();
    // candle records the view's start offset in bytes.
    let start = info.layout.start_offset() / elem;
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| err(format!("shape {dims:?} overflows")))?;
    if n == 0 {
        return Tensor::zeros(dims, info.dtype, &Device::Cpu);
    }
    // The last element the view reaches.
    let last = dims.iter().zip(&stride).try_fold(start, |a, (&d, &s)| a.checked_add((d - 1).checked_mul(s)?));
    if last.is_none_or(|l| l >= storage_elems) {
        return Err(err(format!("view {dims:?} (stride {stride:?}, start {start}) reaches past its {storage_elems}-element storage")));
    }
    if n > storage_elems.max(MAX_BROADCAST_ELEMS) {
        return Err(err(format!("view {dims:?} has {n} elements, its storage {storage_elems}")));
    }
    let storage = &bytes[..storage_elems * elem];
    if info.layout.is_contiguous() {
        return Tensor::from_raw_buffer(&storage[start * elem..(start + n) * elem], info.dtype, &dims, &Device::Cpu);
    }
    if info.layout.is_fortran_contiguous() {
        let reversed: Vec<usize> = dims.iter().rev().copied().collect();
        let t = Tensor::from_raw_buffer(&storage[start * elem..(start + n) * elem], info.dtype, &reversed, &Device::Cpu)?;
        return t.permute((0..dims.len()).rev().collect::<Vec<_>>());
    }
    let storage = Tensor::from_raw_buffer(storage, info.dtype, &[storage_elems], &Device::Cpu)?;
    let mut index = Vec::with_capacity(n);
    let mut pos = vec![0usize; dims.len()];
    for _ in 0..n {
        let off = start + pos.iter().zip(&stride).map(|(p, s)| p * s).sum::<usize>();
        index.push(u32::try_from(off).map_err(|_| err(format!("element {off} is past what a gather can index")))?);
        for d in (0..dims.len()).rev() {
            pos[d] += 1;
            if pos[d] < dims[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    storage.index_select(&Tensor::from_vec(index, n, &Device::Cpu)?, 0)?.reshape(dims)
}

/// Tensor name -> PyTorch-order shape: all that [`infer_config_from_shapes`] reads.
pub type ShapeMap = HashMap<String, Vec<usize>>;

fn dims_of<'a>(map: &'a ShapeMap, name: &str) -> Result<&'a [usize]> {
    map.get(name)
        .map(|d| d.as_slice())
        .ok_or_else(|| Error::arch(format!("checkpoint has no '{name}': is this a DiT / SparseDiT / Latte state dict?")))
}

/// Distinct integer indices `i` of keys `{prefix}.{i}.…`.
fn indices(map: &ShapeMap, prefix: &str) -> BTreeSet<usize> {
    let p = format!("{prefix}.");
    map.keys()
        .filter_map(|k| k.strip_prefix(&p))
        .filter_map(|rest| rest.split('.').next())
        .filter_map(|i| i.parse().ok())
        .collect()
}

/// The count of a contiguous index range 0..n, or an error naming the gap.
fn contiguous_count(set: &BTreeSet<usize>, what: &str) -> Result<usize> {
    for (want, &have) in set.iter().enumerate() {
        if want != have {
            return Err(Error::arch(format!("{what}: block {want} is missing (found {have})")));
        }
    }
    Ok(set.len())
}

/// Infer the architecture of an official DiT / SparseDiT / Latte state dict (or of this crate's
/// sparse Latte).
pub fn infer_config(map: &TensorMap, opts: &ImportOptions) -> Result<Config> {
    let shapes: ShapeMap = map.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect();
    infer_config_from_shapes(&shapes, opts)
}

/// [`infer_config`] from the tensors' names and shapes alone (a streamed file's header).
pub fn infer_config_from_shapes(map: &ShapeMap, opts: &ImportOptions) -> Result<Config> {
    let conv = dims_of(map, "x_embedder.proj.weight")?;
    if conv.len() != 4 || conv[2] != conv[3] {
        return Err(Error::arch(format!("x_embedder.proj.weight has shape {conv:?}, expected (C, c_in, p, p)")));
    }
    let (hidden, in_channels, patch) = (conv[0], conv[1], conv[2]);
    let pos = dims_of(map, "pos_embed")?;
    if pos.len() != 3 || pos[0] != 1 || pos[2] != hidden {
        return Err(Error::arch(format!("pos_embed has shape {pos:?}, expected (1, N, {hidden})")));
    }
    let grid = (pos[1] as f64).sqrt().round() as usize;
    if grid * grid != pos[1] {
        return Err(Error::arch(format!("pos_embed has {} tokens, not a square grid", pos[1])));
    }
    // Latte (video) has a `temp_embed` table of F frames; without a label table it is an
    // unconditional Latte (`extras: 1`).
    let num_frames = match map.get("temp_embed").map(|d| d.as_slice()) {
        None => None,
        Some(&[1, f, c]) if c == hidden && f > 0 => Some(f),
        Some(d) => return Err(Error::arch(format!("temp_embed has shape {d:?}, expected (1, F, {hidden})"))),
    };
    let (num_classes, class_null) = match (map.get("y_embedder.embedding_table.weight"), num_frames) {
        (None, Some(_)) => (0, false),
        _ => {
            let table = dims_of(map, "y_embedder.embedding_table.weight")?;
            if table.len() != 2 || table[0] < 2 || table[1] != hidden {
                return Err(Error::arch(format!("y_embedder.embedding_table.weight has shape {table:?}")));
            }
            // DiT and Latte train with label dropout, so the table has num_classes + 1 rows (the
            // null row).
            (table[0] - 1, true)
        }
    };
    let fin = dims_of(map, "final_layer.linear.weight")?;
    let out_ch = fin[0] / (patch * patch);
    if fin[0] % (patch * patch) != 0 {
        return Err(Error::arch(format!("final_layer.linear.weight has {} rows, not a multiple of p^2 = {}", fin[0], patch * patch)));
    }
    let learn_sigma = if out_ch == 2 * in_channels {
        true
    } else if out_ch == in_channels {
        false
    } else {
        return Err(Error::arch(format!("{out_ch} output channels for {in_channels} input channels (expected {in_channels} or {})", 2 * in_channels)));
    };

    let dense = indices(map, "blocks");
    let pool = indices(map, "poolingformer_blocks");
    let sdtm = indices(map, "dumbbell_blocks");
    let top = indices(map, "normal_blocks");
    let layout = if !dense.is_empty() {
        if !(pool.is_empty() && sdtm.is_empty() && top.is_empty()) {
            return Err(Error::arch("checkpoint mixes dense 'blocks' with SparseDiT segments"));
        }
        Layout::Dense { depth: contiguous_count(&dense, "blocks")? }
    } else if !(pool.is_empty() && sdtm.is_empty() && top.is_empty()) {
        let num_sdtm = contiguous_count(&sdtm, "dumbbell_blocks")?;
        let mut group = [0usize; 4];
        for (g, (kind, _)) in group.iter_mut().zip(SDTM_PARTS) {
            *g = contiguous_count(&indices(map, &format!("dumbbell_blocks.0.{kind}")), kind)?;
        }
        for k in 1..num_sdtm {
            for (g, (kind, _)) in group.iter().zip(SDTM_PARTS) {
                let c = indices(map, &format!("dumbbell_blocks.{k}.{kind}")).len();
                if c != *g {
                    return Err(Error::arch(format!("dumbbell_blocks.{k} has {c} {kind}, dumbbell_blocks.0 has {g}")));
                }
            }
        }
        Layout::Sparse(SparseLayout {
            num_poolingformer: contiguous_count(&pool, "poolingformer_blocks")?,
            num_sdtm,
            group,
            num_top: contiguous_count(&top, "normal_blocks")?,
        })
    } else {
        return Err(Error::arch("no transformer blocks found (neither 'blocks.N' nor SparseDiT segments)"));
    };
    let mlp_hidden = map
        .iter()
        .find(|(k, d)| k.ends_with(".mlp.fc1.weight") && !d.is_empty())
        .map(|(_, d)| d[0])
        .ok_or_else(|| Error::arch("no mlp.fc1 weight found"))?;
    let num_heads = match opts.heads {
        Some(h) => h,
        None => default_heads(hidden)
            .ok_or_else(|| Error::arch(format!("cannot infer the head count for width {hidden}: pass --heads")))?,
    };
    let cfg = Config {
        input_size: grid * patch,
        patch_size: patch,
        in_channels,
        hidden_size: hidden,
        num_heads,
        mlp_hidden,
        num_classes,
        class_null,
        learn_sigma,
        layout,
        semantic_size: opts.semantic_size.unwrap_or(8),
        num_frames,
        trained_rates: None,
        pooled_middle: None,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Initialise a SparseDiT layout from a dense DiT state dict as the paper does: dense block i
/// initialises the i-th block of the sparse order; `attn.q` = first third of `attn.qkv`,
/// `attn.kv` = last two thirds, `attn.v` = last third; `merged_layer1` = 0, `merged_layer2` = I.
pub fn dit_to_sparsedit(dense: &TensorMap, dense_cfg: &Config, layout: SparseLayout) -> Result<(Config, TensorMap)> {
    let Layout::Dense { depth } = dense_cfg.layout else {
        return Err(Error::arg("dit-to-sparsedit needs a dense DiT checkpoint"));
    };
    let mut cfg = dense_cfg.clone();
    cfg.layout = Layout::Sparse(layout);
    if cfg.layout.depth() != depth {
        return Err(Error::arg(format!(
            "the sparse layout has {} blocks, the dense checkpoint {depth}",
            cfg.layout.depth()
        )));
    }
    let c = cfg.hidden_size;
    let mut out = TensorMap::new();
    // Everything outside the blocks is copied.
    for (k, t) in dense {
        if !k.starts_with("blocks.") {
            out.insert(k.clone(), t.clone());
        }
    }
    let get = |name: &str| dense.get(name).ok_or_else(|| Error::Keys { missing: vec![name.to_string()], unexpected: vec![] });
    for spec in cfg.blocks(cfg.grid()) {
        let (target, src) = (&spec.prefix, format!("blocks.{}", spec.index));
        let copy = |out: &mut TensorMap, suffix: &str| -> Result<()> {
            out.insert(format!("{target}.{suffix}"), get(&format!("{src}.{suffix}"))?.clone());
            Ok(())
        };
        for suffix in ["mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "adaLN_modulation.1.weight", "adaLN_modulation.1.bias", "attn.proj.weight", "attn.proj.bias"] {
            copy(&mut out, suffix)?;
        }
        let qkv_w = get(&format!("{src}.attn.qkv.weight"))?;
        let qkv_b = get(&format!("{src}.attn.qkv.bias"))?;
        let weights = spec.kind.weights();
        match weights {
            BlockWeights::Poolingformer => {
                out.insert(format!("{target}.attn.v.weight"), qkv_w.narrow(0, 2 * c, c)?);
                out.insert(format!("{target}.attn.v.bias"), qkv_b.narrow(0, 2 * c, c)?);
            }
            BlockWeights::Merge | BlockWeights::Recover => {
                out.insert(format!("{target}.attn.q.weight"), qkv_w.narrow(0, 0, c)?);
                out.insert(format!("{target}.attn.q.bias"), qkv_b.narrow(0, 0, c)?);
                out.insert(format!("{target}.attn.kv.weight"), qkv_w.narrow(0, c, 2 * c)?);
                out.insert(format!("{target}.attn.kv.bias"), qkv_b.narrow(0, c, 2 * c)?);
            }
            BlockWeights::Dit => {
                copy(&mut out, "attn.qkv.weight")?;
                copy(&mut out, "attn.qkv.bias")?;
            }
        }
        if weights == BlockWeights::Recover {
            let dev = qkv_w.device();
            out.insert(format!("{target}.merged_layer1.weight"), Tensor::zeros((c, c), DType::F32, dev)?);
            out.insert(format!("{target}.merged_layer1.bias"), Tensor::zeros(c, DType::F32, dev)?);
            out.insert(format!("{target}.merged_layer2.weight"), Tensor::eye(c, DType::F32, dev)?);
            out.insert(format!("{target}.merged_layer2.bias"), Tensor::zeros(c, DType::F32, dev)?);
        }
    }
    Ok((cfg, out))
}

/// Parse a SparseDiT layout `P,K,a:b:c:d,T` (e.g. `1,4,1:3:1:1,3`).
pub fn parse_layout(s: &str) -> Result<SparseLayout> {
    let bad = || Error::arg(format!("layout {s:?}: expected POOL,SDTM,a:b:c:d,TOP (e.g. 1,4,1:3:1:1,3)"));
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != 4 {
        return Err(bad());
    }
    let num = |v: &str| v.parse::<usize>().map_err(|_| bad());
    let g: Vec<usize> = parts[2].split(':').map(num).collect::<Result<_>>()?;
    if g.len() != 4 {
        return Err(bad());
    }
    Ok(SparseLayout { num_poolingformer: num(parts[0])?, num_sdtm: num(parts[1])?, group: [g[0], g[1], g[2], g[3]], num_top: num(parts[3])? })
}
