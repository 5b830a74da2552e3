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
