//! Streaming safetensors -> GGUF pack converter: a DiT checkpoint in safetensors (diffusers'
//! `DiTTransformer2DModel` layout, as `facebook/DiT-XL-2-256` publishes it, or the official key
//! names) arrives in chunks of any size (a `fetch` body), and comes out as a model pack — the
//! bytes `pack::write_pack` would write for the same tensors, up to the order of the tensors —
//! while it arrives, so neither file ever sits in memory whole.
//!
//! - The safetensors header (8-byte little-endian length + JSON) is parsed as soon as its bytes
//!   are there and checked strictly: a bounded length, known float dtypes (F32 / F16 / BF16 /
//!   F64), 1 to 4 non-zero dims, byte counts that agree with the offsets, offsets that tile the
//!   data section exactly (no gap, no overlap), and the announced file size.
//! - diffusers' names map to the official ones by the rules of [`crate::diffusers`]: the
//!   `to_q / to_k / to_v` thirds are joined into `attn.qkv` (in that order), the timestep / class
//!   embedder copies of every block must be identical (each later copy is compared with the first
//!   as it arrives; a difference fails the conversion), `pos_embed` is the sin-cos table of
//!   `config.json`'s `sample_size / patch_size` (a stored `pos_embed.pos_embed` must equal it).
//! - The architecture comes from the header's shapes ([`crate::import::infer_config_from_shapes`])
//!   plus `num_attention_heads`, and the tensor set must be exactly what the model reads
//!   ([`Model::expected_tensors`]) before anything is emitted. Then the whole GGUF header goes out
//!   (tensor infos with their final types and offsets, the metadata `pack::write_pack` writes), and
//!   each output tensor's bytes follow in the order the tensors complete, encoded to
//!   [`pack::storage_type`] block by block as its source bytes arrive.
//! - Only what waits for partners is buffered: the encoded pieces of a `qkv` group until its last
//!   piece arrives, the f32 values of the first embedder copy until the last copy is compared, and
//!   the position table when the file stores one to check. [`ConvertStream::peak_buffered`] says
//!   how much that was.
//! - [`ConvertStream::finish`] checks the SOURCE's size and sha256; on any error the caller must
//!   throw away everything emitted (the stream also refuses further pushes).

use std::collections::{BTreeMap, HashMap};

use half::{bf16, f16};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::gguf::{self, GgufHeader, MetaValue, TensorEntry, TensorType};
use crate::grid::sincos_pos_embed;
use crate::import::{infer_config_from_shapes, ImportOptions, ShapeMap};
use crate::model::Model;
use crate::pack;
use crate::stream::normalize_sha256;

/// A safetensors header longer than this is refused (the safetensors crate's own limit; DiT-XL's
/// is ~60 KB).
pub const MAX_SOURCE_HEADER: u64 = 100 << 20;
/// Most elements one source tensor may have (8 GiB of f32; DiT-XL's largest has 5.3 M).
const MAX_TENSOR_ELEMS: u64 = 1 << 31;
/// Most elements of a computed position table (DiT-XL/2 at 512 px: 4.7 M).
const MAX_POS_TABLE: usize = 1 << 28;
/// Source bytes converted per step inside one push (bounds the f32 scratch).
const STEP_BYTES: usize = 1 << 18;

/// diffusers' `config.json` of the transformer: [`crate::diffusers::DiffusersConfig`], the one
/// reader of it (the folder import reads the same file), limited here to DiTs.
type SourceConfig = crate::diffusers::DiffusersConfig;

fn parse_source_config(json: &str) -> Result<SourceConfig> {
    let cfg = SourceConfig::parse(json, "config.json")?;
    if cfg.class() != crate::diffusers::DiffusersClass::Dit {
        return Err(cfg_err(format!("a {}, not a DiT transformer (DiTTransformer2DModel)", cfg.class_name.as_deref().unwrap_or("?"))));
    }
    Ok(cfg)
}

fn cfg_err(reason: String) -> Error {
    Error::Checkpoint { path: "config.json".into(), reason }
}

fn src_err(reason: impl Into<String>) -> Error {
    Error::Checkpoint { path: "safetensors source".into(), reason: reason.into() }
}

/// What a pack converted from a diffusers `config.json` will take, before any weight arrives.
#[derive(Clone, Debug)]
pub struct PackPlan {
    pub cfg: Config,
    /// Bytes of the pack (header included; exact when the weights match the config).
    pub pack_bytes: u64,
    /// Bytes of the tensors in their pack types (what the GPU holds for the weights).
    pub tensor_bytes: u64,
    /// Trained parameters (as `Config::num_parameters`: the frozen position table not counted).
    pub params: u64,
    /// The largest tensor in its pack type: the largest weight buffer the GPU must allocate.
    pub largest_tensor_bytes: u64,
}

/// The pack a diffusers DiT `config.json` converts to with `quant`.
pub fn plan_pack(config_json: &str, quant: TensorType, name: &str) -> Result<PackPlan> {
    let cfg = parse_source_config(config_json)?.dit_config()?;
    let expected = Model::expected_tensors(&cfg)?;
    let types: Vec<TensorType> = expected.iter().map(|(n, s)| pack::storage_type(n, s, quant)).collect();
    let entries: Vec<TensorEntry> = expected.iter().zip(&types).map(|((n, s), &ty)| TensorEntry { name: n, shape: s, ty }).collect();
    let (header, offsets) = gguf::header_bytes(&metadata(&cfg, name, quant), &entries)?;
    let (mut tensor_bytes, mut largest_tensor_bytes, mut end) = (0u64, 0u64, 0u64);
    for (((_, shape), ty), off) in expected.iter().zip(&types).zip(&offsets) {
        let b = ty.bytes_for(shape.iter().product())? as u64;
        tensor_bytes += b;
        largest_tensor_bytes = largest_tensor_bytes.max(b);
        end = off + b;
    }
    let params = cfg.num_parameters() as u64;
    Ok(PackPlan { cfg, pack_bytes: header.len() as u64 + end, tensor_bytes, params, largest_tensor_bytes })
}

/// The pack's metadata, as `pack::write_pack` writes it.
fn metadata(cfg: &Config, name: &str, quant: TensorType) -> Vec<(String, MetaValue)> {
    let mut m = pack::config_metadata(cfg, name);
    m.push(("sparsedit.quantization".to_string(), MetaValue::String(quant.name().to_string())));
    m
}

// ---------------------------------------------------------------------------------------------
// The safetensors header
// ---------------------------------------------------------------------------------------------

/// A source element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    F64,
}

impl Dtype {
    fn parse(s: &str, tensor: &str) -> Result<Dtype> {
        Ok(match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "F64" => Dtype::F64,
            other => return Err(Error::UnsupportedType(format!("{other} in source tensor '{tensor}' (a DiT's weights are F32, F16, BF16 or F64)"))),
        })
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::F64 => 8,
        }
    }

    /// Little-endian values (`bytes.len()` a multiple of the size) appended as f32.
    fn to_f32(self, bytes: &[u8], out: &mut Vec<f32>) {
        match self {
            Dtype::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            Dtype::F16 => out.extend(bytes.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())),
            Dtype::BF16 => out.extend(bytes.chunks_exact(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())),
            Dtype::F64 => out.extend(bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)),
        }
    }
}

/// One tensor of a safetensors file: offsets relative to the data section.
#[derive(Clone, Debug)]
pub struct SourceTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: u64,
    pub end: u64,
}

impl SourceTensor {
    fn elems(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// Parse and check a safetensors header's JSON (the bytes after the 8-byte length): every
/// tensor, sorted by offset, tiling `0..data_len` exactly; returns them and `data_len`.
pub fn parse_source_header(json: &[u8]) -> Result<(Vec<SourceTensor>, u64)> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| src_err(format!("the header is not a JSON object: {e}")))?;
    let mut tensors = Vec::with_capacity(map.len());
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        let e: RawEntry = serde_json::from_value(v).map_err(|e| src_err(format!("tensor '{name}': {e}")))?;
        let dtype = Dtype::parse(&e.dtype, &name)?;
        if e.shape.is_empty() || e.shape.len() > gguf::MAX_DIMS || e.shape.contains(&0) {
            return Err(src_err(format!("tensor '{name}' has shape {:?} (a DiT's tensors have 1 to 4 non-zero dims)", e.shape)));
        }
        let elems = e.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d).filter(|&n| n <= MAX_TENSOR_ELEMS));
        let Some(elems) = elems else {
            return Err(src_err(format!("tensor '{name}': shape {:?} is absurdly large", e.shape)));
        };
        let [start, end] = e.data_offsets;
        if end < start {
            return Err(src_err(format!("tensor '{name}': offsets {start}..{end} end before they start")));
        }
        if end - start != elems * dtype.size() as u64 {
            return Err(src_err(format!(
                "tensor '{name}': offsets {start}..{end} hold {} bytes, shape {:?} in {:?} takes {}",
                end - start,
                e.shape,
                dtype,
                elems * dtype.size() as u64
            )));
        }
        let shape = e.shape.iter().map(|&d| d as usize).collect();
        tensors.push(SourceTensor { name, dtype, shape, start, end });
    }
    if tensors.is_empty() {
        return Err(src_err("the header lists no tensors"));
    }
    tensors.sort_by_key(|t| (t.start, t.end));
    let mut pos = 0u64;
    for t in &tensors {
        if t.start != pos {
            let what = if t.start < pos { "overlaps the tensor before it" } else { "leaves a gap before it" };
            return Err(src_err(format!("tensor '{}' at {}..{} {what} (offsets must tile the data section)", t.name, t.start, t.end)));
        }
        pos = t.end;
    }
    Ok((tensors, pos))
}

// ---------------------------------------------------------------------------------------------
// The conversion plan: which source bytes make which pack tensor
// ---------------------------------------------------------------------------------------------

/// What a source tensor is for.
#[derive(Clone, Copy, Debug)]
enum Role {
    /// Piece `piece` (in output order) of output `out`.
    Piece { out: usize, piece: usize },
    /// A later copy of a shared embedder, compared with output `out`'s first copy.
    Copy { out: usize },
    /// diffusers' stored position table: must equal the computed one.
    PosCheck,
}

/// A tensor of the pack.
struct Output {
    name: String,
    shape: Vec<usize>,
    ty: TensorType,
    offset: u64,
    nbytes: u64,
    /// Source indices of its pieces, in output order (empty for a computed tensor).
    pieces: Vec<usize>,
    /// Encoded bytes of pieces that arrived before the last one.
    buffers: Vec<Option<Vec<u8>>>,
    /// Values of a computed tensor (the position table), until emitted.
    computed: Option<Vec<f32>>,
    /// The first copy's values, kept while later copies are still to be compared.
    reference: Option<Vec<f32>>,
    copies_left: usize,
}

/// Where the bytes of the source being received go.
enum Sink {
    /// Straight out (the output's last piece; earlier pieces were flushed before it).
    Stream,
    /// Into this piece's buffer (a partner arrives later).
    Buffer(Vec<u8>),
    /// Compared with the first copy (`seen` values so far).
    Compare { seen: usize },
    /// Compared with the computed position table.
    PosCompare { seen: usize },
}

struct Current {
    /// The source's role.
    role: Role,
    sink: Sink,
    /// Bytes of an element split across chunks.
    tail: Vec<u8>,
    /// Converted values not yet encoded (fewer than a block after each step).
    vals: Vec<f32>,
    /// Keep the values as the output's reference (the first of several embedder copies).
    keep_reference: bool,
    /// How many of `vals` are in the reference already.
    referenced: usize,
}

/// Which names the source used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceLayout {
    /// diffusers' `DiTTransformer2DModel`.
    Diffusers,
    /// The official checkpoint names (DiT, SparseDiT, Latte).
    Official,
}

impl SourceLayout {
    pub fn name(self) -> &'static str {
        match self {
            SourceLayout::Diffusers => "diffusers",
            SourceLayout::Official => "official",
        }
    }
}

struct Plan {
    /// File position of the data section (8 + header length).
    data_start: u64,
    data_len: u64,
    sources: Vec<SourceTensor>,
    roles: Vec<Role>,
    outputs: Vec<Output>,
    /// The source being received, and its state once started.
    next_src: usize,
    current: Option<Current>,
    /// The next output to emit (all before it are out).
    next_out: usize,
    /// Data-section bytes emitted so far.
    data_pos: u64,
    /// Source data-section position of the next byte to come.
    src_pos: u64,
    header: GgufHeader,
    cfg: Config,
    pack_bytes: u64,
    /// The computed position table, kept for a stored one's check.
    pos_table: Option<Vec<f32>>,
    layout: SourceLayout,
    /// Pack bytes ready for the caller.
    out: Vec<u8>,
    /// Bytes held for partners now, and at most so far.
    buffered: usize,
    peak_buffered: usize,
}

/// Map diffusers' names to the official ones: each official tensor's source pieces, shared
/// embedder copies, the stored position table's check.
struct Mapping {
    /// official name -> source indices (pieces in output order; for shared tensors, every copy)
    outputs: BTreeMap<String, (Vec<usize>, bool)>,
    pos_check: Option<usize>,
    pos_table: Option<(usize, usize)>,
}

fn diffusers_mapping(sources: &[SourceTensor], config: &SourceConfig) -> Result<Mapping> {
    use crate::diffusers::{dit_depth, dit_name_map, DitSource};
    let index: HashMap<&str, usize> = sources.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let depth = dit_depth(|k| index.contains_key(k), config)?;
    let mut used = vec![false; sources.len()];
    let mut take = |name: &str| -> Result<usize> {
        let i = *index.get(name).ok_or_else(|| Error::arch(format!("diffusers DiT: '{name}' is missing")))?;
        used[i] = true;
        Ok(i)
    };
    let mut outputs: BTreeMap<String, (Vec<usize>, bool)> = BTreeMap::new();
    for (official, source) in dit_name_map(depth) {
        let entry = match source {
            DitSource::One(s) => (vec![take(&s)?], false),
            DitSource::Joined(parts) => (parts.iter().map(|p| take(p)).collect::<Result<Vec<_>>>()?, false),
            DitSource::Shared(names) => {
                // The copies' values are compared as they arrive; their shapes can be now.
                let copies = names.iter().map(|n| take(n)).collect::<Result<Vec<_>>>()?;
                let first = &sources[copies[0]];
                for &c in &copies[1..] {
                    if sources[c].shape != first.shape {
                        return Err(Error::arch(format!(
                            "diffusers DiT: {} has shape {:?}, block 0's copy {:?}; a converted DiT shares one embedder (this checkpoint is not one)",
                            sources[c].name, sources[c].shape, first.shape
                        )));
                    }
                }
                (copies, true)
            }
        };
        outputs.insert(official, entry);
    }
    let pos_check = index.get("pos_embed.pos_embed").copied();
    if let Some(i) = pos_check {
        used[i] = true;
    }
    if let Some(i) = used.iter().position(|u| !u) {
        let left = used.iter().filter(|u| !**u).count();
        return Err(Error::arch(format!("diffusers DiT: unexpected tensor '{}' ({left} left over)", sources[i].name)));
    }
    let hidden = sources[index["pos_embed.proj.weight"]].shape[0];
    let n = config.grid()?;
    if n.checked_mul(n).and_then(|t| t.checked_mul(hidden)).is_none_or(|e| e > MAX_POS_TABLE) {
        return Err(cfg_err(format!("a {n}x{n} position table of width {hidden} is absurdly large")));
    }
    Ok(Mapping { outputs, pos_check, pos_table: Some((n, hidden)) })
}

fn official_mapping(sources: &[SourceTensor]) -> Result<Mapping> {
    let mut outputs = BTreeMap::new();
    for (i, s) in sources.iter().enumerate() {
        let name = s.name.strip_prefix("module.").unwrap_or(&s.name).to_string();
        if outputs.insert(name.clone(), (vec![i], false)).is_some() {
            return Err(src_err(format!("tensor '{name}' appears twice (with and without 'module.')")));
        }
    }
    Ok(Mapping { outputs, pos_check: None, pos_table: None })
}

impl Plan {
    /// The plan, and the pack's header bytes.
    fn build(sources: Vec<SourceTensor>, data_start: u64, data_len: u64, config: Option<&SourceConfig>, quant: TensorType, name: &str) -> Result<(Plan, Vec<u8>)> {
        let diffusers = sources.iter().any(|s| s.name == "pos_embed.proj.weight") && sources.iter().any(|s| s.name.starts_with("transformer_blocks."));
        let (mapping, layout) = if diffusers {
            let config = config.ok_or_else(|| {
                src_err("diffusers' DiT layout: its config.json is needed too (sample_size / patch_size for the position table, the head count)")
            })?;
            (diffusers_mapping(&sources, config)?, SourceLayout::Diffusers)
        } else {
            (official_mapping(&sources)?, SourceLayout::Official)
        };
        // Official shapes -> the architecture.
        let mut shapes = ShapeMap::new();
        for (name, (pieces, shared)) in &mapping.outputs {
            let first = &sources[pieces[0]];
            let mut shape = first.shape.clone();
            if !shared && pieces.len() > 1 {
                for &p in &pieces[1..] {
                    let s = &sources[p].shape;
                    if s.len() != shape.len() || s[1..] != shape[1..] {
                        return Err(Error::Shape { name: sources[p].name.clone(), expected: [&[s[0]][..], &shape[1..]].concat(), found: s.clone() });
                    }
                    shape[0] = shape[0].checked_add(s[0]).ok_or_else(|| src_err(format!("'{name}' joined from its pieces is absurdly large")))?;
                }
                let elems = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).filter(|&n| n <= MAX_TENSOR_ELEMS);
                if elems.is_none() {
                    return Err(src_err(format!("'{name}' joined from its pieces is absurdly large")));
                }
            }
            shapes.insert(name.clone(), shape);
        }
        if let Some((n, hidden)) = mapping.pos_table {
            shapes.insert("pos_embed".into(), vec![1, n * n, hidden]);
        }
        let heads = config.and_then(|c| c.num_attention_heads);
        if diffusers && heads.is_none() {
            return Err(cfg_err("lacks num_attention_heads".into()));
        }
        let cfg = infer_config_from_shapes(&shapes, &ImportOptions { heads, semantic_size: None })?;
        // Exactly the tensors the model reads, with its shapes.
        let expected = Model::expected_tensors(&cfg)?;
        let mut missing = Vec::new();
        for (n, s) in &expected {
            match shapes.get(n) {
                None => missing.push(n.clone()),
                Some(found) if found != s => return Err(Error::Shape { name: n.clone(), expected: s.clone(), found: found.clone() }),
                Some(_) => {}
            }
        }
        let wanted: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        let mut unexpected: Vec<String> = shapes.keys().filter(|k| !wanted.contains(k.as_str())).cloned().collect();
        unexpected.sort();
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(Error::Keys { missing, unexpected });
        }

        // Outputs in the order they complete: computed ones first, then by their last piece.
        let mut order: Vec<(usize, String)> = Vec::new(); // (key, name); key 0 = computed
        for (name, (pieces, shared)) in &mapping.outputs {
            // a shared tensor is its first copy to arrive; others complete with their last piece
            let last = if *shared { *pieces.iter().min().expect("a copy") } else { *pieces.iter().max().expect("a piece") };
            order.push((last + 1, name.clone()));
        }
        if mapping.pos_table.is_some() {
            order.push((0, "pos_embed".into()));
        }
        order.sort();
        let mut roles: Vec<Option<Role>> = vec![None; sources.len()];
        let mut outputs = Vec::with_capacity(order.len());
        let mut pos_table = None;
        for (k, (_, name)) in order.iter().enumerate() {
            let shape = shapes[name].clone();
            let ty = pack::storage_type(name, &shape, quant);
            let elems: usize = shape.iter().product();
            let nbytes = ty.bytes_for(elems)? as u64;
            let mut out = Output {
                name: name.clone(),
                shape,
                ty,
                offset: 0,
                nbytes,
                pieces: Vec::new(),
                buffers: Vec::new(),
                computed: None,
                reference: None,
                copies_left: 0,
            };
            match mapping.outputs.get(name) {
                None => {
                    let (n, hidden) = mapping.pos_table.expect("computed = the position table");
                    let table = sincos_pos_embed(hidden, n);
                    if mapping.pos_check.is_some() {
                        pos_table = Some(table.clone());
                    }
                    out.computed = Some(table);
                }
                Some((pieces, true)) => {
                    // the first copy arriving is the tensor; the others are compared with it
                    let mut copies = pieces.clone();
                    copies.sort();
                    roles[copies[0]] = Some(Role::Piece { out: k, piece: 0 });
                    for &c in &copies[1..] {
                        roles[c] = Some(Role::Copy { out: k });
                    }
                    out.copies_left = copies.len() - 1;
                    out.pieces = vec![copies[0]];
                }
                Some((pieces, false)) => {
                    for (p, &src) in pieces.iter().enumerate() {
                        if !sources[src].elems().is_multiple_of(ty.block_size()) {
                            return Err(src_err(format!("{} is not whole {ty} blocks", sources[src].name)));
                        }
                        roles[src] = Some(Role::Piece { out: k, piece: p });
                    }
                    out.pieces = pieces.clone();
                }
            }
            out.buffers = vec![None; out.pieces.len()];
            outputs.push(out);
        }
        if let Some(i) = mapping.pos_check {
            let s = &sources[i];
            let (n, hidden) = mapping.pos_table.expect("diffusers");
            if s.elems() != n * n * hidden {
                return Err(Error::arch("diffusers DiT: pos_embed.pos_embed is not the sin-cos table of sample_size / patch_size"));
            }
            roles[i] = Some(Role::PosCheck);
        }
        let roles = roles.into_iter().collect::<Option<Vec<Role>>>().ok_or_else(|| src_err("internal: a source tensor without a role"))?;

        // The header, with every offset.
        let entries: Vec<TensorEntry> = outputs.iter().map(|o| TensorEntry { name: &o.name, shape: &o.shape, ty: o.ty }).collect();
        let (header_bytes, offsets) = gguf::header_bytes(&metadata(&cfg, name, quant), &entries)?;
        for (o, off) in outputs.iter_mut().zip(&offsets) {
            o.offset = *off;
        }
        let last = outputs.last().expect("a model has tensors");
        let pack_bytes = header_bytes.len() as u64 + last.offset + last.nbytes;
        // Self-check: the header reads back as a valid pack of this architecture.
        let header = GgufHeader::parse_prefix(&header_bytes)?.ok_or_else(|| Error::gguf("internal: the written header does not parse"))?;
        header.validate_len(pack_bytes)?;
        pack::config_from_header(&header)?;
        let plan = Plan {
            data_start,
            data_len,
            sources,
            roles,
            outputs,
            next_src: 0,
            current: None,
            next_out: 0,
            data_pos: 0,
            src_pos: 0,
            header,
            cfg,
            pack_bytes,
            pos_table,
            layout,
            out: Vec::new(),
            buffered: 0,
            peak_buffered: 0,
        };
        Ok((plan, header_bytes))
    }

    fn account(&mut self, bytes: usize, add: bool) {
        if add {
            self.buffered += bytes;
            self.peak_buffered = self.peak_buffered.max(self.buffered);
        } else {
            self.buffered = self.buffered.saturating_sub(bytes);
        }
    }

    /// Route the next data-section bytes through the sources they belong to.
    fn consume(&mut self, mut bytes: &[u8]) -> Result<()> {
        self.flush_computed()?;
        loop {
            if self.next_src >= self.sources.len() {
                if !bytes.is_empty() {
                    return Err(src_err("more data than its header describes"));
                }
                return Ok(());
            }
            if self.current.is_none() {
                self.start_source()?;
            }
            let left = self.sources[self.next_src].end - self.src_pos;
            if left == 0 {
                self.end_source()?;
                continue;
            }
            if bytes.is_empty() {
                return Ok(());
            }
            let take = (left.min(bytes.len() as u64) as usize).min(STEP_BYTES);
            self.feed(&bytes[..take])?;
            self.src_pos += take as u64;
            bytes = &bytes[take..];
        }
    }

    /// Emit the computed outputs that are next in order.
    fn flush_computed(&mut self) -> Result<()> {
        while let Some(values) = self.outputs.get_mut(self.next_out).and_then(|o| o.computed.take()) {
            let k = self.next_out;
            let bytes = gguf::encode(&values, self.outputs[k].ty)?;
            self.emit_start(k)?;
            self.emit(&bytes);
            self.emit_end(k)?;
        }
        Ok(())
    }

    /// Zero padding up to output `k`'s offset (`k` must be the next output).
    fn emit_start(&mut self, k: usize) -> Result<()> {
        if k != self.next_out {
            return Err(src_err(format!("internal: output {k} before output {}", self.next_out)));
        }
        let off = self.outputs[k].offset;
        if off < self.data_pos || off - self.data_pos >= gguf::DEFAULT_ALIGNMENT as u64 {
            return Err(src_err("internal: pack offsets out of step"));
        }
        let pad = (off - self.data_pos) as usize;
        self.data_pos = off;
        self.out.extend(std::iter::repeat_n(0u8, pad));
        Ok(())
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.data_pos += bytes.len() as u64;
        self.out.extend_from_slice(bytes);
    }

    fn emit_end(&mut self, k: usize) -> Result<()> {
        let o = &self.outputs[k];
        if self.data_pos != o.offset + o.nbytes {
            return Err(src_err(format!("internal: tensor '{}' came out with the wrong length", o.name)));
        }
        self.next_out += 1;
        Ok(())
    }

    /// Emit the buffered pieces `range` of output `k`.
    fn emit_buffers(&mut self, k: usize, range: std::ops::Range<usize>) -> Result<()> {
        for p in range {
            let b = self.outputs[k].buffers[p].take().ok_or_else(|| src_err("internal: a piece is missing at its partner's end"))?;
            self.emit(&b);
            self.account(b.len(), false);
        }
        Ok(())
    }

    fn start_source(&mut self) -> Result<()> {
        let i = self.next_src;
        let role = self.roles[i];
        let (sink, keep_reference) = match role {
            Role::Piece { out, piece } => {
                let o = &self.outputs[out];
                if o.pieces.iter().max() == Some(&i) {
                    // its last piece: the earlier ones are buffered, this one streams out
                    let keep = o.copies_left > 0;
                    self.emit_start(out)?;
                    self.emit_buffers(out, 0..piece)?;
                    (Sink::Stream, keep)
                } else {
                    (Sink::Buffer(Vec::new()), false)
                }
            }
            Role::Copy { .. } => (Sink::Compare { seen: 0 }, false),
            Role::PosCheck => (Sink::PosCompare { seen: 0 }, false),
        };
        self.current = Some(Current { role, sink, tail: Vec::new(), vals: Vec::new(), keep_reference, referenced: 0 });
        Ok(())
    }

    /// Bytes of the current source.
    fn feed(&mut self, bytes: &[u8]) -> Result<()> {
        let dtype = self.sources[self.next_src].dtype;
        let mut cur = self.current.take().expect("started");
        let esz = dtype.size();
        let mut rest = bytes;
        if !cur.tail.is_empty() {
            let need = (esz - cur.tail.len()).min(rest.len());
            cur.tail.extend_from_slice(&rest[..need]);
            rest = &rest[need..];
            if cur.tail.len() == esz {
                dtype.to_f32(&cur.tail, &mut cur.vals);
                cur.tail.clear();
            }
        }
        let whole = rest.len() / esz * esz;
        dtype.to_f32(&rest[..whole], &mut cur.vals);
        cur.tail.extend_from_slice(&rest[whole..]);
        if let (true, Role::Piece { out, .. }) = (cur.keep_reference, cur.role) {
            // the first embedder copy: its values, for the later copies to be compared with
            let new = &cur.vals[cur.referenced..];
            self.outputs[out].reference.get_or_insert_with(Vec::new).extend_from_slice(new);
            let n = new.len() * 4;
            self.account(n, true);
        }
        let r = self.take_values(&mut cur, false);
        cur.referenced = cur.vals.len();
        self.current = Some(cur);
        r
    }

    /// Encode or compare the values converted so far (`end`: the source is complete).
    fn take_values(&mut self, cur: &mut Current, end: bool) -> Result<()> {
        let src_name = self.sources[self.next_src].name.clone();
        match (&mut cur.sink, cur.role) {
            (Sink::Stream | Sink::Buffer(_), Role::Piece { out, .. }) => {
                let ty = self.outputs[out].ty;
                let bs = ty.block_size();
                let k = cur.vals.len() / bs * bs;
                if end && k != cur.vals.len() {
                    return Err(src_err(format!("'{src_name}' does not end on a whole {ty} block")));
                }
                if k == 0 {
                    return Ok(());
                }
                let enc = gguf::encode(&cur.vals[..k], ty)?;
                cur.vals.drain(..k);
                if let Sink::Buffer(b) = &mut cur.sink {
                    b.extend_from_slice(&enc);
                    self.account(enc.len(), true);
                } else {
                    self.emit(&enc);
                }
            }
            (Sink::Compare { seen }, Role::Copy { out }) => {
                let reference = self.outputs[out].reference.as_deref().unwrap_or(&[]);
                if reference.get(*seen..*seen + cur.vals.len()) != Some(cur.vals.as_slice()) {
                    return Err(Error::arch(format!(
                        "diffusers DiT: {src_name} differs from the first copy; a converted DiT shares one embedder (this checkpoint is not one)"
                    )));
                }
                *seen += cur.vals.len();
                cur.vals.clear();
            }
            (Sink::PosCompare { seen }, Role::PosCheck) => {
                let table = self.pos_table.as_deref().unwrap_or(&[]);
                let want = table.get(*seen..*seen + cur.vals.len()).unwrap_or(&[]);
                if want.len() != cur.vals.len() || want.iter().zip(&cur.vals).any(|(a, b)| (a - b).abs() > 1e-4) {
                    return Err(Error::arch("diffusers DiT: pos_embed.pos_embed is not the sin-cos table of sample_size / patch_size"));
                }
                *seen += cur.vals.len();
                cur.vals.clear();
            }
            _ => return Err(src_err("internal: a sink that does not fit its role")),
        }
        Ok(())
    }

    fn end_source(&mut self) -> Result<()> {
        let mut cur = self.current.take().expect("started");
        if !cur.tail.is_empty() {
            return Err(src_err("internal: a source ended inside an element"));
        }
        self.take_values(&mut cur, true)?;
        match (cur.sink, cur.role) {
            (Sink::Stream, Role::Piece { out, piece }) => {
                let n = self.outputs[out].pieces.len();
                self.emit_buffers(out, piece + 1..n)?;
                self.emit_end(out)?;
            }
            (Sink::Buffer(b), Role::Piece { out, piece }) => {
                self.outputs[out].buffers[piece] = Some(b);
            }
            (Sink::Compare { seen }, Role::Copy { out }) => {
                let o = &mut self.outputs[out];
                if seen != o.reference.as_ref().map_or(0, Vec::len) {
                    return Err(src_err(format!("internal: a copy of '{}' was compared in part", o.name)));
                }
                o.copies_left -= 1;
                if o.copies_left == 0 {
                    let n = o.reference.take().map_or(0, |r| r.len() * 4);
                    self.account(n, false);
                }
            }
            (Sink::PosCompare { .. }, Role::PosCheck) => {
                let n = self.pos_table.take().map_or(0, |t| t.len() * 4);
                self.account(n, false);
            }
            _ => return Err(src_err("internal: a sink that does not fit its role")),
        }
        self.next_src += 1;
        self.flush_computed()
    }
}

// ---------------------------------------------------------------------------------------------
// The stream
// ---------------------------------------------------------------------------------------------

/// What a finished conversion proved.
#[derive(Clone, Debug)]
pub struct ConvertSummary {
    /// The emitted pack's header and architecture.
    pub header: GgufHeader,
    pub cfg: Config,
    pub layout: SourceLayout,
    /// Bytes of the source, and its sha256 (lower-case hex).
    pub source_bytes: u64,
    pub source_sha256: String,
    /// Bytes of the pack emitted.
    pub pack_bytes: u64,
    /// Most bytes held at once for partners (see the module docs).
    pub peak_buffered: usize,
}

/// A conversion in progress. See the module docs.
pub struct ConvertStream {
    quant: TensorType,
    name: String,
    config: Option<SourceConfig>,
    expected_size: Option<u64>,
    expected_sha256: Option<String>,
    hasher: Sha256,
    received: u64,
    /// The file's first bytes, until the header is parsed.
    prefix: Vec<u8>,
    plan: Option<Plan>,
    failed: Option<String>,
    /// Pack bytes handed out so far.
    emitted: u64,
    /// The peak of a finished plan (kept past `finish`).
    peak_buffered: usize,
}

impl ConvertStream {
    /// `source_config_json`: diffusers' `config.json` of the transformer (needed for diffusers'
    /// layout; for official names it may give the head count). `expected_sha256` is hex, either
    /// case. The pack's `general.name` is "model" unless [`Self::with_name`] says otherwise.
    pub fn new(source_config_json: Option<&str>, quant: TensorType, expected_size: Option<u64>, expected_sha256: Option<&str>) -> Result<ConvertStream> {
        let config = source_config_json.map(parse_source_config).transpose()?;
        let sha = expected_sha256.map(normalize_sha256).transpose()?;
        Ok(ConvertStream {
            quant,
            name: "model".into(),
            config,
            expected_size,
            expected_sha256: sha,
            hasher: Sha256::new(),
            received: 0,
            prefix: Vec::new(),
            plan: None,
            failed: None,
            emitted: 0,
            peak_buffered: 0,
        })
    }

    /// The pack's `general.name`.
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Source bytes pushed so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Pack bytes emitted so far.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// The pack's total size, once the source header is parsed.
    pub fn pack_size(&self) -> Option<u64> {
        self.plan.as_ref().map(|p| p.pack_bytes)
    }

    /// The source's total size, once its header is parsed.
    pub fn source_size(&self) -> Option<u64> {
        self.plan.as_ref().map(|p| p.data_start + p.data_len)
    }

    /// The architecture, once the source header is parsed.
    pub fn cfg(&self) -> Option<&Config> {
        self.plan.as_ref().map(|p| &p.cfg)
    }

    /// Bytes held for partners now, and at most so far.
    pub fn buffered(&self) -> usize {
        self.plan.as_ref().map_or(0, |p| p.buffered)
    }
    pub fn peak_buffered(&self) -> usize {
        self.plan.as_ref().map_or(self.peak_buffered, |p| p.peak_buffered)
    }

    /// Feed the next source bytes; returns the pack bytes ready (possibly none), in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>> {
        if let Some(e) = &self.failed {
            return Err(src_err(format!("the conversion already failed: {e}")));
        }
        let r = self.push_inner(chunk);
        let out = self.plan.as_mut().map(|p| std::mem::take(&mut p.out)).unwrap_or_default();
        match r {
            Ok(()) => {
                self.emitted += out.len() as u64;
                Ok(out)
            }
            Err(e) => {
                self.failed = Some(e.to_string());
                self.plan = None;
                Err(e)
            }
        }
    }

    fn push_inner(&mut self, chunk: &[u8]) -> Result<()> {
        let start = self.received;
        let end = start + chunk.len() as u64;
        if let Some(size) = self.expected_size {
            if end > size {
                return Err(src_err(format!("more data than the announced {size} bytes")));
            }
        }
        if let Some(p) = &self.plan {
            let total = p.data_start + p.data_len;
            if end > total {
                return Err(src_err(format!("more data than the {total} bytes its header describes")));
            }
        }
        self.hasher.update(chunk);
        self.received = end;
        if let Some(p) = &mut self.plan {
            return p.consume(chunk);
        }
        self.prefix.extend_from_slice(chunk);
        if self.prefix.len() < 8 {
            return Ok(());
        }
        let n = u64::from_le_bytes(self.prefix[..8].try_into().expect("8 bytes"));
        if !(2..=MAX_SOURCE_HEADER).contains(&n) {
            return Err(src_err(format!("the header length {n} is absurd (not a safetensors file?)")));
        }
        if let Some(size) = self.expected_size {
            if 8 + n > size {
                return Err(src_err(format!("the header length {n} runs past the announced {size} bytes")));
            }
        }
        if self.prefix.len() > 8 && self.prefix[8] != b'{' {
            return Err(src_err("the header does not start with '{' (not a safetensors file?)"));
        }
        let data_start = 8 + n;
        if (self.prefix.len() as u64) < data_start {
            return Ok(());
        }
        let (sources, data_len) = parse_source_header(&self.prefix[8..data_start as usize])?;
        let total = data_start.checked_add(data_len).ok_or_else(|| src_err("offsets overflow"))?;
        if let Some(size) = self.expected_size {
            if total != size {
                return Err(src_err(format!("its header describes {total} bytes, the announced size is {size}")));
            }
        }
        if self.received > total {
            return Err(src_err(format!("more data than the {total} bytes its header describes")));
        }
        let (mut plan, header_bytes) = Plan::build(sources, data_start, data_len, self.config.as_ref(), self.quant, &self.name)?;
        let prefix = std::mem::take(&mut self.prefix);
        // The header, then the computed tensors (the position table) right away, then what
        // came with the header's bytes.
        plan.out.extend_from_slice(&header_bytes);
        if let Some(table) = &plan.pos_table {
            plan.account(table.len() * 4, true);
        }
        let r = plan.consume(&prefix[data_start as usize..]);
        self.plan = Some(plan);
        r
    }

    /// Check that the whole source arrived with the announced size and sha256.
    pub fn finish(mut self) -> Result<ConvertSummary> {
        if let Some(e) = &self.failed {
            return Err(src_err(format!("the conversion failed: {e}")));
        }
        if let Some(p) = &mut self.plan {
            // (a trailing zero-length tensor would complete without bytes)
            p.consume(&[])?;
            if !p.out.is_empty() {
                return Err(src_err("internal: pack bytes left at the end"));
            }
        }
        let Some(plan) = self.plan.take() else {
            return Err(src_err(format!("the file ({} bytes) ends inside its header: truncated?", self.received)));
        };
        let total = plan.data_start + plan.data_len;
        if let Some(size) = self.expected_size {
            if self.received != size {
                return Err(src_err(format!("got {} of the announced {size} bytes: truncated", self.received)));
            }
        }
        if self.received != total || plan.next_out != plan.outputs.len() {
            let at = plan.sources.get(plan.next_src).map_or(String::new(), |s| format!(" inside tensor '{}'", s.name));
            return Err(src_err(format!("the file ends after {} of {total} bytes{at}: truncated?", self.received)));
        }
        let sha256: String = self.hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if let Some(want) = &self.expected_sha256 {
            if *want != sha256 {
                return Err(src_err(format!("sha256 mismatch: expected {want}, the download is {sha256} (corrupt, or a different file)")));
            }
        }
        if self.emitted != plan.pack_bytes {
            return Err(src_err(format!("internal: {} pack bytes emitted of {}", self.emitted, plan.pack_bytes)));
        }
        Ok(ConvertSummary {
            header: plan.header,
            cfg: plan.cfg,
            layout: plan.layout,
            source_bytes: self.received,
            source_sha256: sha256,
            pack_bytes: self.emitted,
            peak_buffered: plan.peak_buffered,
        })
    }
}
