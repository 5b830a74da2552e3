//! Streaming pack loader: a GGUF pack arrives in chunks of any size (a `fetch` body, a file
//! read), is hashed (sha256) as it comes, and each tensor is handed to a [`TensorSink`] the
//! moment its last byte arrives — so a model goes into GPU buffers tensor by tensor and the
//! whole file never sits in memory at once.
//!
//! The header is parsed once enough bytes are there ([`GgufHeader::parse_prefix`]; a failed
//! try waits for twice the bytes, so tiny chunks cost O(log n) parses), and checked against the announced size when there is one; the size and the sha256 are checked
//! again at [`PackStream::finish`]. Any error leaves the stream failed (further pushes error).

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::gguf::{GgufHeader, TensorInfo};
use crate::pack;

/// Receives each tensor of a pack, in file order, when all of its bytes have arrived.
pub trait TensorSink {
    /// Called once, when the header is parsed (before any tensor).
    fn header(&mut self, _header: &GgufHeader, _cfg: &Config) -> Result<()> {
        Ok(())
    }
    fn tensor(&mut self, info: &TensorInfo, bytes: Vec<u8>) -> Result<()>;
}

/// What a finished stream proved about the file.
#[derive(Clone, Debug)]
pub struct StreamSummary {
    pub header: GgufHeader,
    pub cfg: Config,
    pub bytes: u64,
    /// Lower-case hex sha256 of the whole file.
    pub sha256: String,
}

/// A pack being received. See the module docs.
pub struct PackStream {
    expected_size: Option<u64>,
    /// Lower-case hex.
    expected_sha256: Option<String>,
    hasher: Sha256,
    /// Bytes pushed so far (= the file position of the next byte).
    received: u64,
    /// The file's first bytes, until the header parses.
    prefix: Vec<u8>,
    /// The prefix length at which the header is parsed next. A GGUF header does not say its own
    /// length, so a failed parse waits for the prefix to double: a header arriving in tiny chunks
    /// is parsed O(log n) times, not once a chunk (which was quadratic: a hang for a hostile
    /// 64 MB header sent a few KB at a time). `finish` parses whatever is left.
    next_parse: usize,
    /// How many times the header was parsed (tests check it stays logarithmic).
    header_parses: u32,
    header: Option<(GgufHeader, Config)>,
    /// Tensor indices of the header in data order.
    order: Vec<usize>,
    /// Position in `order` of the tensor being filled.
    next: usize,
    /// Bytes of the tensor being filled.
    current: Vec<u8>,
    /// First error seen; the stream refuses everything after it.
    failed: Option<String>,
}

/// An expected sha256 as lower-case hex (64 digits, either case given), or why it is not one.
pub fn normalize_sha256(s: &str) -> Result<String> {
    let s = s.trim().to_ascii_lowercase();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::arg(format!("expected sha256 {s:?} is not 64 hex digits")));
    }
    Ok(s)
}

/// Headers larger than this are refused (a GGUF header of a DiT-XL pack is ~60 KB).
const MAX_HEADER: usize = 64 << 20;
/// A tensor claiming more bytes than this is refused with the header (DiT-XL's largest is 21 MB
/// in F32; the page's wasm32 memory is 4 GiB in all).
pub const MAX_TENSOR_BYTES: u64 = 1 << 32;
/// The first full header parse waits for this many bytes (or the end of the file).
const FIRST_PARSE: usize = 4096;
/// GGUF's magic, version, tensor count and metadata count: parsed with every push until there.
const FIXED_FIELDS: usize = 24;

impl PackStream {
    /// `expected_sha256` is hex (either case); `None` skips that check.
    pub fn new(expected_size: Option<u64>, expected_sha256: Option<&str>) -> Result<PackStream> {
        let sha = expected_sha256.map(normalize_sha256).transpose()?;
        Ok(PackStream {
            expected_size,
            expected_sha256: sha,
            hasher: Sha256::new(),
            received: 0,
            prefix: Vec::new(),
            next_parse: FIRST_PARSE,
            header_parses: 0,
            header: None,
            order: Vec::new(),
            next: 0,
            current: Vec::new(),
            failed: None,
        })
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Feed the next bytes of the file.
    pub fn push(&mut self, chunk: &[u8], sink: &mut dyn TensorSink) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(Error::gguf(format!("the load already failed: {e}")));
        }
        let r = self.push_inner(chunk, sink);
        if let Err(e) = &r {
            self.failed = Some(e.to_string());
        }
        r
    }

    fn push_inner(&mut self, chunk: &[u8], sink: &mut dyn TensorSink) -> Result<()> {
        let start = self.received;
        let end = start + chunk.len() as u64;
        if let Some(size) = self.expected_size {
            if end > size {
                return Err(Error::gguf(format!("more data than the announced {size} bytes: the file does not match its manifest")));
            }
        }
        self.hasher.update(chunk);
        self.received = end;
        if self.header.is_some() {
            return self.consume(start, chunk, sink);
        }
        // The fixed fields (magic, version, counts) are checked as soon as they arrive, so a file
        // that is not a GGUF at all (an HTML error page) fails at its first push.
        let fixed_seen = self.prefix.len() >= FIXED_FIELDS;
        self.prefix.extend_from_slice(chunk);
        if fixed_seen && self.prefix.len() < self.next_parse && Some(end) != self.expected_size {
            return Ok(());
        }
        self.parse_header(sink)
    }

    /// Parse the header from the prefix if it is complete, and route the data bytes after it.
    fn parse_header(&mut self, sink: &mut dyn TensorSink) -> Result<()> {
        self.header_parses += 1;
        let Some(header) = GgufHeader::parse_prefix(&self.prefix)? else {
            if self.prefix.len() > MAX_HEADER {
                return Err(Error::gguf(format!("no complete header in the first {MAX_HEADER} bytes")));
            }
            self.next_parse = self.prefix.len().saturating_mul(2).max(FIRST_PARSE);
            return Ok(());
        };
        // Without an announced size, check names / shapes / overlaps against "any length";
        // truncation is caught at `finish`.
        header.validate_len(self.expected_size.unwrap_or(u64::MAX))?;
        if let Some(t) = header.tensors.iter().find(|t| t.nbytes as u64 > MAX_TENSOR_BYTES) {
            return Err(Error::gguf(format!(
                "tensor '{}' claims {} bytes, over the {} GiB a tensor may take (corrupt header?)",
                t.name,
                t.nbytes,
                MAX_TENSOR_BYTES >> 30
            )));
        }
        let cfg = pack::config_from_header(&header)?;
        sink.header(&header, &cfg)?;
        let mut order: Vec<usize> = (0..header.tensors.len()).collect();
        order.sort_by_key(|&i| header.tensors[i].offset);
        self.order = order;
        // Everything after the header's bytes in the prefix is data.
        let header_end = header.data_offset.min(self.prefix.len());
        self.header = Some((header, cfg));
        let prefix = std::mem::take(&mut self.prefix);
        self.consume(header_end as u64, &prefix[header_end..], sink)
    }

    /// Route bytes at file position `pos` into the tensors they belong to.
    fn consume(&mut self, mut pos: u64, mut bytes: &[u8], sink: &mut dyn TensorSink) -> Result<()> {
        let (header, _) = self.header.as_ref().expect("header parsed");
        let data = header.data_offset as u64;
        while !bytes.is_empty() && self.next < self.order.len() {
            let info = &header.tensors[self.order[self.next]];
            let t_start = data + info.offset;
            let t_end = t_start + info.nbytes as u64;
            if pos < t_start {
                // Alignment padding before this tensor.
                let gap = ((t_start - pos) as usize).min(bytes.len());
                bytes = &bytes[gap..];
                pos += gap as u64;
                continue;
            }
            let want = (t_end - pos) as usize;
            let take = want.min(bytes.len());
            // The buffer grows with the bytes that arrive (doubling, never past the tensor's
            // size): a header's claim alone allocates nothing.
            if self.current.capacity() - self.current.len() < take {
                let want = (self.current.len() + take).max(2 * self.current.capacity()).min(info.nbytes);
                self.current.reserve_exact(want - self.current.len());
            }
            self.current.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            pos += take as u64;
            if pos == t_end {
                let done = std::mem::take(&mut self.current);
                sink.tensor(info, done)?;
                self.next += 1;
            }
        }
        Ok(())
    }

    /// Check that the whole file arrived and matches the announced size and sha256. The last
    /// tensors may reach `sink` here (a file shorter than the header's next parse point).
    pub fn finish(mut self, sink: &mut dyn TensorSink) -> Result<StreamSummary> {
        if let Some(e) = &self.failed {
            return Err(Error::gguf(format!("the load failed: {e}")));
        }
        if self.header.is_none() && !self.prefix.is_empty() {
            self.parse_header(sink)?;
        }
        let Some((header, cfg)) = self.header.take() else {
            return Err(Error::gguf(format!("the file ({} bytes) ends inside the header: truncated?", self.received)));
        };
        if let Some(size) = self.expected_size {
            if self.received != size {
                return Err(Error::gguf(format!("got {} of the announced {size} bytes: truncated", self.received)));
            }
        }
        if self.next < self.order.len() {
            let info = &header.tensors[self.order[self.next]];
            return Err(Error::gguf(format!(
                "the file ({} bytes) ends inside tensor '{}' ({} of {} tensors complete): truncated?",
                self.received,
                info.name,
                self.next,
                self.order.len()
            )));
        }
        let sha256 = hex(&self.hasher.finalize());
        if let Some(want) = &self.expected_sha256 {
            if *want != sha256 {
                return Err(Error::gguf(format!("sha256 mismatch: the manifest says {want}, the file is {sha256} (corrupt or a different file)")));
            }
        }
        Ok(StreamSummary { header, cfg, bytes: self.received, sha256 })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a whole buffer, lower-case hex (for manifests and tests).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A sink that keeps every tensor's encoded bytes (the CPU path, tests).
#[derive(Default)]
pub struct KeepAll {
    pub tensors: Vec<(TensorInfo, Vec<u8>)>,
}

impl TensorSink for KeepAll {
    fn tensor(&mut self, info: &TensorInfo, bytes: Vec<u8>) -> Result<()> {
        self.tensors.push((info.clone(), bytes));
        Ok(())
    }
}

impl KeepAll {
    /// The tensors decoded to f32 (a CPU model's weights).
    pub fn into_tensor_map(self) -> Result<crate::model::TensorMap> {
        let mut map = crate::model::TensorMap::new();
        for (info, bytes) in self.tensors {
            let n = info.elem_count().ok_or_else(|| Error::gguf(format!("tensor '{}': shape overflows", info.name)))?;
            let v = crate::gguf::decode(&bytes, info.ty, n)?;
            map.insert(info.name, candle_core::Tensor::from_vec(v, info.shape.as_slice(), &candle_core::Device::Cpu)?);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Gguf;

    fn tiny_pack() -> Vec<u8> {
        // A random sparse tiny model written through the real pack writer.
        let cfg = Config::tiny(true);
        let tensors = crate::bench::random_tensors(&cfg, 3).unwrap();
        let mut out = Vec::new();
        pack::write_pack(&mut out, &cfg, &tensors, crate::gguf::TensorType::Q8_0, "t", |_, _| {}).unwrap();
        out
    }

    fn stream_in(bytes: &[u8], chunk: usize, size: Option<u64>, sha: Option<&str>) -> Result<(StreamSummary, KeepAll)> {
        let mut s = PackStream::new(size, sha)?;
        let mut sink = KeepAll::default();
        for c in bytes.chunks(chunk) {
            s.push(c, &mut sink)?;
        }
        Ok((s.finish(&mut sink)?, sink))
    }

    #[test]
    fn any_chunking_gives_every_tensor_exactly() {
        let bytes = tiny_pack();
        let g = Gguf::parse(&bytes).unwrap();
        let sha = sha256_hex(&bytes);
        for chunk in [1usize, 7, 31, 4096, 65536, bytes.len()] {
            let (sum, sink) = stream_in(&bytes, chunk, Some(bytes.len() as u64), Some(&sha)).unwrap();
            assert_eq!(sum.sha256, sha);
            assert_eq!(sink.tensors.len(), g.header.tensors.len(), "chunk {chunk}");
            for (info, data) in &sink.tensors {
                assert_eq!(data.as_slice(), g.tensor_data(g.tensor(&info.name).unwrap()), "tensor {} chunk {chunk}", info.name);
            }
        }
    }

    #[test]
    fn a_header_in_tiny_chunks_is_parsed_a_logarithmic_number_of_times() {
        let bytes = tiny_pack();
        let g = Gguf::parse(&bytes).unwrap();
        assert!(g.header.data_offset > 2 * FIRST_PARSE, "the test wants a header of several KB, got {}", g.header.data_offset);
        let mut s = PackStream::new(None, None).unwrap();
        let mut sink = KeepAll::default();
        for c in bytes.chunks(1) {
            s.push(c, &mut sink).unwrap();
        }
        // one parse a byte would be data_offset parses (quadratic work): here one a byte up to
        // the fixed fields, then doubling from 4 KiB
        let most = FIXED_FIELDS as u32 + 2 + (g.header.data_offset / FIRST_PARSE).ilog2();
        assert!(s.header_parses <= most, "{} header parses for a {}-byte header", s.header_parses, g.header.data_offset);
        s.finish(&mut sink).unwrap();
        assert_eq!(sink.tensors.len(), g.header.tensors.len());
        // A file that is shorter than the first parse point: the header is parsed at finish.
        let mut s = PackStream::new(None, None).unwrap();
        let mut sink = KeepAll::default();
        s.push(&bytes[..100], &mut sink).unwrap();
        let e = s.finish(&mut sink).unwrap_err().to_string();
        assert!(e.contains("ends inside the header"), "{e}");
    }

    #[test]
    fn truncated_corrupt_and_oversized_are_refused() {
        let bytes = tiny_pack();
        let sha = sha256_hex(&bytes);
        let n = bytes.len() as u64;
        // truncated, size known
        let e = stream_in(&bytes[..bytes.len() - 100], 1000, Some(n), Some(&sha)).err().unwrap().to_string();
        assert!(e.contains("truncated"), "{e}");
        // truncated, size unknown
        let e = stream_in(&bytes[..bytes.len() - 100], 1000, None, None).err().unwrap().to_string();
        assert!(e.contains("ends inside tensor"), "{e}");
        // one flipped byte in the data
        let mut bad = bytes.clone();
        let k = bad.len() - 10;
        bad[k] ^= 0x55;
        let e = stream_in(&bad, 1000, Some(n), Some(&sha)).err().unwrap().to_string();
        assert!(e.contains("sha256 mismatch"), "{e}");
        // longer than announced
        let mut long = bytes.clone();
        long.extend_from_slice(&[0; 8]);
        let e = stream_in(&long, 1000, Some(n), None).err().unwrap().to_string();
        assert!(e.contains("more data"), "{e}");
        // not a GGUF file
        let e = stream_in(b"<!doctype html><html>not found</html>", 8, None, None).err().unwrap().to_string();
        assert!(e.to_lowercase().contains("magic") || e.contains("GGUF"), "{e}");
        // bad sha argument
        assert!(PackStream::new(None, Some("xyz")).is_err());
        // a failed stream stays failed
        let mut s = PackStream::new(None, None).unwrap();
        let mut sink = KeepAll::default();
        assert!(s.push(b"JUNKJUNKJUNKJUNKJUNKJUNKJUNK", &mut sink).is_err());
        assert!(s.push(&bytes, &mut sink).is_err());
    }
}
