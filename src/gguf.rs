//! GGUF v3 packs: a strict reader and a writer for `F32`, `F16`, `Q8_0` and `Q4_0` tensors.
//!
//! (Over 700 lines on purpose: the format's reader, writer, quantizers and their validation are
//! one specification, read together; half of the file is its unit tests.)
//!
//! # File layout (little endian throughout)
//!
//! ```text
//! magic          "GGUF"
//! version        u32, must be 3
//! tensor_count   u64
//! kv_count       u64
//! kv_count x     key: string, value_type: u32, value
//! tensor_count x name: string, n_dims: u32, dims: n_dims x u64 (ggml order), ggml_type: u32,
//!                offset: u64 (relative to the data section, a multiple of the alignment)
//! padding        zeros up to the next multiple of the alignment
//! data section   tensor bytes, tensor i at data_offset + offset_i
//! ```
//!
//! A string is a u64 byte length followed by that many UTF-8 bytes (no terminator). An array
//! value is a u32 element type, a u64 element count and the elements (arrays may nest). Value
//! type ids follow the GGUF spec: `UINT8`=0, `INT8`=1, `UINT16`=2, `INT16`=3, `UINT32`=4,
//! `INT32`=5, `FLOAT32`=6, `BOOL`=7, `STRING`=8, `ARRAY`=9, `UINT64`=10, `INT64`=11, `FLOAT64`=12.
//!
//! # Conventions
//!
//! - **Shapes are stored reversed.** ggml lists dimensions innermost first (`ne[0]` is the
//!   contiguous one); this module exposes PyTorch order (outermost first) and reverses on read
//!   and on write. A Linear weight of shape `(out, in)` is stored with dims `[in, out]`.
//! - **Alignment.** The data section starts at the end of the header rounded up to the alignment,
//!   and every tensor offset is a multiple of it. It is `general.alignment` (a U32 power of two)
//!   when present, 32 otherwise. The writer always aligns to 32 and records `general.alignment`.
//! - **Quantized types.** `Q8_0` and `Q4_0` store blocks of 32 consecutive elements of the
//!   row-major (PyTorch order) flattened tensor; for an `(out, in)` weight with `in % 32 == 0`
//!   that means blocks along rows, as in ggml. The block math is ggml's reference code, and
//!   [`encode`] agrees byte for byte with candle's `QTensor::quantize`.
//!
//! # Strictness
//!
//! The reader never panics and never allocates from an unchecked count: every length or count
//! is checked against the bytes actually available (and against [`MAX_HEADER_BYTES`]) before
//! anything is allocated, and all offset/size arithmetic is checked. Malformed files give
//! [`Error::Gguf`]; tensor types other than the four above give [`Error::UnsupportedType`].
//! [`GgufHeader::parse_prefix`] parses only the header, so a streaming loader can fetch more
//! bytes and retry; [`Gguf::parse`] parses a whole file and validates every tensor's range.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::io::Write;

use half::f16;

use crate::error::{Error, Result};

/// The four magic bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The only GGUF version this module reads and writes.
pub const GGUF_VERSION: u32 = 3;
/// The alignment used when `general.alignment` is absent, and always used by [`write()`].
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Metadata key holding the alignment (a U32 power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Tensors have 1 to this many dimensions (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Arrays may nest this many levels deep (an array of arrays is 2 levels).
pub const MAX_ARRAY_DEPTH: usize = 4;
/// A header whose declared counts and lengths would need more bytes than this is rejected as
/// corrupt instead of being waited for.
pub const MAX_HEADER_BYTES: u64 = 1 << 30;

/// Smallest encoded size of a tensor info: name length, n_dims, one dim, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;
/// Smallest encoded size of a metadata entry: key length, value type, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;

// ---------------------------------------------------------------------------------------------
// Tensor types
// ---------------------------------------------------------------------------------------------

/// A tensor element type this crate reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorType {
    F32,
    F16,
    Q8_0,
    Q4_0,
}

impl TensorType {
    /// Every supported type, in the order used in messages.
    pub const ALL: [TensorType; 4] = [
        TensorType::F32,
        TensorType::F16,
        TensorType::Q8_0,
        TensorType::Q4_0,
    ];

    /// The ggml type id stored in the file.
    pub fn ggml_id(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Q4_0 => 2,
            TensorType::Q8_0 => 8,
        }
    }

    /// The type with ggml id `id`; [`Error::UnsupportedType`] naming the type, the tensor and
    /// the supported types otherwise.
    pub fn from_ggml_id(id: u32, tensor_name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.ggml_id() == id)
            .ok_or_else(|| {
                Error::UnsupportedType(format!(
                    "{} in tensor '{tensor_name}' (supported: {})",
                    ggml_type_label(id),
                    Self::supported_list()
                ))
            })
    }

    /// The ggml name: `"F32"`, `"F16"`, `"Q8_0"` or `"Q4_0"`.
    pub fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "F32",
            TensorType::F16 => "F16",
            TensorType::Q8_0 => "Q8_0",
            TensorType::Q4_0 => "Q4_0",
        }
    }

    /// Elements per block: 1 for the float types, 32 for the quantized ones.
    pub fn block_size(self) -> usize {
        match self {
            TensorType::F32 | TensorType::F16 => 1,
            TensorType::Q8_0 | TensorType::Q4_0 => 32,
        }
    }

    /// Bytes per block: 4, 2, 34 (f16 scale + 32 x i8) and 18 (f16 scale + 16 bytes of nibbles).
    pub fn block_bytes(self) -> usize {
        match self {
            TensorType::F32 => 4,
            TensorType::F16 => 2,
            TensorType::Q8_0 => 34,
            TensorType::Q4_0 => 18,
        }
    }

    /// Bytes taken by `elems` elements; an error unless `elems` is a multiple of the block size.
    pub fn bytes_for(self, elems: usize) -> Result<usize> {
        self.try_bytes_for(elems).map_err(Error::arg)
    }

    /// Parses `"f32"`, `"f16"`, `"q8_0"` or `"q4_0"` (case-insensitive).
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::UnsupportedType(format!(
                    "'{s}' (supported: {})",
                    Self::ALL.map(|t| t.name().to_ascii_lowercase()).join(", ")
                ))
            })
    }

    fn supported_list() -> String {
        Self::ALL.map(TensorType::name).join(", ")
    }

    /// [`Self::bytes_for`] with a plain message, for callers that add their own context.
    fn try_bytes_for(self, elems: usize) -> std::result::Result<usize, String> {
        let block = self.block_size();
        if !elems.is_multiple_of(block) {
            return Err(format!(
                "{self} stores blocks of {block} elements, and {elems} is not a multiple of {block}"
            ));
        }
        (elems / block)
            .checked_mul(self.block_bytes())
            .ok_or_else(|| format!("{elems} {self} elements take more bytes than fit in memory"))
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for TensorType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// "Q4_1 (ggml type 3)" for a known ggml type id, "99 (not a known ggml type)" otherwise.
fn ggml_type_label(id: u32) -> String {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    match NAMES.get(id as usize) {
        Some(name) => format!("{name} (ggml type {id})"),
        None => format!("{id} (not a known ggml type)"),
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata values
// ---------------------------------------------------------------------------------------------

/// A metadata value. The variants are listed in GGUF value-type-id order (0..=12).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// All elements have the same variant (GGUF arrays have one element type); nested arrays
    /// may differ in their own element types.
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// The GGUF value type id (0..=12).
    pub fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::String(_) => 8,
            MetaValue::Array(_) => 9,
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        }
    }

    /// The variant's name, for messages: `"U32"`, `"String"`, ...
    pub fn type_name(&self) -> &'static str {
        value_type_name(self.type_id())
    }

    /// Any integer that is non-negative, as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any number (floats, and integers converted to the nearest f64).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            MetaValue::U64(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(v) => Some(v),
            _ => None,
        }
    }
}

fn value_type_name(id: u32) -> &'static str {
    const NAMES: [&str; 13] = [
        "U8", "I8", "U16", "I16", "U32", "I32", "F32", "Bool", "String", "Array", "U64", "I64",
        "F64",
    ];
    NAMES.get(id as usize).copied().unwrap_or("unknown")
}

/// The fewest bytes a value of GGUF type `id` can take, or `None` for an unknown type.
fn min_value_bytes(id: u32) -> Option<u64> {
    match id {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        8 | 10..=12 => Some(8),
        9 => Some(4 + 8),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------------------------

/// One tensor's entry in the header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// PyTorch order, outermost first, e.g. `(out, in)` for a Linear weight.
    pub shape: Vec<usize>,
    pub ty: TensorType,
    /// Relative to the start of the data section.
    pub offset: u64,
    /// Bytes of data, as implied by `shape` and `ty`.
    pub nbytes: usize,
}

impl TensorInfo {
    /// Number of elements (the product of the shape; `None` on overflow).
    pub fn elem_count(&self) -> Option<usize> {
        elem_count(&self.shape)
    }
}

/// A parsed GGUF header.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufHeader {
    pub version: u32,
    /// In file order; keys are unique.
    pub metadata: Vec<(String, MetaValue)>,
    /// In file order; names are unique.
    pub tensors: Vec<TensorInfo>,
    pub alignment: usize,
    /// Absolute file offset of the data section.
    pub data_offset: usize,
}

/// Something naming a tensor of a header: its name (`&str`, `String`) or its [`TensorInfo`].
pub trait TensorRef {
    /// The info this refers to: looked up by name, or `self` for a [`TensorInfo`].
    fn resolve<'h>(&'h self, header: &'h GgufHeader) -> Result<&'h TensorInfo>;
}

impl TensorRef for TensorInfo {
    fn resolve<'h>(&'h self, _: &'h GgufHeader) -> Result<&'h TensorInfo> {
        Ok(self)
    }
}

impl TensorRef for str {
    fn resolve<'h>(&'h self, header: &'h GgufHeader) -> Result<&'h TensorInfo> {
        header
            .tensor(self)
            .ok_or_else(|| Error::gguf(format!("the pack has no tensor named '{self}'")))
    }
}

impl TensorRef for String {
    fn resolve<'h>(&'h self, header: &'h GgufHeader) -> Result<&'h TensorInfo> {
        self.as_str().resolve(header)
    }
}

impl GgufHeader {
    /// Parses the header from the first bytes of a file (the prefix may be the whole file).
    ///
    /// Returns `Ok(None)` when `prefix` is too short to hold the whole header yet, so a streaming
    /// loader can fetch more and retry; a prefix that is already clearly invalid (bad magic,
    /// wrong version, absurd counts, an unsupported tensor type, ...) is an error right away.
    /// Tensor ranges are not checked here: see [`Self::validate_len`].
    pub fn parse_prefix(prefix: &[u8]) -> Result<Option<GgufHeader>> {
        match parse_header(prefix) {
            Ok(header) => Ok(Some(header)),
            Err(Stop::Incomplete) => Ok(None),
            Err(Stop::Invalid(e)) => Err(e),
        }
    }

    /// Checks the header against a file of `file_len` bytes: alignment, unique names, shapes
    /// (1 to 4 non-zero dims, no overflow, whole blocks), `nbytes` consistent with shape and
    /// type, every offset aligned, every tensor inside the file, and no two tensors overlapping.
    pub fn validate_len(&self, file_len: u64) -> Result<()> {
        let align = self.alignment;
        if !align.is_power_of_two() {
            return Err(Error::gguf(format!(
                "alignment {align} is not a power of two"
            )));
        }
        if !self.data_offset.is_multiple_of(align) {
            return Err(Error::gguf(format!(
                "data section offset {} is not a multiple of the alignment {align}",
                self.data_offset
            )));
        }
        let mut names = HashSet::with_capacity(self.tensors.len());
        let mut ranges = Vec::with_capacity(self.tensors.len());
        for info in &self.tensors {
            if !names.insert(info.name.as_str()) {
                return Err(Error::gguf(format!(
                    "tensor name '{}' appears more than once",
                    info.name
                )));
            }
            let expected = tensor_nbytes(&info.name, &info.shape, info.ty).map_err(Error::Gguf)?;
            if info.nbytes != expected {
                return Err(Error::gguf(format!(
                    "tensor '{}' claims {} bytes, but shape {:?} in {} takes {expected}",
                    info.name, info.nbytes, info.shape, info.ty
                )));
            }
            if !info.offset.is_multiple_of(align as u64) {
                return Err(Error::gguf(format!(
                    "tensor '{}' offset {} (relative to the data section) is not a multiple of the alignment {align}",
                    info.name, info.offset
                )));
            }
            let (start, end) = self.data_range(info)?;
            if end > file_len {
                return Err(past_end(info, start, end, file_len));
            }
            ranges.push((start, end, info.name.as_str()));
        }
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            let ((s0, e0, n0), (s1, e1, n1)) = (pair[0], pair[1]);
            if s1 < e0 {
                return Err(Error::gguf(format!(
                    "tensors '{n0}' [{s0}..{e0}) and '{n1}' [{s1}..{e1}) overlap"
                )));
            }
        }
        Ok(())
    }

    /// The value of metadata key `key`.
    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of a tensor (given by name or info) in `file`, the whole file this header was
    /// parsed from; bounds-checked.
    pub fn tensor_bytes<'a, T: TensorRef + ?Sized>(
        &self,
        file: &'a [u8],
        tensor: &T,
    ) -> Result<&'a [u8]> {
        let info = tensor.resolve(self)?;
        let (start, end) = self.data_range(info)?;
        let range = usize::try_from(start).ok().zip(usize::try_from(end).ok());
        range
            .and_then(|(s, e)| file.get(s..e))
            .ok_or_else(|| past_end(info, start, end, file.len() as u64))
    }

    /// The absolute byte range `[start, end)` of a tensor's data, with overflow checked.
    fn data_range(&self, info: &TensorInfo) -> Result<(u64, u64)> {
        let start = (self.data_offset as u64).checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(info.nbytes as u64));
        match (start, end) {
            (Some(start), Some(end)) => Ok((start, end)),
            _ => Err(Error::gguf(format!(
                "tensor '{}': data offset {} + {} + {} bytes overflows",
                info.name, self.data_offset, info.offset, info.nbytes
            ))),
        }
    }
}

fn past_end(info: &TensorInfo, start: u64, end: u64, file_len: u64) -> Error {
    Error::gguf(format!(
        "tensor '{}' data [{start}..{end}) extends past the end of the file ({file_len} bytes): truncated?",
        info.name
    ))
}

fn elem_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Checks a tensor's shape for type `ty` and returns its size in bytes.
fn tensor_nbytes(
    name: &str,
    shape: &[usize],
    ty: TensorType,
) -> std::result::Result<usize, String> {
    if shape.is_empty() || shape.len() > MAX_DIMS {
        return Err(format!(
            "tensor '{name}' has {} dimensions (expected 1 to {MAX_DIMS})",
            shape.len()
        ));
    }
    if shape.contains(&0) {
        return Err(format!(
            "tensor '{name}' has a zero dimension in shape {shape:?}"
        ));
    }
    let elems = elem_count(shape).ok_or_else(|| {
        format!("tensor '{name}': the element count of shape {shape:?} overflows")
    })?;
    ty.try_bytes_for(elems)
        .map_err(|e| format!("tensor '{name}' with shape {shape:?}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Why parsing stopped: the bytes ran out (more may come), or the file is invalid.
enum Stop {
    Incomplete,
    Invalid(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Invalid(e)
    }
}

type Parse<T> = std::result::Result<T, Stop>;

fn invalid<T>(msg: impl Into<String>) -> Parse<T> {
    Err(Stop::Invalid(Error::gguf(msg)))
}

/// A little-endian cursor over the available bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Parse<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(Stop::Incomplete)?;
        let bytes = self.buf.get(self.pos..end).ok_or(Stop::Incomplete)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Parse<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Parse<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Parse<u16> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Parse<u32> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Parse<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// How many items of `min_bytes` each the remaining bytes could hold.
    fn room_for(&self, min_bytes: u64) -> usize {
        let remaining = self.buf.len().saturating_sub(self.pos);
        (remaining as u64 / min_bytes) as usize
    }

    /// Checks that `count` items of at least `min_bytes` each can follow: invalid when that
    /// would pass [`MAX_HEADER_BYTES`], incomplete when the available bytes cannot hold them.
    fn reserve(&self, count: u64, min_bytes: u64, what: impl FnOnce() -> String) -> Parse<usize> {
        let end = count
            .checked_mul(min_bytes)
            .and_then(|n| n.checked_add(self.pos as u64));
        match end {
            Some(end) if end <= MAX_HEADER_BYTES => {
                if end > self.buf.len() as u64 {
                    return Err(Stop::Incomplete);
                }
                // end fits in the buffer, so count fits in usize.
                usize::try_from(count).map_err(|_| Stop::Incomplete)
            }
            _ => invalid(format!(
                "{} is {count}, which is absurd: the header would exceed {} MiB (corrupt file?)",
                what(),
                MAX_HEADER_BYTES >> 20
            )),
        }
    }

    fn string(&mut self, what: impl Fn() -> String) -> Parse<String> {
        let len = self.u64()?;
        let len = self.reserve(len, 1, || format!("length of {}", what()))?;
        let bytes = self.take(len)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => invalid(format!("{} is not valid UTF-8 ({e})", what())),
        }
    }

    /// A metadata value of GGUF type `ty`; `depth` is the number of enclosing arrays.
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Parse<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.u8()?),
            1 => MetaValue::I8(i8::from_le_bytes(self.array()?)),
            2 => MetaValue::U16(self.u16()?),
            3 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.u8()? {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => {
                    return invalid(format!(
                        "metadata '{key}': bool byte {b} is neither 0 nor 1"
                    ))
                }
            },
            8 => MetaValue::String(self.string(|| format!("string value of metadata '{key}'"))?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return invalid(format!(
                        "metadata '{key}': arrays nested more than {MAX_ARRAY_DEPTH} levels deep"
                    ));
                }
                let elem_ty = self.u32()?;
                let Some(min_bytes) = min_value_bytes(elem_ty) else {
                    return invalid(format!(
                        "metadata '{key}': unknown array element type {elem_ty}"
                    ));
                };
                let count = self.u64()?;
                let count = self.reserve(count, min_bytes, || {
                    format!("element count of array '{key}'")
                })?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            _ => return invalid(format!("metadata '{key}': unknown value type {ty}")),
        })
    }
}

fn parse_header(buf: &[u8]) -> Parse<GgufHeader> {
    let seen = &buf[..buf.len().min(GGUF_MAGIC.len())];
    if seen != &GGUF_MAGIC[..seen.len()] {
        return invalid(format!(
            "bad magic \"{}\": expected \"GGUF\" (not a GGUF file)",
            seen.escape_ascii()
        ));
    }
    let mut r = Reader { buf, pos: 0 };
    r.take(GGUF_MAGIC.len())?;

    let version = r.u32()?;
    if version != GGUF_VERSION {
        return invalid(if version.swap_bytes() == GGUF_VERSION {
            format!("version field reads {version}: this is a big-endian GGUF file, which is not supported")
        } else if version < GGUF_VERSION {
            format!("GGUF version {version} is not supported: only version 3 is (re-export the file with a current GGUF writer)")
        } else {
            format!("GGUF version {version} is not supported: only version 3 is")
        });
    }

    let tensor_count = r.u64()?;
    let kv_count = r.u64()?;
    // Both lists must fit, at their smallest, in a header of at most MAX_HEADER_BYTES.
    let min_bytes = kv_count
        .checked_mul(MIN_KV_BYTES)
        .zip(tensor_count.checked_mul(MIN_TENSOR_INFO_BYTES))
        .and_then(|(kvs, tensors)| kvs.checked_add(tensors)?.checked_add(r.pos as u64));
    if min_bytes.is_none_or(|n| n > MAX_HEADER_BYTES) {
        return invalid(format!(
            "absurd counts: {tensor_count} tensors and {kv_count} metadata entries would need a header over {} MiB (corrupt file?)",
            MAX_HEADER_BYTES >> 20
        ));
    }
    // Both counts now fit in usize; capacities are also bounded by the bytes at hand.
    let (tensor_count, kv_count) = (tensor_count as usize, kv_count as usize);

    let mut metadata: Vec<(String, MetaValue)> =
        Vec::with_capacity(kv_count.min(r.room_for(MIN_KV_BYTES)));
    let mut keys = HashSet::with_capacity(metadata.capacity());
    for i in 0..kv_count {
        let key = r.string(|| format!("metadata key #{i}"))?;
        let ty = r.u32()?;
        let value = r.value(ty, &key, 0)?;
        if !keys.insert(key.clone()) {
            return invalid(format!("duplicate metadata key '{key}'"));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some((_, MetaValue::U32(a))) if a.is_power_of_two() => *a as usize,
        Some((_, MetaValue::U32(a))) => {
            return invalid(format!(
                "metadata '{ALIGNMENT_KEY}' is {a}, not a power of two"
            ));
        }
        Some((_, v)) => {
            return invalid(format!(
                "metadata '{ALIGNMENT_KEY}' must be a U32, found {}",
                v.type_name()
            ));
        }
    };

    let mut tensors: Vec<TensorInfo> =
        Vec::with_capacity(tensor_count.min(r.room_for(MIN_TENSOR_INFO_BYTES)));
    let mut names = HashSet::with_capacity(tensors.capacity());
    for i in 0..tensor_count {
        let name = r.string(|| format!("name of tensor #{i}"))?;
        let n_dims = r.u32()?;
        if !(1..=MAX_DIMS as u32).contains(&n_dims) {
            return invalid(format!(
                "tensor '{name}' has {n_dims} dimensions (expected 1 to {MAX_DIMS})"
            ));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let dim = r.u64()?;
            let Ok(dim) = usize::try_from(dim) else {
                return invalid(format!(
                    "tensor '{name}': dimension {dim} does not fit in memory"
                ));
            };
            shape.push(dim);
        }
        shape.reverse(); // ggml order (innermost first) -> PyTorch order
        let ty = TensorType::from_ggml_id(r.u32()?, &name)?;
        let offset = r.u64()?;
        let nbytes = tensor_nbytes(&name, &shape, ty).map_err(|e| Stop::Invalid(Error::Gguf(e)))?;
        if !names.insert(name.clone()) {
            return invalid(format!("tensor name '{name}' appears more than once"));
        }
        tensors.push(TensorInfo {
            name,
            shape,
            ty,
            offset,
            nbytes,
        });
    }

    let Some(data_offset) = r.pos.checked_next_multiple_of(alignment) else {
        return invalid(format!(
            "data section offset overflows (alignment {alignment})"
        ));
    };
    Ok(GgufHeader {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

// ---------------------------------------------------------------------------------------------
// Whole-file view
// ---------------------------------------------------------------------------------------------

/// A whole GGUF file in memory: the header, parsed and validated against the file length.
#[derive(Clone)]
pub struct Gguf<'a> {
    pub header: GgufHeader,
    pub bytes: &'a [u8],
}

impl fmt::Debug for Gguf<'_> {
    /// The header, and the file's length rather than its bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gguf")
            .field("header", &self.header)
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .finish()
    }
}

impl<'a> Gguf<'a> {
    /// Parses the header and checks every tensor against the file ([`GgufHeader::validate_len`]).
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let header = GgufHeader::parse_prefix(bytes)?.ok_or_else(|| {
            Error::gguf(format!(
                "the file ({} bytes) ends inside the header: truncated?",
                bytes.len()
            ))
        })?;
        header.validate_len(bytes.len() as u64)?;
        Ok(Gguf { header, bytes })
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensor(name)
    }

    /// The raw bytes of a tensor of this file. Every tensor of `self.header` is in range (checked
    /// by [`Gguf::parse`]); an info from elsewhere that does not fit gives an empty slice.
    pub fn tensor_data(&self, info: &TensorInfo) -> &'a [u8] {
        self.header
            .tensor_bytes(self.bytes, info)
            .unwrap_or_default()
    }

    /// A tensor's values as f32, row-major in PyTorch order.
    pub fn dequantize_f32(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        let bytes = self.header.tensor_bytes(self.bytes, info)?;
        let elems = info.elem_count().ok_or_else(|| {
            Error::gguf(format!(
                "tensor '{}': the element count of shape {:?} overflows",
                info.name, info.shape
            ))
        })?;
        decode(bytes, info.ty, elems)
    }
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// A tensor to write: its name, PyTorch-order shape, type and data already encoded in `ty`.
#[derive(Clone, Debug)]
pub struct TensorToWrite<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub ty: TensorType,
    pub data: Cow<'a, [u8]>,
}

const WRITER: &str = "<gguf writer>";

fn writer_error(msg: impl fmt::Display) -> Error {
    Error::arg(format!("GGUF writer: {msg}"))
}

/// Writes a GGUF v3 file: the metadata in order (plus `general.alignment` = U32 32 when absent),
/// the tensor infos in order, zero padding to 32 bytes, then each tensor's data at the next
/// multiple of 32. No padding follows the last tensor. Everything is checked before the first
/// byte is written; invalid input is [`Error::InvalidArgument`], a failed write [`Error::Io`].
pub fn write<W: Write>(
    w: &mut W,
    metadata: &[(String, MetaValue)],
    tensors: &[TensorToWrite],
) -> Result<()> {
    let (header, offsets) = encode_header(metadata, tensors)?;
    let io = |e| Error::io(WRITER, e);
    w.write_all(&header).map_err(io)?;
    let mut pos = 0u64; // relative to the data section
    for (t, &offset) in tensors.iter().zip(&offsets) {
        let pad = (offset - pos) as usize; // < DEFAULT_ALIGNMENT
        w.write_all(&[0u8; DEFAULT_ALIGNMENT][..pad]).map_err(io)?;
        w.write_all(&t.data).map_err(io)?;
        pos = offset + t.data.len() as u64;
    }
    w.flush().map_err(io)
}

/// [`write()`] into a new buffer.
pub fn write_to_vec(
    metadata: &[(String, MetaValue)],
    tensors: &[TensorToWrite],
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write(&mut out, metadata, tensors)?;
    Ok(out)
}

/// The header bytes (padded to the alignment) and each tensor's data offset.
fn encode_header(
    metadata: &[(String, MetaValue)],
    tensors: &[TensorToWrite],
) -> Result<(Vec<u8>, Vec<u64>)> {
    encode_header_entries(
        metadata,
        tensors.iter().map(|t| (t.name, t.shape, t.ty, Some(t.data.len()))),
    )
}

/// A tensor of a header written before its data: name, PyTorch-order shape and type.
#[derive(Clone, Copy, Debug)]
pub struct TensorEntry<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub ty: TensorType,
}

/// The header [`write()`] would write for `tensors` (padded to the alignment), and each
/// tensor's data offset, without their data: for a writer that streams the data after it, each
/// tensor at its offset (zero padding between), in this order. Checked as [`write()`] checks.
pub fn header_bytes(
    metadata: &[(String, MetaValue)],
    tensors: &[TensorEntry],
) -> Result<(Vec<u8>, Vec<u64>)> {
    encode_header_entries(metadata, tensors.iter().map(|t| (t.name, t.shape, t.ty, None)))
}

/// (name, shape, type, data length when the data is given) of every tensor -> header bytes and
/// data offsets.
fn encode_header_entries<'a>(
    metadata: &[(String, MetaValue)],
    tensors: impl ExactSizeIterator<Item = (&'a str, &'a [usize], TensorType, Option<usize>)>,
) -> Result<(Vec<u8>, Vec<u64>)> {
    let mut keys = HashSet::with_capacity(metadata.len());
    for (key, value) in metadata {
        if !keys.insert(key.as_str()) {
            return Err(writer_error(format_args!("duplicate metadata key '{key}'")));
        }
        if key == ALIGNMENT_KEY && *value != MetaValue::U32(DEFAULT_ALIGNMENT as u32) {
            return Err(writer_error(format_args!(
                "metadata '{ALIGNMENT_KEY}' must be U32({DEFAULT_ALIGNMENT}) (the writer aligns to {DEFAULT_ALIGNMENT} bytes), got {value:?}"
            )));
        }
    }
    let add_alignment = !keys.contains(ALIGNMENT_KEY);

    let mut buf = Vec::new();
    buf.extend_from_slice(&GGUF_MAGIC);
    put_u32(&mut buf, GGUF_VERSION);
    put_u64(&mut buf, tensors.len() as u64);
    put_u64(&mut buf, metadata.len() as u64 + u64::from(add_alignment));
    for (key, value) in metadata {
        put_str(&mut buf, key);
        put_u32(&mut buf, value.type_id());
        put_value(&mut buf, key, value, 0)?;
    }
    if add_alignment {
        put_str(&mut buf, ALIGNMENT_KEY);
        let alignment = MetaValue::U32(DEFAULT_ALIGNMENT as u32);
        put_u32(&mut buf, alignment.type_id());
        put_value(&mut buf, ALIGNMENT_KEY, &alignment, 0)?;
    }

    let mut names = HashSet::with_capacity(tensors.len());
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut next = 0u64;
    for (name, shape, ty, data_len) in tensors {
        if !names.insert(name) {
            return Err(writer_error(format_args!(
                "tensor name '{name}' appears more than once"
            )));
        }
        let nbytes = tensor_nbytes(name, shape, ty).map_err(writer_error)?;
        if let Some(len) = data_len.filter(|&len| len != nbytes) {
            return Err(writer_error(format_args!(
                "tensor '{name}' has {len} bytes of data, but shape {shape:?} in {ty} takes {nbytes}"
            )));
        }
        let offset = next.next_multiple_of(DEFAULT_ALIGNMENT as u64);
        next = offset + nbytes as u64;
        offsets.push(offset);

        put_str(&mut buf, name);
        put_u32(&mut buf, shape.len() as u32);
        for &dim in shape.iter().rev() {
            put_u64(&mut buf, dim as u64); // ggml order: innermost first
        }
        put_u32(&mut buf, ty.ggml_id());
        put_u64(&mut buf, offset);
    }
    buf.resize(buf.len().next_multiple_of(DEFAULT_ALIGNMENT), 0);
    Ok((buf, offsets))
}

fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_u64(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// A value's payload (without its type id); `depth` is the number of enclosing arrays.
fn put_value(buf: &mut Vec<u8>, key: &str, value: &MetaValue, depth: usize) -> Result<()> {
    match value {
        MetaValue::U8(v) => buf.push(*v),
        MetaValue::I8(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Bool(v) => buf.push(u8::from(*v)),
        MetaValue::String(s) => put_str(buf, s),
        MetaValue::U64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Array(items) => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(writer_error(format_args!(
                    "metadata '{key}': arrays nested more than {MAX_ARRAY_DEPTH} levels deep"
                )));
            }
            // An empty array has no element to take the type from: write it as U8.
            let elem_ty = items.first().map_or(0, MetaValue::type_id);
            if let Some(other) = items.iter().find(|v| v.type_id() != elem_ty) {
                return Err(writer_error(format_args!(
                    "metadata '{key}': array elements must all have one type, found {} and {}",
                    value_type_name(elem_ty),
                    other.type_name()
                )));
            }
            put_u32(buf, elem_ty);
            put_u64(buf, items.len() as u64);
            for item in items {
                put_value(buf, key, item, depth + 1)?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Encoding and decoding
// ---------------------------------------------------------------------------------------------

const QK: usize = 32;

/// Encodes f32 values (row-major, PyTorch order) as `ty`'s bytes. Quantized types take blocks of
/// 32 consecutive values, so `values.len()` must be a multiple of 32 for them. F16 rounds to
/// nearest even; Q8_0 and Q4_0 follow ggml's reference quantizers exactly.
pub fn encode(values: &[f32], ty: TensorType) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(ty.bytes_for(values.len())?);
    match ty {
        TensorType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        TensorType::F16 => values
            .iter()
            .for_each(|&v| out.extend_from_slice(&f16::from_f32(v).to_le_bytes())),
        TensorType::Q8_0 => values
            .chunks_exact(QK)
            .for_each(|b| quantize_q8_0(b, &mut out)),
        TensorType::Q4_0 => values
            .chunks_exact(QK)
            .for_each(|b| quantize_q4_0(b, &mut out)),
    }
    Ok(out)
}

/// Decodes `elems` values of type `ty` from exactly `ty.bytes_for(elems)` bytes.
pub fn decode(bytes: &[u8], ty: TensorType, elems: usize) -> Result<Vec<f32>> {
    let expected = ty.bytes_for(elems)?;
    if bytes.len() != expected {
        return Err(Error::arg(format!(
            "cannot decode {elems} {ty} values from {} bytes: they take {expected}",
            bytes.len()
        )));
    }
    let mut out = Vec::with_capacity(elems);
    match ty {
        TensorType::F32 => {
            out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        TensorType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        TensorType::Q8_0 => {
            for block in bytes.chunks_exact(ty.block_bytes()) {
                let (d, qs) = split_scale(block);
                out.extend(qs.iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        TensorType::Q4_0 => {
            for block in bytes.chunks_exact(ty.block_bytes()) {
                let (d, qs) = split_scale(block);
                // Low nibbles are elements 0..16, high nibbles 16..32.
                out.extend(qs.iter().map(|&q| f32::from((q & 0x0F) as i8 - 8) * d));
                out.extend(qs.iter().map(|&q| f32::from((q >> 4) as i8 - 8) * d));
            }
        }
    }
    Ok(out)
}

/// A block's f16 scale (as f32) and its quant bytes.
fn split_scale(block: &[u8]) -> (f32, &[u8]) {
    let (d, qs) = block.split_at(2);
    (f16::from_le_bytes([d[0], d[1]]).to_f32(), qs)
}

/// ggml's `quantize_row_q8_0_ref` for one block: d = max|x| / 127, q = round(x / d).
fn quantize_q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// ggml's `quantize_row_q4_0_ref` for one block: d = (the value of largest magnitude) / -8,
/// nibble = min(15, trunc(x / d + 8.5)).
fn quantize_q4_0(x: &[f32], out: &mut Vec<u8>) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    // x * id lies in [-8, 8], so the saturating `as u8` equals ggml's `(int8_t)` truncation.
    let nibble = |v: f32| ((v * id + 8.5) as u8).min(15);
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    let (lo, hi) = x.split_at(QK / 2);
    out.extend(
        lo.iter()
            .zip(hi)
            .map(|(&a, &b)| nibble(a) | (nibble(b) << 4)),
    );
}
