//! GGUF reader/writer: round trips, quantization accuracy, agreement with candle, and corrupt files.
//! (Long on purpose: one test per way a hostile or truncated pack can be wrong, plus the fuzzers.)

use std::borrow::Cow;
use std::sync::OnceLock;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use sparsedit::gguf::{
    self, decode, encode, Gguf, GgufHeader, MetaValue, TensorInfo, TensorToWrite, TensorType,
    GGUF_MAGIC,
};
use sparsedit::{Error, Result};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
}

fn tensor<'a>(
    name: &'a str,
    shape: &'a [usize],
    ty: TensorType,
    values: &[f32],
) -> TensorToWrite<'a> {
    TensorToWrite {
        name,
        shape,
        ty,
        data: Cow::Owned(encode(values, ty).unwrap()),
    }
}

/// A small valid file with one tensor of each type.
fn small_file() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        let meta = vec![
            ("general.name".to_string(), MetaValue::String("tiny".into())),
            ("dit.depth".to_string(), MetaValue::U32(2)),
            (
                "dit.labels".to_string(),
                MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(-2)]),
            ),
        ];
        let v = normal(64, 7);
        let tensors = [
            tensor("a.f32", &[2, 3], TensorType::F32, &v[..6]),
            tensor("b.q8", &[1, 32], TensorType::Q8_0, &v[..32]),
            tensor("c.f16", &[3], TensorType::F16, &v[..3]),
            tensor("d.q4", &[32], TensorType::Q4_0, &v[32..]),
        ];
        gguf::write_to_vec(&meta, &tensors).unwrap()
    })
}

/// Builds raw GGUF bytes field by field, for files the writer refuses to produce.
struct Raw {
    buf: Vec<u8>,
    /// Length of the header proper (set by `end_header`).
    header_len: usize,
}

impl Raw {
    fn new(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        let mut r = Raw {
            buf: GGUF_MAGIC.to_vec(),
            header_len: 0,
        };
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    /// A metadata entry: key, value type, raw payload.
    fn kv(&mut self, key: &str, ty: u32, payload: &[u8]) -> &mut Self {
        self.str(key).u32(ty).bytes(payload)
    }
    /// A tensor info with dims in ggml order (innermost first).
    fn tensor(&mut self, name: &str, ggml_dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(ggml_dims.len() as u32);
        for &d in ggml_dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Records the header length and pads to 32.
    fn end_header(&mut self) -> &mut Self {
        self.header_len = self.buf.len();
        self.buf.resize(self.buf.len().next_multiple_of(32), 0);
        self
    }
    fn data(&mut self, n: usize) -> Vec<u8> {
        self.buf.extend((0..n).map(|i| i as u8));
        self.buf.clone()
    }
}

fn gguf_err(bytes: &[u8]) -> String {
    match Gguf::parse(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "multi-line message: {msg}");
            msg
        }
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} does not mention {p:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Types and metadata values
// ---------------------------------------------------------------------------------------------

#[test]
fn tensor_type_table() {
    use TensorType::*;
    let table = [
        (F32, 0, "F32", 1, 4),
        (F16, 1, "F16", 1, 2),
        (Q8_0, 8, "Q8_0", 32, 34),
        (Q4_0, 2, "Q4_0", 32, 18),
    ];
    for (ty, id, name, block, bytes) in table {
        assert_eq!(ty.ggml_id(), id);
        assert_eq!(TensorType::from_ggml_id(id, "t").unwrap(), ty);
        assert_eq!(ty.name(), name);
        assert_eq!(ty.block_size(), block);
        assert_eq!(ty.block_bytes(), bytes);
        assert_eq!(TensorType::parse(&name.to_lowercase()).unwrap(), ty);
        assert_eq!(TensorType::parse(name).unwrap(), ty);
        assert_eq!(ty.bytes_for(64).unwrap(), 64 / block * bytes);
    }
    assert!(Q8_0
        .bytes_for(33)
        .unwrap_err()
        .to_string()
        .contains("multiple of 32"));
    assert!(F32.bytes_for(usize::MAX / 2).is_err());
    assert!(Q8_0.bytes_for(usize::MAX - 31).is_err());
    let e = TensorType::parse("q4_1").unwrap_err();
    assert!(matches!(e, Error::UnsupportedType(_)));
    assert_mentions(&e.to_string(), &["q4_1", "f32, f16, q8_0, q4_0"]);
}

#[test]
fn meta_value_accessors() {
    assert_eq!(MetaValue::U8(7).as_u64(), Some(7));
    assert_eq!(MetaValue::I32(-1).as_u64(), None);
    assert_eq!(MetaValue::I64(5).as_u64(), Some(5));
    assert_eq!(MetaValue::U64(u64::MAX).as_i64(), None);
    assert_eq!(MetaValue::I16(-3).as_i64(), Some(-3));
    assert_eq!(MetaValue::F32(1.5).as_f64(), Some(1.5));
    assert_eq!(MetaValue::U32(3).as_f64(), Some(3.0));
    assert_eq!(MetaValue::String("x".into()).as_f64(), None);
    assert_eq!(MetaValue::String("x".into()).as_str(), Some("x"));
    assert_eq!(MetaValue::Bool(true).as_bool(), Some(true));
    assert_eq!(MetaValue::U8(1).as_bool(), None);
    let arr = MetaValue::Array(vec![MetaValue::U8(1)]);
    assert_eq!(arr.as_array(), Some(&[MetaValue::U8(1)][..]));
    assert_eq!(arr.type_id(), 9);
    assert_eq!(MetaValue::F64(0.0).type_id(), 12);
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

fn every_value_type() -> Vec<(String, MetaValue)> {
    use MetaValue::*;
    let entries = vec![
        ("v.u8", U8(200)),
        ("v.i8", I8(-100)),
        ("v.u16", U16(60000)),
        ("v.i16", I16(-30000)),
        ("v.u32", U32(4_000_000_000)),
        ("v.i32", I32(-2_000_000_000)),
        ("v.f32", F32(-1.25e-3)),
        ("v.bool", Bool(true)),
        ("v.string", String("héllo, GGUF ✓".into())),
        ("v.array", Array(vec![F32(1.0), F32(-2.5), F32(3.75)])),
        ("v.u64", U64(u64::MAX)),
        ("v.i64", I64(i64::MIN)),
        ("v.f64", F64(std::f64::consts::PI)),
        ("v.empty_string", String(std::string::String::new())),
        ("v.empty_array", Array(vec![])),
        (
            "v.strings",
            Array(vec![
                String("a".into()),
                String("".into()),
                String("ccc".into()),
            ]),
        ),
        (
            "v.nested",
            Array(vec![
                Array(vec![U8(1), U8(2)]),
                Array(vec![String("x".into())]),
                Array(vec![Array(vec![Array(vec![Bool(false), Bool(true)])])]),
            ]),
        ),
    ];
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

#[test]
fn round_trip_all_types_and_metadata() -> Result<()> {
    let metadata = every_value_type();
    let v = normal(4096, 1);
    let specs: [(&str, &[usize], TensorType, &[f32]); 4] = [
        ("blocks.0.f32", &[2, 3, 4, 5], TensorType::F32, &v[..120]),
        ("blocks.0.f16", &[7], TensorType::F16, &v[..7]),
        (
            "blocks.0.attn.qkv.weight",
            &[3, 64],
            TensorType::Q8_0,
            &v[..192],
        ),
        ("blocks.0.q4", &[2, 2, 32], TensorType::Q4_0, &v[1000..1128]),
    ];
    let tensors: Vec<_> = specs
        .iter()
        .map(|&(n, s, t, x)| tensor(n, s, t, x))
        .collect();
    let file = gguf::write_to_vec(&metadata, &tensors)?;

    let g = Gguf::parse(&file)?;
    let h = &g.header;
    assert_eq!(h.version, 3);
    assert_eq!(h.alignment, 32);
    assert_eq!(h.data_offset % 32, 0);
    // The user's metadata in order, then the alignment the writer adds.
    assert_eq!(&h.metadata[..metadata.len()], &metadata[..]);
    assert_eq!(
        h.metadata[metadata.len()],
        ("general.alignment".to_string(), MetaValue::U32(32))
    );
    assert_eq!(h.metadata.len(), metadata.len() + 1);
    assert_eq!(
        h.meta("v.string").and_then(MetaValue::as_str),
        Some("héllo, GGUF ✓")
    );
    assert_eq!(h.meta("missing"), None);

    assert_eq!(h.tensors.len(), 4);
    for ((name, shape, ty, values), (info, written)) in
        specs.iter().zip(h.tensors.iter().zip(&tensors))
    {
        assert_eq!(&info.name, name);
        assert_eq!(&info.shape, shape);
        assert_eq!(info.ty, *ty);
        assert_eq!(info.offset % 32, 0);
        assert_eq!(info.nbytes, ty.bytes_for(values.len())?);
        assert_eq!(h.tensor(name), Some(info));
        assert_eq!(g.tensor_data(info), &written.data[..]);
        assert_eq!(h.tensor_bytes(&file, *name)?, &written.data[..]);
        assert_eq!(h.tensor_bytes(&file, info)?, &written.data[..]);
        let back = g.dequantize_f32(info)?;
        assert_eq!(back, decode(&written.data, *ty, values.len())?);
        if *ty == TensorType::F32 {
            assert_eq!(&back, values);
        }
    }
    let e = h.tensor_bytes(&file, "nope").unwrap_err().to_string();
    assert_mentions(&e, &["nope"]);

    // On disk, dims are in ggml order: (3, 64) is stored as [64, 3].
    let mut info = Vec::new();
    let name = "blocks.0.attn.qkv.weight";
    info.extend_from_slice(&(name.len() as u64).to_le_bytes());
    info.extend_from_slice(name.as_bytes());
    info.extend_from_slice(&2u32.to_le_bytes());
    info.extend_from_slice(&64u64.to_le_bytes());
    info.extend_from_slice(&3u64.to_le_bytes());
    info.extend_from_slice(&8u32.to_le_bytes());
    assert!(
        file.windows(info.len()).any(|w| w == info),
        "tensor info not stored in ggml order"
    );

    // The last tensor ends the file: no trailing padding.
    let last = h.tensors.last().unwrap();
    assert_eq!(
        file.len() as u64,
        h.data_offset as u64 + last.offset + last.nbytes as u64
    );

    // Writing what was read gives the same bytes.
    let again: Vec<_> = h
        .tensors
        .iter()
        .map(|t| TensorToWrite {
            name: &t.name,
            shape: &t.shape,
            ty: t.ty,
            data: Cow::Borrowed(g.tensor_data(t)),
        })
        .collect();
    assert_eq!(gguf::write_to_vec(&h.metadata, &again)?, file);
    Ok(())
}

#[test]
fn empty_file_round_trips() -> Result<()> {
    let file = gguf::write_to_vec(&[], &[])?;
    let g = Gguf::parse(&file)?;
    assert!(g.header.tensors.is_empty());
    assert_eq!(
        g.header.metadata,
        vec![("general.alignment".to_string(), MetaValue::U32(32))]
    );
    Ok(())
}

#[test]
fn writer_streams_to_io_and_reports_io_errors() {
    struct Full;
    impl std::io::Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let e = gguf::write(&mut Full, &[], &[]).unwrap_err();
    assert!(matches!(e, Error::Io { .. }));
    assert_mentions(&e.to_string(), &["<gguf writer>", "disk full"]);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pack.gguf");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    gguf::write(
        &mut f,
        &[],
        &[tensor("x", &[4], TensorType::F32, &[1.0, 2.0, 3.0, 4.0])],
    )
    .unwrap();
    drop(f);
    let bytes = std::fs::read(&path).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(
        g.dequantize_f32(&g.header.tensors[0]).unwrap(),
        vec![1.0, 2.0, 3.0, 4.0]
    );
}

/// Metadata and tensors the writer must refuse, and what its message must mention.
type WriterCase<'a> = (
    Vec<(String, MetaValue)>,
    Vec<TensorToWrite<'a>>,
    &'a [&'a str],
);

#[test]
fn writer_rejects_bad_input() {
    let ok = || tensor("x", &[32], TensorType::Q8_0, &[0.5; 32]);
    let cases: Vec<WriterCase> = vec![
        (vec![], vec![ok(), ok()], &["'x'", "more than once"]),
        (
            vec![
                ("k".into(), MetaValue::U8(1)),
                ("k".into(), MetaValue::U8(2)),
            ],
            vec![],
            &["duplicate metadata key 'k'"],
        ),
        (
            vec![(
                "k".into(),
                MetaValue::Array(vec![MetaValue::U8(1), MetaValue::String("s".into())]),
            )],
            vec![],
            &["'k'", "U8", "String"],
        ),
        (
            vec![(
                "deep".into(),
                MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::Array(vec![
                    MetaValue::Array(vec![MetaValue::Array(vec![])]),
                ])])]),
            )],
            vec![],
            &["'deep'", "nested"],
        ),
        (
            vec![("general.alignment".into(), MetaValue::U32(64))],
            vec![],
            &["general.alignment"],
        ),
        (
            vec![],
            vec![TensorToWrite {
                name: "y",
                shape: &[32],
                ty: TensorType::Q8_0,
                data: Cow::Owned(vec![0; 33]),
            }],
            &["'y'", "33 bytes", "34"],
        ),
        (
            vec![],
            vec![TensorToWrite {
                name: "z",
                shape: &[16],
                ty: TensorType::Q4_0,
                data: Cow::Owned(vec![]),
            }],
            &["'z'", "multiple of 32"],
        ),
        (
            vec![],
            vec![TensorToWrite {
                name: "w",
                shape: &[1, 1, 1, 1, 1],
                ty: TensorType::F32,
                data: Cow::Owned(vec![0; 4]),
            }],
            &["'w'", "5 dimensions"],
        ),
        (
            vec![],
            vec![TensorToWrite {
                name: "v",
                shape: &[2, 0],
                ty: TensorType::F32,
                data: Cow::Owned(vec![]),
            }],
            &["'v'", "zero dimension"],
        ),
    ];
    for (meta, tensors, parts) in cases {
        let e = gguf::write_to_vec(&meta, &tensors).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        assert_mentions(&e.to_string(), parts);
    }
    // general.alignment = U32(32) is accepted and not duplicated.
    let meta = vec![("general.alignment".to_string(), MetaValue::U32(32))];
    let file = gguf::write_to_vec(&meta, &[ok()]).unwrap();
    assert_eq!(Gguf::parse(&file).unwrap().header.metadata, meta);
}

// ---------------------------------------------------------------------------------------------
// Quantization accuracy and agreement with candle
// ---------------------------------------------------------------------------------------------

fn relative_rms(x: &[f32], y: &[f32]) -> f64 {
    let err: f64 = x.iter().zip(y).map(|(a, b)| f64::from(a - b).powi(2)).sum();
    let norm: f64 = x.iter().map(|a| f64::from(*a).powi(2)).sum();
    (err / norm).sqrt()
}

#[test]
fn q8_0_error_bounds() -> Result<()> {
    let x = normal(32 * 2048, 2);
    let bytes = encode(&x, TensorType::Q8_0)?;
    let y = decode(&bytes, TensorType::Q8_0, x.len())?;
    let mut worst_ratio = 0f32;
    for ((xb, yb), block) in x.chunks(32).zip(y.chunks(32)).zip(bytes.chunks(34)) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            (d - amax / 127.0).abs() <= amax / 127.0 / 1024.0,
            "scale {d} vs amax {amax}"
        );
        let err = xb
            .iter()
            .zip(yb)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // Rounding to the nearest step gives d/2; the stored scale is f16(amax/127) while the
        // quants were computed with the f32 scale, which adds up to 127 * |d - d16| <= 127 * d * 2^-11.
        let bound = d * (0.5 + 127.0 / 2048.0) * 1.001 + 1e-7;
        assert!(err <= bound, "block error {err} > {bound} (d = {d})");
        worst_ratio = worst_ratio.max(err / d);
    }
    let rel = relative_rms(&x, &y);
    println!("Q8_0: relative RMS error {rel:.5}, worst |err|/d {worst_ratio:.4}");
    assert!(rel < 0.01, "Q8_0 relative RMS error {rel}");
    Ok(())
}

#[test]
fn q4_0_error_bounds() -> Result<()> {
    let x = normal(32 * 2048, 3);
    let bytes = encode(&x, TensorType::Q4_0)?;
    let y = decode(&bytes, TensorType::Q4_0, x.len())?;
    for ((xb, yb), block) in x.chunks(32).zip(y.chunks(32)).zip(bytes.chunks(18)) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32().abs();
        let err = xb
            .iter()
            .zip(yb)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // One step (the top code 15 is clamped) plus the f16 rounding of the scale.
        assert!(
            err <= d * (1.0 + 8.0 / 2048.0) + 1e-6,
            "block error {err} with d = {d}"
        );
    }
    let rel = relative_rms(&x, &y);
    println!("Q4_0: relative RMS error {rel:.5}");
    assert!(rel < 0.12, "Q4_0 relative RMS error {rel}");
    Ok(())
}

#[test]
fn float_types_are_exact() -> Result<()> {
    let x = normal(1000, 4);
    assert_eq!(
        decode(&encode(&x, TensorType::F32)?, TensorType::F32, x.len())?,
        x
    );

    let mut h: Vec<f32> = x
        .iter()
        .map(|&v| f16::from_f32(v * 100.0).to_f32())
        .collect();
    h.extend([
        0.0,
        -0.0,
        65504.0,
        -65504.0,
        f16::from_bits(1).to_f32(),
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    let back = decode(&encode(&h, TensorType::F16)?, TensorType::F16, h.len())?;
    let mismatches = back
        .iter()
        .zip(&h)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(
        mismatches, 0,
        "F16 round trip changed {mismatches} f16-representable values"
    );
    Ok(())
}

#[test]
fn quantized_edge_blocks() -> Result<()> {
    for ty in [TensorType::Q8_0, TensorType::Q4_0] {
        let zeros = vec![0f32; 32];
        assert_eq!(decode(&encode(&zeros, ty)?, ty, 32)?, zeros);
        assert!(encode(&[1.0; 31], ty).is_err());
        assert!(decode(&[0; 10], ty, 32).is_err());
    }
    Ok(())
}

/// Random N(0,1) data plus blocks that exercise the edge cases of the reference quantizers.
fn candle_test_data() -> Vec<f32> {
    let mut x = normal(16 * 256, 5);
    x[..32].fill(0.0); // all-zero block
    x[32..64].fill(0.25); // constant block
    x[64..96].iter_mut().for_each(|v| *v *= 1e-4); // tiny values
    x[96..128].iter_mut().for_each(|v| *v *= 1e3); // large values
    x[128 + 5] = -9.0; // negative extreme
    x[160 + 7] = 9.0; // positive extreme
    x[192 + 3] = -9.0; // extremes of equal magnitude, negative first
    x[192 + 20] = 9.0;
    x
}

#[test]
fn encode_matches_candle_byte_for_byte() -> Result<()> {
    let x = candle_test_data();
    let t = Tensor::from_vec(x.clone(), (16, 256), &Device::Cpu)?;
    for (ty, dtype) in [
        (TensorType::Q8_0, GgmlDType::Q8_0),
        (TensorType::Q4_0, GgmlDType::Q4_0),
    ] {
        let q = QTensor::quantize(&t, dtype)?;
        let ours = encode(&x, ty)?;
        assert_eq!(ours, q.data()?.as_ref(), "{ty} bytes differ from candle's");
        let theirs = q
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(
            decode(&ours, ty, x.len())?,
            theirs,
            "{ty} dequantization differs from candle's"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Truncation and streaming
// ---------------------------------------------------------------------------------------------

#[test]
fn every_truncation_is_rejected_without_panicking() {
    let file = small_file();
    let full = Gguf::parse(file).unwrap().header;
    let mut header_end = None;
    for len in 0..file.len() {
        let prefix = &file[..len];
        match GgufHeader::parse_prefix(prefix) {
            Ok(None) => assert!(header_end.is_none(), "None after Some at {len}"),
            Ok(Some(h)) => {
                assert_eq!(h, full, "partial header at {len}");
                header_end.get_or_insert(len);
            }
            Err(e) => panic!("a prefix of a valid file ({len} bytes) was rejected: {e}"),
        }
        let msg = gguf_err(prefix);
        assert_mentions(&msg, &["truncated"]);
    }
    let header_end = header_end.expect("the header ends before the data");
    assert!(header_end <= full.data_offset && full.data_offset - header_end < 32);
}

#[test]
fn prefix_ending_at_header_end_is_some() {
    let mut raw = Raw::new(3, 1, 1);
    raw.kv(
        "general.name",
        8,
        &[&3u64.to_le_bytes()[..], b"abc"].concat(),
    );
    raw.tensor("t", &[4], 0, 0).end_header();
    let file = raw.data(16);
    let n = raw.header_len;
    let h = GgufHeader::parse_prefix(&file[..n])
        .unwrap()
        .expect("complete header");
    assert_eq!(h.data_offset, n.next_multiple_of(32));
    assert_eq!(h.tensors[0].shape, vec![4]);
    assert_eq!(GgufHeader::parse_prefix(&file[..n - 1]).unwrap(), None);
    assert!(Gguf::parse(&file).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Corrupt files
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_magic() {
    let mut file = small_file().to_vec();
    file[..4].copy_from_slice(b"GGML");
    assert_mentions(&gguf_err(&file), &["magic", "GGML"]);
    // Clearly not GGUF after one byte: no need to wait for more.
    assert!(GgufHeader::parse_prefix(b"P").is_err());
    assert_eq!(GgufHeader::parse_prefix(b"GG").unwrap(), None);
    assert_eq!(GgufHeader::parse_prefix(b"").unwrap(), None);
}

#[test]
fn unsupported_versions() {
    for (version, parts) in [
        (2u32, &["version 2", "only version 3"][..]),
        (1, &["version 1"]),
        (4, &["version 4"]),
    ] {
        let mut file = small_file().to_vec();
        file[4..8].copy_from_slice(&version.to_le_bytes());
        assert_mentions(&gguf_err(&file), parts);
        assert!(
            GgufHeader::parse_prefix(&file[..8]).is_err(),
            "version {version} must fail at once"
        );
    }
    let mut file = small_file().to_vec();
    file[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert_mentions(&gguf_err(&file), &["big-endian"]);
}

#[test]
fn tensor_data_past_the_end() {
    let mut raw = Raw::new(3, 1, 0);
    raw.tensor("blocks.0.attn.qkv.weight", &[8, 2], 0, 0)
        .end_header();
    let file = raw.data(63); // the header takes 96 bytes, the tensor 64
    let msg = gguf_err(&file);
    assert_mentions(
        &msg,
        &[
            "'blocks.0.attn.qkv.weight'",
            "[96..160)",
            "past the end",
            "(159 bytes)",
            "truncated?",
        ],
    );

    let mut raw = Raw::new(3, 1, 0);
    raw.tensor("far", &[1], 0, 1 << 40).end_header();
    assert_mentions(&gguf_err(&raw.data(4)), &["'far'", "past the end"]);

    let mut raw = Raw::new(3, 1, 0);
    raw.tensor("wrap", &[1], 0, u64::MAX - 31).end_header();
    assert_mentions(&gguf_err(&raw.data(4)), &["'wrap'", "overflows"]);
}

#[test]
fn misaligned_offset() {
    let mut raw = Raw::new(3, 2, 0);
    raw.tensor("a", &[4], 0, 0)
        .tensor("b", &[4], 0, 16)
        .end_header();
    assert_mentions(
        &gguf_err(&raw.data(64)),
        &["'b'", "offset 16", "multiple of the alignment 32"],
    );

    // A custom alignment is honoured.
    let mut raw = Raw::new(3, 2, 1);
    raw.kv("general.alignment", 4, &16u32.to_le_bytes());
    raw.tensor("a", &[4], 0, 0)
        .tensor("b", &[4], 0, 16)
        .end_header();
    let file = raw.data(64);
    let g = Gguf::parse(&file).unwrap();
    assert_eq!(g.header.alignment, 16);
    assert_eq!(g.header.data_offset, raw.header_len.next_multiple_of(16));
}

#[test]
fn bad_alignment_metadata() {
    for (ty, payload, parts) in [
        (
            4u32,
            24u32.to_le_bytes().to_vec(),
            &["general.alignment", "power of two"][..],
        ),
        (4, 0u32.to_le_bytes().to_vec(), &["power of two"]),
        (
            10,
            32u64.to_le_bytes().to_vec(),
            &["general.alignment", "U32", "U64"],
        ),
    ] {
        let mut raw = Raw::new(3, 0, 1);
        raw.kv("general.alignment", ty, &payload).end_header();
        assert_mentions(&gguf_err(&raw.data(0)), parts);
    }
}

#[test]
fn overlapping_tensors() {
    let mut raw = Raw::new(3, 2, 0);
    raw.tensor("first", &[16], 0, 0)
        .tensor("second", &[4], 0, 32)
        .end_header();
    let msg = gguf_err(&raw.data(96));
    assert_mentions(&msg, &["'first'", "'second'", "overlap"]);

    // validate_len also catches headers edited in memory.
    let g = Gguf::parse(small_file()).unwrap();
    let mut h = g.header.clone();
    h.tensors[1].offset = h.tensors[0].offset;
    assert_mentions(
        &h.validate_len(small_file().len() as u64)
            .unwrap_err()
            .to_string(),
        &["overlap"],
    );
    let mut h = g.header.clone();
    h.tensors[0].nbytes += 1;
    assert_mentions(
        &h.validate_len(small_file().len() as u64)
            .unwrap_err()
            .to_string(),
        &["'a.f32'", "claims"],
    );
    let mut h = g.header.clone();
    h.tensors[1].name = h.tensors[0].name.clone();
    assert_mentions(
        &h.validate_len(small_file().len() as u64)
            .unwrap_err()
            .to_string(),
        &["more than once"],
    );
    let mut h = g.header.clone();
    h.tensors[0].shape = vec![];
    assert_mentions(
        &h.validate_len(small_file().len() as u64)
            .unwrap_err()
            .to_string(),
        &["0 dimensions"],
    );
    // tensor_data never panics on an info from elsewhere.
    let mut foreign: TensorInfo = g.header.tensors[0].clone();
    foreign.offset = 1 << 50;
    assert!(g.tensor_data(&foreign).is_empty());
    assert!(g.dequantize_f32(&foreign).is_err());
}

#[test]
fn unsupported_tensor_types() {
    for (id, name) in [(3u32, "Q4_1"), (6, "Q5_0"), (30, "BF16"), (12, "Q4_K")] {
        let mut raw = Raw::new(3, 1, 0);
        raw.tensor("blocks.3.mlp.fc1.weight", &[32], id, 0)
            .end_header();
        let file = raw.data(64);
        let e = GgufHeader::parse_prefix(&file).unwrap_err();
        assert!(matches!(e, Error::UnsupportedType(_)), "{e:?}");
        let msg = e.to_string();
        assert_mentions(
            &msg,
            &[
                name,
                &format!("ggml type {id}"),
                "'blocks.3.mlp.fc1.weight'",
                "F32, F16, Q8_0, Q4_0",
            ],
        );
        assert!(matches!(Gguf::parse(&file), Err(Error::UnsupportedType(_))));
    }
    let mut raw = Raw::new(3, 1, 0);
    raw.tensor("t", &[32], 999, 0).end_header();
    assert_mentions(&gguf_err(&raw.data(64)), &["999", "'t'"]);
}

#[test]
fn absurd_counts_fail_immediately() {
    // Only the 24-byte fixed header: the counts alone are enough to reject.
    let raw = Raw::new(3, u64::MAX, 0);
    let e = GgufHeader::parse_prefix(&raw.buf).unwrap_err().to_string();
    assert_mentions(&e, &["absurd", "18446744073709551615 tensors"]);
    let raw = Raw::new(3, 0, u64::MAX);
    assert_mentions(
        &GgufHeader::parse_prefix(&raw.buf).unwrap_err().to_string(),
        &["absurd"],
    );
    let raw = Raw::new(3, 1 << 40, 1 << 40);
    assert!(GgufHeader::parse_prefix(&raw.buf).is_err());

    // Plausible counts with too few bytes yet: wait for more.
    let raw = Raw::new(3, 1000, 1000);
    assert_eq!(GgufHeader::parse_prefix(&raw.buf).unwrap(), None);
    assert_mentions(&gguf_err(&raw.buf), &["truncated"]);

    // A key length of u64::MAX.
    let mut raw = Raw::new(3, 0, 1);
    raw.u64(u64::MAX);
    assert_mentions(
        &GgufHeader::parse_prefix(&raw.buf).unwrap_err().to_string(),
        &["absurd", "metadata key #0"],
    );

    // An array of u64::MAX strings.
    let mut raw = Raw::new(3, 0, 1);
    raw.str("tokens").u32(9).u32(8).u64(u64::MAX);
    assert_mentions(
        &GgufHeader::parse_prefix(&raw.buf).unwrap_err().to_string(),
        &["absurd", "'tokens'"],
    );

    // A large but possible array is waited for, not allocated.
    let mut raw = Raw::new(3, 0, 1);
    raw.str("tokens").u32(9).u32(0).u64(100_000_000);
    assert_eq!(GgufHeader::parse_prefix(&raw.buf).unwrap(), None);
}

#[test]
fn dims_product_overflow() {
    let mut raw = Raw::new(3, 1, 0);
    raw.tensor("huge", &[1 << 40, 1 << 40], 0, 0).end_header();
    assert_mentions(&gguf_err(&raw.data(4)), &["'huge'", "overflows"]);

    // Elements fit, bytes do not.
    let mut raw = Raw::new(3, 1, 0);
    raw.tensor("huge", &[1 << 62, 2], 0, 0).end_header();
    assert_mentions(&gguf_err(&raw.data(4)), &["'huge'"]);
}

#[test]
fn bad_shapes() {
    for (dims, parts) in [
        (&[][..], &["'t'", "0 dimensions"][..]),
        (&[1, 1, 1, 1, 1], &["'t'", "5 dimensions"]),
        (&[4, 0], &["'t'", "zero dimension"]),
    ] {
        let mut raw = Raw::new(3, 1, 0);
        raw.tensor("t", dims, 0, 0).end_header();
        assert_mentions(&gguf_err(&raw.data(64)), parts);
    }
    // Q8_0 with 48 elements: not whole blocks.
    let mut raw = Raw::new(3, 1, 0);
    raw.tensor("q", &[48], 8, 0).end_header();
    assert_mentions(&gguf_err(&raw.data(64)), &["'q'", "Q8_0", "multiple of 32"]);
}

#[test]
fn duplicates_and_bad_strings() {
    let mut raw = Raw::new(3, 2, 0);
    raw.tensor("same", &[4], 0, 0)
        .tensor("same", &[4], 0, 32)
        .end_header();
    assert_mentions(&gguf_err(&raw.data(64)), &["'same'", "more than once"]);

    let mut raw = Raw::new(3, 0, 2);
    raw.kv("k", 0, &[1]).kv("k", 0, &[2]).end_header();
    assert_mentions(&gguf_err(&raw.data(0)), &["duplicate metadata key 'k'"]);

    let mut raw = Raw::new(3, 0, 1);
    raw.u64(2)
        .bytes(&[0xC3, 0x28])
        .u32(0)
        .bytes(&[0])
        .end_header();
    assert_mentions(&gguf_err(&raw.data(0)), &["metadata key #0", "UTF-8"]);

    let mut raw = Raw::new(3, 1, 0);
    raw.u64(1)
        .bytes(&[0xFF])
        .u32(1)
        .u64(4)
        .u32(0)
        .u64(0)
        .end_header();
    assert_mentions(&gguf_err(&raw.data(16)), &["tensor #0", "UTF-8"]);
}

#[test]
fn bad_metadata_values() {
    let cases: [(u32, Vec<u8>, &[&str]); 4] = [
        (7, vec![2], &["'k'", "bool byte 2"]),
        (13, vec![0; 8], &["'k'", "unknown value type 13"]),
        (
            9,
            [13u32.to_le_bytes().to_vec(), 0u64.to_le_bytes().to_vec()].concat(),
            &["'k'", "element type 13"],
        ),
        // Five levels of arrays.
        (
            9,
            [
                [9u32.to_le_bytes().to_vec(), 1u64.to_le_bytes().to_vec()]
                    .concat()
                    .repeat(4),
                vec![0; 12],
            ]
            .concat(),
            &["'k'", "nested"],
        ),
    ];
    for (ty, payload, parts) in cases {
        let mut raw = Raw::new(3, 0, 1);
        raw.kv("k", ty, &payload).end_header();
        assert_mentions(&gguf_err(&raw.data(0)), parts);
    }
    // Four levels are fine.
    let payload = [
        [9u32.to_le_bytes().to_vec(), 1u64.to_le_bytes().to_vec()]
            .concat()
            .repeat(3),
        vec![0; 12],
    ]
    .concat();
    let mut raw = Raw::new(3, 0, 1);
    raw.kv("k", 9, &payload).end_header();
    let file = raw.data(0);
    let g = Gguf::parse(&file).unwrap();
    let nested = MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::Array(vec![
        MetaValue::Array(vec![]),
    ])])]);
    assert_eq!(g.header.meta("k"), Some(&nested));
}

// ---------------------------------------------------------------------------------------------
// Fuzzing
// ---------------------------------------------------------------------------------------------

fn exercise(bytes: &[u8]) {
    let _ = GgufHeader::parse_prefix(bytes);
    if let Ok(g) = Gguf::parse(bytes) {
        for t in &g.header.tensors {
            assert_eq!(g.tensor_data(t).len(), t.nbytes);
            let values = g.dequantize_f32(t).expect("a validated tensor decodes");
            assert_eq!(Some(values.len()), t.elem_count());
        }
    }
}

fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(1 << 32),
        Just(1 << 62),
        0u64..64,
        any::<u64>()
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics(
        bytes in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        words in prop::collection::vec((any::<usize>(), interesting_u64()), 0..3),
        cut in prop::option::of(any::<usize>()),
        extra in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut file = small_file().to_vec();
        for (i, b) in bytes {
            let n = file.len();
            file[i % n] = b;
        }
        for (i, w) in words {
            let at = i % (file.len() - 7);
            file[at..at + 8].copy_from_slice(&w.to_le_bytes());
        }
        if let Some(c) = cut {
            file.truncate(c % (file.len() + 1));
        }
        file.extend(extra);
        exercise(&file);
    }

    #[test]
    fn random_bytes_after_magic_never_panic(tail in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut file = GGUF_MAGIC.to_vec();
        file.extend_from_slice(&3u32.to_le_bytes());
        file.extend(tail);
        exercise(&file);
    }
}
