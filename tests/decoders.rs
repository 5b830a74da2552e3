//! Latent decoders (TAESD, SD-VAE) against the PyTorch references of `tests/fixtures/gen_vae.py`.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{f32s, fixture_dir, load_st, max_rel_err};
use sparsedit::decoder::{canonical_decoder_tensors, Decoder, DecoderConfig, DecoderOptions, SdVaeConfig, TaesdConfig};
use sparsedit::import::read_checkpoint;
use sparsedit::model::TensorMap;
use sparsedit::Error;

const TOL: f32 = 1e-3;

/// assert_close (failing index in the message), and the error seen, for the log.
fn check(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let (g, w) = (f32s(got), f32s(want));
    eprintln!("{what}: max relative error {:.3e}", max_rel_err(&g, &w));
    common::assert_close(what, &g, &w, tol);
}

fn taesd_map() -> TensorMap {
    read_checkpoint(&fixture_dir("taesd").join("taesd_decoder.pth")).unwrap()
}

fn sdvae_map() -> TensorMap {
    read_checkpoint(&fixture_dir("sdvae").join("diffusion_pytorch_model.safetensors")).unwrap()
}

fn sdvae_opts() -> DecoderOptions {
    DecoderOptions { norm_groups: Some(4), scaling_factor: None }
}

fn decoder(map: TensorMap, opts: &DecoderOptions) -> Decoder {
    let map = canonical_decoder_tensors(map).unwrap();
    let cfg = DecoderConfig::infer(&map, opts).unwrap().expect("a decoder checkpoint");
    Decoder::from_tensors(cfg, map).unwrap()
}

#[test]
fn taesd_matches_the_pytorch_reference() {
    let map = taesd_map();
    let cfg = DecoderConfig::infer(&map, &DecoderOptions::default()).unwrap().unwrap();
    assert_eq!(cfg, DecoderConfig::Taesd(TaesdConfig { latent_channels: 4, width: 16, out_channels: 3 }));
    let dec = Decoder::from_tensors(cfg, map).unwrap();
    let exp = load_st(&fixture_dir("taesd").join("expected.safetensors"));
    let img = dec.decode(&exp["z"]).unwrap();
    assert_eq!(img.dims(), [2, 3, 40, 24]);
    check("taesd image", &img, &exp["image"], TOL);
}

#[test]
fn sdvae_matches_the_pytorch_reference() {
    let map = canonical_decoder_tensors(sdvae_map()).unwrap();
    let cfg = DecoderConfig::infer(&map, &sdvae_opts()).unwrap().unwrap();
    assert_eq!(
        cfg,
        DecoderConfig::SdVae(SdVaeConfig {
            latent_channels: 4,
            out_channels: 3,
            block_out_channels: vec![8, 16, 24, 24],
            layers_per_block: 2,
            norm_num_groups: 4,
            scaling_factor: 0.18215,
        })
    );
    let dec = Decoder::from_tensors(cfg, map).unwrap();
    let exp = load_st(&fixture_dir("sdvae").join("expected.safetensors"));
    let img = dec.decode(&exp["z"]).unwrap();
    assert_eq!(img.dims(), [2, 3, 40, 24]);
    check("sdvae image (5x3 latent)", &img, &exp["image"], TOL);
    let img = dec.decode(&exp["z_sq"]).unwrap();
    assert_eq!(img.dims(), [1, 3, 32, 32]);
    check("sdvae image (4x4 latent)", &img, &exp["image_sq"], TOL);
}

/// The fixture holds the older attention names (as the published sd-vae-ft-* files); the current
/// diffusers names and 1x1-conv-shaped attention weights give the same decoder.
#[test]
fn sdvae_attention_key_variants() {
    let exp = load_st(&fixture_dir("sdvae").join("expected.safetensors"));
    let old = sdvae_map();
    assert!(old.contains_key("decoder.mid_block.attentions.0.query.weight"));
    let renames = [("query", "to_q"), ("key", "to_k"), ("value", "to_v"), ("proj_attn", "to_out.0")];
    let mut new = TensorMap::new();
    for (k, t) in &old {
        let mut name = k.clone();
        let mut t = t.clone();
        for (o, n) in renames {
            let from = format!(".attentions.0.{o}.");
            if name.contains(&from) {
                name = name.replace(&from, &format!(".attentions.0.{n}."));
                if t.rank() == 2 {
                    let (a, b) = t.dims2().unwrap();
                    t = t.reshape((a, b, 1, 1)).unwrap();
                }
            }
        }
        new.insert(name, t);
    }
    assert!(new.contains_key("decoder.mid_block.attentions.0.to_out.0.weight"));
    let a = decoder(old, &sdvae_opts()).decode(&exp["z"]).unwrap();
    let b = decoder(new.clone(), &sdvae_opts()).decode(&exp["z"]).unwrap();
    assert_eq!(f32s(&a), f32s(&b));
    // Both names at once is refused, not silently resolved.
    let mut both = new;
    both.insert("decoder.mid_block.attentions.0.query.weight".into(), Tensor::zeros((24, 24), DType::F32, &Device::Cpu).unwrap());
    assert!(canonical_decoder_tensors(both).is_err());
}

#[test]
fn bad_inputs_are_typed_errors() {
    let dec = decoder(taesd_map(), &DecoderOptions::default());
    let z3 = Tensor::zeros((1, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let e = dec.decode(&z3).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("3 channels"), "{e}");
    let z = Tensor::zeros((4, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(dec.decode(&z).unwrap_err(), Error::InvalidArgument(_)));

    // A missing and a mis-shaped tensor.
    let mut m = taesd_map();
    m.remove("9.conv.2.bias");
    let cfg = DecoderConfig::infer(&m, &DecoderOptions::default()).unwrap().unwrap();
    match Decoder::from_tensors(cfg.clone(), m.clone()) {
        Err(Error::Keys { missing, unexpected }) => assert_eq!((missing, unexpected), (vec!["9.conv.2.bias".to_string()], vec![])),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("accepted a missing tensor"),
    }
    m.insert("9.conv.2.bias".into(), Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap());
    let e = Decoder::from_tensors(cfg.clone(), m.clone()).err().unwrap();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    // An extra layer (e.g. TAEF2's mid-block pools) is reported, not ignored.
    m.insert("9.conv.2.bias".into(), Tensor::zeros(16, DType::F32, &Device::Cpu).unwrap());
    m.insert("3.pool.0.weight".into(), Tensor::zeros((64, 16, 1, 1), DType::F32, &Device::Cpu).unwrap());
    match Decoder::from_tensors(cfg, m) {
        Err(Error::Keys { missing, unexpected }) => assert_eq!((missing.len(), unexpected), (0, vec!["3.pool.0.weight".to_string()])),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("accepted an unexpected tensor"),
    }

    // SD-VAE widths that the default 32 groups do not divide: asks for the group count.
    let map = canonical_decoder_tensors(sdvae_map()).unwrap();
    let e = DecoderConfig::infer(&map, &DecoderOptions::default()).unwrap_err();
    assert!(e.to_string().contains("--norm-groups"), "{e}");
    // A DiT checkpoint is not a decoder.
    let dit = read_checkpoint(&fixture_dir("dit_dense").join("model.pt")).unwrap();
    assert!(DecoderConfig::infer(&dit, &DecoderOptions::default()).unwrap().is_none());
}

// ------------------------------------------------------------------------------------------------
// CLI: convert -> decode round trips, bad input
// ------------------------------------------------------------------------------------------------

mod cli {
    use std::path::{Path, PathBuf};

    use super::*;
    use common::{fails, ok, s, sparsedit};

    fn convert(ckpt: &Path, out: PathBuf, extra: &[&str]) -> PathBuf {
        let mut args = vec!["convert", s(ckpt), "-o", s(&out)];
        args.extend_from_slice(extra);
        let stdout = ok(&args);
        assert!(stdout.contains("wrote") && stdout.contains("max abs err"), "{stdout}");
        out
    }

    fn decode(pack: &Path, case: &str, dir: &Path) -> Tensor {
        decode_on(pack, case, dir, "cpu")
    }

    fn decode_on(pack: &Path, case: &str, dir: &Path, backend: &str) -> Tensor {
        let out = dir.join(format!("{}-{backend}-image.safetensors", pack.file_stem().unwrap().to_str().unwrap()));
        let latents = fixture_dir(case).join("expected.safetensors");
        let run = sparsedit(&["decode", "--decoder", s(pack), "--latents", s(&latents), "--out", s(&out), "--backend", backend]);
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "decode on {backend} failed: {err}");
        assert!(err.contains(&format!("({backend}")), "{err}");
        load_st(&out).remove("image").expect("image")
    }

    /// The CPU always; the GPU when an adapter exists (always in CI).
    use common::backends;

    #[test]
    fn taesd_convert_decode_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let exp = load_st(&fixture_dir("taesd").join("expected.safetensors"));
        let pth = fixture_dir("taesd").join("taesd_decoder.pth");
        let pack = convert(&pth, dir.path().join("taesd.gguf"), &[]);
        for backend in backends() {
            let img = decode_on(&pack, "taesd", dir.path(), backend);
            assert_eq!(img.dims(), [2, 3, 40, 24]);
            check(&format!("taesd via pack on {backend}"), &img, &exp["image"], TOL);
        }
        // --repeats: timed decodes with the weights loaded; the image is the first decode's.
        let latents = fixture_dir("taesd").join("expected.safetensors");
        for backend in backends() {
            let out = dir.path().join(format!("repeats-{backend}.safetensors"));
            let run = sparsedit(&["decode", "--decoder", s(&pack), "--latents", s(&latents), "--out", s(&out), "--backend", backend, "--repeats", "2"]);
            let err = String::from_utf8_lossy(&run.stderr);
            assert!(run.status.success() && err.contains("(median of 2 runs)"), "{err}");
            check(&format!("taesd --repeats 2 on {backend}"), &load_st(&out)["image"], &exp["image"], TOL);
        }
        let info = ok(&["info", s(&pack)]);
        assert!(info.contains("taesd") && info.contains("width: 16"), "{info}");

        // The .safetensors form of the same state dict, and an F16 pack (the published weights
        // are float16, so F16 conv weights lose nothing).
        let st = dir.path().join("taesd_decoder.safetensors");
        candle_core::safetensors::save(&taesd_map(), &st).unwrap();
        let pack16 = convert(&st, dir.path().join("taesd-f16.gguf"), &["--quant", "f16"]);
        let img = decode(&pack16, "taesd", dir.path());
        check("taesd via f16 pack", &img, &exp["image"], TOL);
        assert!(std::fs::metadata(&pack16).unwrap().len() < std::fs::metadata(&pack).unwrap().len() * 6 / 10);

        // A png alongside.
        let png = dir.path().join("t.png");
        let out = dir.path().join("t.safetensors");
        let latents = fixture_dir("taesd").join("expected.safetensors");
        ok(&["decode", "--decoder", s(&pth), "--latents", s(&latents), "--out", s(&out), "--png", s(&png), "--backend", "cpu"]);
        assert!(std::fs::metadata(&png).unwrap().len() > 100);
    }

    #[test]
    fn sdvae_convert_decode_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let exp = load_st(&fixture_dir("sdvae").join("expected.safetensors"));
        let ckpt = fixture_dir("sdvae").join("diffusion_pytorch_model.safetensors");
        // norm_num_groups comes from the diffusers config.json next to the checkpoint.
        let pack = convert(&ckpt, dir.path().join("sdvae.gguf"), &[]);
        for backend in backends() {
            let img = decode_on(&pack, "sdvae", dir.path(), backend);
            check(&format!("sdvae via pack on {backend}"), &img, &exp["image"], TOL);
        }
        let info = ok(&["info", s(&pack)]);
        assert!(info.contains("sdvae") && info.contains("norm groups: 4"), "{info}");
        // The pack holds the decoder only, under the current attention names.
        let g = std::fs::read(&pack).unwrap();
        let h = sparsedit::gguf::Gguf::parse(&g).unwrap().header;
        assert!(h.tensors.iter().all(|t| t.name.starts_with("decoder.") || t.name.starts_with("post_quant_conv.")));
        assert!(h.tensor("decoder.mid_block.attentions.0.to_q.weight").is_some());

        // q8_0: conv weights F16, the (24-wide) attention weights F16 too: close, not exact.
        let pack8 = convert(&ckpt, dir.path().join("sdvae-q8.gguf"), &["--quant", "q8_0"]);
        let img = decode(&pack8, "sdvae", dir.path());
        common::assert_close_to_scale("sdvae via q8_0 pack", &f32s(&img), &f32s(&exp["image"]), 1e-2);

        // Without config.json the group count must be given.
        let lone = dir.path().join("diffusion_pytorch_model.safetensors");
        std::fs::copy(&ckpt, &lone).unwrap();
        let err = fails(&["convert", s(&lone), "-o", s(&dir.path().join("x.gguf"))]);
        assert!(err.contains("--norm-groups"), "{err}");
        let pack = convert(&lone, dir.path().join("sdvae-flag.gguf"), &["--norm-groups", "4"]);
        check("sdvae via --norm-groups", &decode(&pack, "sdvae", dir.path()), &exp["image"], TOL);
    }

    #[test]
    fn sample_with_decoder_writes_decoded_images() {
        // A latent DiT (fixture dit_dense: 4 channels, 8x8) and the TAESD fixture: `sample
        // --decoder --out` must write exactly what `decode --png` makes of `--latent-out`.
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("dit.gguf");
        ok(&["convert", s(&fixture_dir("dit_dense").join("model.pt")), "--heads", "4", "-o", s(&model)]);
        let taesd = convert(&fixture_dir("taesd").join("taesd_decoder.pth"), dir.path().join("taesd.gguf"), &[]);
        let (png, z) = (dir.path().join("s.png"), dir.path().join("z.safetensors"));
        let args = ["sample", "--model", s(&model), "--class", "3", "--num", "2", "--steps", "3", "--backend", "cpu"];
        let out = sparsedit(&[&args[..], &["--decoder", s(&taesd), "--out", s(&png), "--latent-out", s(&z)]].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("decoded with taesd"));
        let png2 = dir.path().join("d.png");
        ok(&["decode", "--decoder", s(&taesd), "--latents", s(&z), "--out", s(&dir.path().join("i.safetensors")), "--png", s(&png2), "--backend", "cpu"]);
        let (a, b) = (std::fs::read(&png).unwrap(), std::fs::read(&png2).unwrap());
        assert_eq!(a, b, "sample --decoder and decode give different PNGs");
        let img = image::load_from_memory(&a).unwrap();
        assert_eq!((img.width(), img.height()), (2 * 64, 64), "two 64x64 images side by side");
        // A decoder for another latent width, or a file that is no decoder: one-line errors.
        let err = fails(&["sample", "--model", "web/models/dit-tiny-q8_0.gguf", "--class", "1", "--steps", "2", "--decoder", s(&taesd), "--out", s(&png)]);
        assert!(err.contains("latent channels"), "{err}");
        let err = fails(&[&args[..], &["--decoder", s(&model), "--out", s(&png)]].concat());
        assert!(err.contains("not a latent decoder"), "{err}");
    }

    #[test]
    fn decode_refuses_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pack = convert(&fixture_dir("taesd").join("taesd_decoder.pth"), d.join("taesd.gguf"), &[]);
        let out = d.join("o.safetensors");

        // Wrong latent channels.
        let z3 = d.join("z3.safetensors");
        let t = Tensor::zeros((1, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&[("z".to_string(), t)].into_iter().collect(), &z3).unwrap();
        let err = fails(&["decode", "--decoder", s(&pack), "--latents", s(&z3), "--out", s(&out), "--backend", "cpu"]);
        assert!(err.contains("3 channels"), "{err}");
        // No z.
        let none = d.join("none.safetensors");
        let t = Tensor::zeros((1, 4, 4, 4), DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&[("x".to_string(), t)].into_iter().collect(), &none).unwrap();
        let err = fails(&["decode", "--decoder", s(&pack), "--latents", s(&none), "--out", s(&out), "--backend", "cpu"]);
        assert!(err.contains("'z'"), "{err}");

        let latents = fixture_dir("taesd").join("expected.safetensors");
        let dec = |p: &Path| fails(&["decode", "--decoder", s(p), "--latents", s(&latents), "--out", s(&out), "--backend", "cpu"]);
        // Corrupt packs: truncated, and a flipped metadata value.
        let bytes = std::fs::read(&pack).unwrap();
        let cut = d.join("cut.gguf");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = dec(&cut);
        assert!(err.contains("invalid GGUF"), "{err}");
        let garbage = d.join("garbage.gguf");
        std::fs::write(&garbage, b"not a pack at all").unwrap();
        dec(&garbage);
        // A pack whose metadata width disagrees with its tensors.
        let mut bad = bytes.clone();
        let key = b"taesd.width";
        let pos = bad.windows(key.len()).position(|w| w == key).unwrap() + key.len();
        // value type (u32 = 4) then the value.
        assert_eq!(u32::from_le_bytes(bad[pos..pos + 4].try_into().unwrap()), 4);
        bad[pos + 4..pos + 8].copy_from_slice(&32u32.to_le_bytes());
        let wrong = d.join("wrong.gguf");
        std::fs::write(&wrong, &bad).unwrap();
        let err = dec(&wrong);
        assert!(err.contains("expected shape"), "{err}");

        // A DiT pack (and a DiT checkpoint) as decoder; a decoder pack as DiT model.
        let cfg = common::fixture_config("dit_dense");
        let dit = d.join("dit.gguf");
        ok(&["convert", s(&fixture_dir("dit_dense").join("model.pt")), "-o", s(&dit), "--heads", &cfg.num_heads.to_string()]);
        let err = dec(&dit);
        assert!(err.contains("not a latent decoder"), "{err}");
        let err = dec(&fixture_dir("dit_dense").join("model.pt"));
        assert!(err.contains("not a latent decoder"), "{err}");
        let inputs = fixture_dir("dit_dense").join("inputs.safetensors");
        let err = fails(&["forward", "--model", s(&pack), "--inputs", s(&inputs), "--out", s(&out), "--backend", "cpu"]);
        assert!(err.contains("latent decoder"), "{err}");
        // Missing file.
        dec(&d.join("nope.gguf"));
    }
}

// ------------------------------------------------------------------------------------------------
// GPU (WGSL) decoders against the CPU reference and the fixtures
// ------------------------------------------------------------------------------------------------

mod gpu {
    use super::*;
    use common::{gpu_or_skip, random_nonzero};
    use sparsedit::gpu::decoder::GpuDecoder;

    fn run(g: &sparsedit::gpu::Gpu, cfg: &DecoderConfig, map: &TensorMap, z: &Tensor) -> Tensor {
        let dec = GpuDecoder::load(g, cfg.clone(), map.clone()).unwrap();
        let (b, _, h, w) = z.dims4().unwrap();
        let plan = dec.plan(g, b, h, w).unwrap();
        let out = dec.decode(g, &plan, &f32s(z)).unwrap();
        let shape = cfg.output_shape(z.dims()).unwrap();
        Tensor::from_vec(out, &shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn gpu_taesd_matches_cpu_and_pytorch() {
        let Some(g) = gpu_or_skip() else { return };
        let map = taesd_map();
        let cfg = DecoderConfig::infer(&map, &DecoderOptions::default()).unwrap().unwrap();
        let exp = load_st(&fixture_dir("taesd").join("expected.safetensors"));
        let img = run(&g, &cfg, &map, &exp["z"]);
        check("gpu taesd vs pytorch", &img, &exp["image"], TOL);
        let cpu = Decoder::from_tensors(cfg, map).unwrap().decode(&exp["z"]).unwrap();
        check("gpu taesd vs cpu", &img, &cpu, TOL);
    }

    /// Weights of an f16 pack stay f16 on the GPU (conv kernels: half the bytes) and decode as
    /// the CPU does with the same weights; f32 weights stay f32.
    #[test]
    fn gpu_decoders_keep_f16_conv_weights() {
        let Some(g) = gpu_or_skip() else { return };
        for (arch, map, opts) in [("taesd", taesd_map(), DecoderOptions::default()), ("sdvae", canonical_decoder_tensors(sdvae_map()).unwrap(), sdvae_opts())] {
            let cfg = DecoderConfig::infer(&map, &opts).unwrap().unwrap();
            // The fixtures' weights may already be f16 values: scale them off that grid for f32.
            let f32: TensorMap = map.iter().map(|(k, t)| (k.clone(), (t * 1.000_123).unwrap())).collect();
            let f16: TensorMap = map.iter().map(|(k, t)| (k.clone(), t.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap())).collect();
            let convs = map.values().filter(|t| t.rank() >= 2).count();
            let (bytes32, n32) = GpuDecoder::load(&g, cfg.clone(), f32).unwrap().weight_bytes();
            let (bytes16, n16) = GpuDecoder::load(&g, cfg.clone(), f16.clone()).unwrap().weight_bytes();
            assert_eq!((n32, n16), (0, convs), "{arch}: f16 conv kernels of f32 / f16 weights");
            let conv_bytes: usize = map.values().filter(|t| t.rank() >= 2).map(|t| t.elem_count() * 4).sum();
            assert!(bytes16 <= bytes32 - conv_bytes / 2 + 4 * convs, "{arch}: {bytes16} vs {bytes32} bytes");
            let z = Tensor::from_vec(random_nonzero(8, 2 * cfg.latent_channels() * 3 * 5, 1.0), (2, cfg.latent_channels(), 3, 5), &Device::Cpu).unwrap();
            let cpu = Decoder::from_tensors(cfg.clone(), f16.clone()).unwrap().decode(&z).unwrap();
            check(&format!("gpu {arch} with f16 weights vs cpu"), &run(&g, &cfg, &f16, &z), &cpu, TOL);
        }
    }

    /// `decode_reusing` records a plan once per (batch, h, w) and decodes as a fresh plan does.
    #[test]
    fn gpu_decoder_reuses_its_plan_while_sizes_stay() {
        let Some(g) = gpu_or_skip() else { return };
        let map = taesd_map();
        let cfg = DecoderConfig::infer(&map, &DecoderOptions::default()).unwrap().unwrap();
        let dec = GpuDecoder::load(&g, cfg.clone(), map).unwrap();
        let z = random_nonzero(12, 2 * 4 * 3 * 5, 1.0);
        let fresh = dec.decode(&g, &dec.plan(&g, 2, 3, 5).unwrap(), &z).unwrap();
        assert_eq!(dec.plans_built(), 1);
        for _ in 0..3 {
            assert_eq!(dec.decode_reusing(&g, 2, 3, 5, &z).unwrap(), fresh);
        }
        assert_eq!(dec.plans_built(), 2, "one more plan for three decodes of one size");
        let other = random_nonzero(13, 4 * 4 * 4, 1.0);
        assert_eq!(dec.decode_reusing(&g, 1, 4, 4, &other).unwrap(), dec.decode(&g, &dec.plan(&g, 1, 4, 4).unwrap(), &other).unwrap());
        assert_eq!(dec.plans_built(), 4, "another size, another plan");
        assert!(dec.decode_reusing(&g, 1, 4, 4, &z).is_err(), "a latent of the wrong length is an error");
    }

    /// A width that is not a multiple of the kernel's 16-channel blocks, 3 latent channels, a
    /// latent wider than one 8x8 tile.
    #[test]
    fn gpu_taesd_random_widths_match_cpu() {
        let Some(g) = gpu_or_skip() else { return };
        let mut map = TensorMap::new();
        let (lc, wd) = (3usize, 24usize);
        for (i, (name, shape)) in taesd_map().into_iter().map(|(k, t)| (k, t.dims().to_vec())).collect::<std::collections::BTreeMap<_, _>>().into_iter().enumerate() {
            let mut shape = shape;
            for d in shape.iter_mut().take(2) {
                if *d == 16 {
                    *d = wd;
                } else if *d == 4 {
                    *d = lc;
                }
            }
            let n: usize = shape.iter().product();
            let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
            let amp = if shape.len() == 4 { 2.2 / (fan_in as f32).sqrt() } else { 0.1 };
            map.insert(name, Tensor::from_vec(random_nonzero(100 + i as u64, n, amp), shape, &Device::Cpu).unwrap());
        }
        let cfg = DecoderConfig::infer(&map, &DecoderOptions::default()).unwrap().unwrap();
        assert_eq!(cfg, DecoderConfig::Taesd(TaesdConfig { latent_channels: lc, width: wd, out_channels: 3 }));
        let z = Tensor::from_vec(random_nonzero(7, 2 * lc * 9 * 11, 4.0), (2, lc, 9, 11), &Device::Cpu).unwrap();
        let img = run(&g, &cfg, &map, &z);
        let cpu = Decoder::from_tensors(cfg, map).unwrap().decode(&z).unwrap();
        check("gpu taesd (width 24, 9x11) vs cpu", &img, &cpu, TOL);
    }

    #[test]
    fn gpu_sdvae_matches_cpu_and_pytorch() {
        let Some(g) = gpu_or_skip() else { return };
        let map = canonical_decoder_tensors(sdvae_map()).unwrap();
        let cfg = DecoderConfig::infer(&map, &sdvae_opts()).unwrap().unwrap();
        let exp = load_st(&fixture_dir("sdvae").join("expected.safetensors"));
        let img = run(&g, &cfg, &map, &exp["z"]);
        check("gpu sdvae vs pytorch", &img, &exp["image"], TOL);
        let img = run(&g, &cfg, &map, &exp["z_sq"]);
        check("gpu sdvae (4x4) vs pytorch", &img, &exp["image_sq"], TOL);
        let cpu = Decoder::from_tensors(cfg, map).unwrap().decode(&exp["z_sq"]).unwrap();
        check("gpu sdvae vs cpu", &img, &cpu, TOL);
    }
}

/// The published sizes (TAESD width 64; SD-VAE (128, 256, 512, 512), 32 groups, 49.5 M
/// parameters) with random weights, an 8x8 latent (64 px): the decoders run at full width, the
/// parameter counts are the published ones, and the GPU matches the CPU. Slow on a CPU adapter:
/// `cargo test --release --test decoders full_size -- --ignored --nocapture`.
#[test]
#[ignore]
fn full_size_decoders() {
    use sparsedit::gpu::decoder::GpuDecoder;
    // The presets `sparsedit random-pack` writes; parameter counts: TAESD 2368 + 10 x 3 x 36928
    // + 3 x 36864 + 1731; the SD-VAE from diffusers (decoder.* + post_quant_conv.* of
    // AutoencoderKL with the SD config).
    let cases = [("taesd", 1_222_531usize), ("sdvae", 49_490_199)].map(|(name, params)| {
        let cfg = DecoderConfig::preset(name).unwrap();
        let full = cfg.random_tensors(7).unwrap();
        (cfg, full, params)
    });
    let gpu = common::gpu_or_skip();
    for (cfg, full, want_params) in cases {
        let params: usize = full.values().map(|t| t.elem_count()).sum();
        eprintln!("{}: {params} parameters", cfg.arch_name());
        assert_eq!(params, want_params);
        let z = Tensor::from_vec(common::random_nonzero(3, 4 * 8 * 8, 1.0), (1, 4, 8, 8), &Device::Cpu).unwrap();
        let t = std::time::Instant::now();
        let cpu = Decoder::from_tensors(cfg.clone(), full.clone()).unwrap().decode(&z).unwrap();
        eprintln!("{}: cpu {:.2} s", cfg.arch_name(), t.elapsed().as_secs_f64());
        assert_eq!(cpu.dims(), [1, 3, 64, 64]);
        if let Some(g) = &gpu {
            let dec = GpuDecoder::load(g, cfg.clone(), full).unwrap();
            let plan = dec.plan(g, 1, 8, 8).unwrap();
            let t = std::time::Instant::now();
            let out = dec.decode(g, &plan, &f32s(&z)).unwrap();
            eprintln!("{}: gpu {:.2} s ({})", cfg.arch_name(), t.elapsed().as_secs_f64(), g.describe());
            check(&format!("{} full size gpu vs cpu", cfg.arch_name()), &Tensor::from_vec(out, (1, 3, 64, 64), &Device::Cpu).unwrap(), &cpu, TOL);
        }
    }
}

/// `conv2d.wgsl`'s barrier-free entry (software adapters) against its tiled one, on random
/// inputs: every kernel size, the fused upsample / clamp, bias, residual and activations, and
/// channel counts that leave a partial 16-channel block and partial 8x8 tiles.
#[test]
fn direct_conv_entry_matches_tiled() {
    use rand::{Rng, SeedableRng};
    use sparsedit::gpu::ops::conv::{conv2d_with, Act, ConvKernel, ConvShape, ConvWeight};
    let Some(gpu) = common::gpu_or_skip() else { return };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.5f32..1.5)).collect() };
    let mut cases = 0;
    for (k, upsample, clamp_input, act, with_bias, with_res) in [
        (3, false, false, Act::None, true, false),
        (3, true, false, Act::Relu, true, true),
        (3, false, true, Act::Silu, false, true),
        (1, false, false, Act::None, false, false),
        (1, true, true, Act::Relu, true, true),
    ] {
        let s = ConvShape { batch: 2, cin: 5, cout: 21, h: 10, w: 14, k, upsample, clamp_input, act };
        let up = usize::from(upsample);
        let x = gpu.upload("x", &random(s.batch * s.cin * (s.h >> up) * (s.w >> up))).unwrap();
        // f16-exact weights (an odd count: the last u32 holds one f16), so the f16 storage
        // must give the f32 result exactly, through either entry.
        let wv: Vec<f32> = random(s.cout * s.cin * k * k).into_iter().map(|v| half::f16::from_f32(v).to_f32()).collect();
        assert!(ConvWeight::fits_f16(&wv));
        let w = ConvWeight::f32(&gpu, "w", &wv).unwrap();
        let w16 = ConvWeight::f16(&gpu, "w16", &wv).unwrap();
        assert_eq!(w16.buf.len, wv.len().div_ceil(2));
        let bias = gpu.upload("bias", &random(s.cout)).unwrap();
        let res = gpu.upload("res", &random(s.batch * s.cout * s.h * s.w)).unwrap();
        let mut outs = Vec::new();
        for (kind, weight) in [(ConvKernel::Tiled, &w), (ConvKernel::Direct, &w), (ConvKernel::Tiled, &w16), (ConvKernel::Direct, &w16)] {
            let out = gpu.zeros("out", s.batch * s.cout * s.h * s.w).unwrap();
            let d = conv2d_with(&gpu, "conv", &s, &x, weight, with_bias.then_some(&bias), with_res.then_some(&res), &out, kind).unwrap();
            gpu.run(&[d]).unwrap();
            outs.push(gpu.read(&out).unwrap());
        }
        common::assert_close(&format!("{s:?} bias {with_bias} res {with_res}: direct vs tiled"), &outs[1], &outs[0], 1e-5);
        assert_eq!(outs[2], outs[0], "{s:?}: f16-stored weights, tiled");
        assert_eq!(outs[3], outs[1], "{s:?}: f16-stored weights, direct");
        cases += 1;
    }
    assert_eq!(cases, 5);
    // Long reductions (the SD-VAE's 512 channels x 9 taps): lavapipe (LLVM 15) once miscompiled
    // the direct entry's inner loop with a data-dependent trip count into partial sums here.
    for (cin, cout, k) in [(512usize, 21usize, 3usize), (4000, 16, 1)] {
        let s = ConvShape { batch: 1, cin, cout, h: 8, w: 8, k, upsample: false, clamp_input: false, act: Act::None };
        let x = gpu.upload("x", &random(cin * 64)).unwrap();
        let w = ConvWeight::f32(&gpu, "w", &random(cout * cin * k * k)).unwrap();
        let mut outs = Vec::new();
        for kind in [ConvKernel::Tiled, ConvKernel::Direct] {
            let out = gpu.zeros("out", cout * 64).unwrap();
            gpu.run(&[conv2d_with(&gpu, "conv", &s, &x, &w, None, None, &out, kind).unwrap()]).unwrap();
            outs.push(gpu.read(&out).unwrap());
        }
        common::assert_close(&format!("{cin} -> {cout}, k {k}: direct vs tiled"), &outs[1], &outs[0], 1e-5);
    }
}

