//! Latent decoders on the CPU (candle-core, f32): TAESD and the SD-VAE decoder (diffusers'
//! `AutoencoderKL`), the reference the GPU path is checked against, itself checked against
//! PyTorch fixtures (`tests/fixtures/gen_vae.py`).
//!
//! (Over 700 lines on purpose: the two decoders share their conv, norm, attention and weight
//! naming code, and their configs and checkpoint-name canonicalisation belong with them.)
//!
//! Both take the DiT latent as sampled, z (B, 4, h, w), and return the decoder's raw image
//! (B, 3, 8h, 8w) before clamping: TAESD decodes z directly (its output is in [0, 1]); the
//! SD-VAE decodes z / scaling_factor (0.18215; its output is in [-1, 1]).
//!
//! Weights keep the published names:
//! - TAESD (`taesd_decoder.pth` / `.safetensors`, madebyollin/taesd): the decoder's
//!   `nn.Sequential` state dict, `1.weight`, `3.conv.0.weight`, ..., `19.bias`.
//! - SD-VAE (`diffusion_pytorch_model.safetensors` of sd-vae-ft-ema / -mse): `post_quant_conv.*`
//!   and `decoder.*`; the mid-block attention as `to_q / to_k / to_v / to_out.0` (older files:
//!   `query / key / value / proj_attn`, renamed on import by [`canonical_decoder_tensors`]).
//!
//! Shapes: B = batch, C = channels, h x w = the latent grid, H x W = the current feature map.

use candle_core::{DType, Tensor, D};

use crate::error::{Error, Result};
use crate::gguf::{GgufHeader, MetaValue};
use crate::model::{Linear, TensorMap, WeightLoader};

/// The SD-VAE's latent scaling factor (the DiT latent is z = 0.18215 * VAE latent).
pub const SD_SCALING_FACTOR: f64 = 0.18215;
/// GroupNorm eps of every norm in diffusers' VAE decoder.
const GN_EPS: f64 = 1e-6;
/// SD's GroupNorm group count, the default when a checkpoint does not say.
pub const SD_NORM_GROUPS: usize = 32;

/// TAESD decoder: the published layer sequence; width 64 and 4 latent channels for SD.
#[derive(Clone, Debug, PartialEq)]
pub struct TaesdConfig {
    pub latent_channels: usize,
    pub width: usize,
    pub out_channels: usize,
}

/// SD-VAE decoder (diffusers `AutoencoderKL` with `UpDecoderBlock2D`s and a mid-block attention).
#[derive(Clone, Debug, PartialEq)]
pub struct SdVaeConfig {
    pub latent_channels: usize,
    pub out_channels: usize,
    /// As in diffusers' config, encoder order: SD has [128, 256, 512, 512]; the decoder runs it
    /// reversed.
    pub block_out_channels: Vec<usize>,
    /// Resnets per up block minus one (SD: 2, i.e. 3 resnets per up block).
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    /// The decoder input is latent / scaling_factor.
    pub scaling_factor: f64,
}

/// Which decoder, and its sizes.
#[derive(Clone, Debug, PartialEq)]
pub enum DecoderConfig {
    Taesd(TaesdConfig),
    SdVae(SdVaeConfig),
}

/// What tensor shapes cannot tell about an SD-VAE checkpoint (diffusers' `config.json` says it).
#[derive(Clone, Debug, Default)]
pub struct DecoderOptions {
    /// GroupNorm groups; default 32 (SD).
    pub norm_groups: Option<usize>,
    /// Latent scaling factor; default 0.18215 (SD).
    pub scaling_factor: Option<f64>,
}

/// The TAESD layer indices of the published `Decoder` (`nn.Sequential`), in order.
#[derive(Clone, Copy, Debug)]
enum TaesdLayer {
    Clamp,
    Conv { bias: bool },
    Relu,
    Block,
    Upsample,
}

#[rustfmt::skip]
fn taesd_layers() -> Vec<TaesdLayer> {
    use TaesdLayer::*;
    let up = Conv { bias: false };
    vec![
        Clamp, Conv { bias: true }, Relu, // 0 1 2
        Block, Block, Block, Upsample, up, // 3 4 5 6 7
        Block, Block, Block, Upsample, up, // 8 9 10 11 12
        Block, Block, Block, Upsample, up, // 13 14 15 16 17
        Block, Conv { bias: true }, // 18 19
    ]
}

impl DecoderConfig {
    /// `general.architecture` of its pack.
    pub fn arch_name(&self) -> &'static str {
        match self {
            DecoderConfig::Taesd(_) => "taesd",
            DecoderConfig::SdVae(_) => "sdvae",
        }
    }

    pub fn latent_channels(&self) -> usize {
        match self {
            DecoderConfig::Taesd(c) => c.latent_channels,
            DecoderConfig::SdVae(c) => c.latent_channels,
        }
    }

    pub fn out_channels(&self) -> usize {
        match self {
            DecoderConfig::Taesd(c) => c.out_channels,
            DecoderConfig::SdVae(c) => c.out_channels,
        }
    }

    /// Spatial upscaling factor (8 for both published decoders).
    pub fn upscale(&self) -> usize {
        match self {
            DecoderConfig::Taesd(_) => 8,
            DecoderConfig::SdVae(c) => 1 << c.block_out_channels.len().saturating_sub(1),
        }
    }

    /// Factor applied to the sampled latent before decoding (1 / scaling_factor for the SD-VAE).
    pub fn input_scale(&self) -> f64 {
        match self {
            DecoderConfig::Taesd(_) => 1.0,
            DecoderConfig::SdVae(c) => 1.0 / c.scaling_factor,
        }
    }

    /// The affine map (a, b) taking the decoder's raw output to [-1, 1] as a * v + b: TAESD's
    /// output is in [0, 1], the SD-VAE's already in [-1, 1].
    pub fn to_signed_range(&self) -> (f64, f64) {
        match self {
            DecoderConfig::Taesd(_) => (2.0, -1.0),
            DecoderConfig::SdVae(_) => (1.0, 0.0),
        }
    }

    /// The image shape for a latent shape, after checking the latent.
    pub fn output_shape(&self, latent: &[usize]) -> Result<[usize; 4]> {
        let want = self.latent_channels();
        match *latent {
            [b, c, h, w] if c == want && b > 0 && h > 0 && w > 0 => {
                let s = self.upscale();
                Ok([b, self.out_channels(), h * s, w * s])
            }
            [_, c, _, _] if c != want => Err(Error::arg(format!(
                "the latent has {c} channels, the {} decoder takes {want}",
                self.arch_name()
            ))),
            _ => Err(Error::arg(format!(
                "the latent must be (B, {want}, h, w) with B, h, w >= 1, got {latent:?}"
            ))),
        }
    }

    /// The published decoders: `taesd` (width 64, 1.22 M parameters) and `sdvae`
    /// (sd-vae-ft-ema / -mse: block widths 128, 256, 512, 512; 49.5 M parameters).
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "taesd" => Ok(DecoderConfig::Taesd(TaesdConfig { latent_channels: 4, width: 64, out_channels: 3 })),
            "sdvae" | "sd-vae" => Ok(DecoderConfig::SdVae(SdVaeConfig {
                latent_channels: 4,
                out_channels: 3,
                block_out_channels: vec![128, 256, 512, 512],
                layers_per_block: 2,
                norm_num_groups: SD_NORM_GROUPS,
                scaling_factor: SD_SCALING_FACTOR,
            })),
            _ => Err(Error::arg(format!("unknown decoder preset {name:?} (taesd, sdvae)"))),
        }
    }

    /// The (name, shape) of every tensor this decoder loads, canonical names, in load order.
    pub fn expected_tensors(&self) -> Result<Vec<(String, Vec<usize>)>> {
        self.validate()?;
        let mut w = WeightLoader::new(TensorMap::new());
        match self {
            DecoderConfig::Taesd(c) => drop(Taesd::load(&mut w, c)),
            DecoderConfig::SdVae(c) => drop(SdVae::load(&mut w, c)?),
        }
        Ok(w.expected())
    }

    /// Seeded random weights with every expected name and shape: conv / linear weights with
    /// unit gain (normal, std 1 / sqrt(fan-in)), norm scales near 1, small biases. For full-size
    /// tests and benchmarks without the published files.
    pub fn random_tensors(&self, seed: u64) -> Result<TensorMap> {
        let mut rng = crate::diffusion::SeededNoise::new(seed);
        let mut map = TensorMap::new();
        for (name, shape) in self.expected_tensors()? {
            let n: usize = shape.iter().product();
            let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
            let (amp, base) = match shape.len() {
                1 if name.contains("norm") && name.ends_with("weight") => (0.2, 1.0),
                1 => (0.1, 0.0),
                _ => (1.0 / (fan_in as f32).sqrt(), 0.0),
            };
            let v: Vec<f32> = rng.normal(n).into_iter().map(|x| base + amp * x).collect();
            map.insert(name, candle_core::Tensor::from_vec(v, shape, &candle_core::Device::Cpu)?);
        }
        Ok(map)
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            DecoderConfig::Taesd(c) => {
                if c.latent_channels == 0 || c.width == 0 || c.out_channels == 0 {
                    return Err(Error::arch(format!("TAESD sizes must be positive: {c:?}")));
                }
            }
            DecoderConfig::SdVae(c) => {
                if c.latent_channels == 0 || c.out_channels == 0 || c.block_out_channels.is_empty() || c.block_out_channels.len() > 8 {
                    return Err(Error::arch(format!("SD-VAE sizes out of range: {c:?}")));
                }
                if c.norm_num_groups == 0 || c.block_out_channels.iter().any(|&ch| ch == 0 || ch % c.norm_num_groups != 0) {
                    return Err(Error::arch(format!(
                        "SD-VAE: every block width {:?} must be a positive multiple of the {} norm groups (give the group count: --norm-groups)",
                        c.block_out_channels, c.norm_num_groups
                    )));
                }
                if !(c.scaling_factor.is_finite() && c.scaling_factor > 0.0) {
                    return Err(Error::arch(format!("SD-VAE scaling factor {} must be positive", c.scaling_factor)));
                }
            }
        }
        Ok(())
    }

    /// Architecture as GGUF metadata.
    pub fn metadata(&self, name: &str) -> Vec<(String, MetaValue)> {
        let a = self.arch_name();
        let u = |v: usize| MetaValue::U32(v as u32);
        let mut m = vec![
            ("general.architecture".to_string(), MetaValue::String(a.to_string())),
            ("general.name".to_string(), MetaValue::String(name.to_string())),
            (format!("{a}.latent_channels"), u(self.latent_channels())),
            (format!("{a}.out_channels"), u(self.out_channels())),
        ];
        match self {
            DecoderConfig::Taesd(c) => m.push((format!("{a}.width"), u(c.width))),
            DecoderConfig::SdVae(c) => {
                m.push((format!("{a}.block_out_channels"), MetaValue::Array(c.block_out_channels.iter().map(|&v| u(v)).collect())));
                m.push((format!("{a}.layers_per_block"), u(c.layers_per_block)));
                m.push((format!("{a}.norm_num_groups"), u(c.norm_num_groups)));
                m.push((format!("{a}.scaling_factor"), MetaValue::F64(c.scaling_factor)));
            }
        }
        m
    }

    /// Read a decoder's architecture back from a pack's metadata.
    pub fn from_header(h: &GgufHeader) -> Result<Self> {
        let arch = h
            .meta("general.architecture")
            .and_then(MetaValue::as_str)
            .ok_or_else(|| Error::gguf("no general.architecture: not a sparsedit pack"))?
            .to_string();
        if arch != "taesd" && arch != "sdvae" {
            return Err(Error::gguf(format!("architecture {arch:?} is not a latent decoder ('taesd' or 'sdvae')")));
        }
        let small = |v: u64| (v <= 1 << 16).then_some(v as usize);
        let num = |key: &str| -> Result<usize> {
            let k = format!("{arch}.{key}");
            h.meta(&k)
                .and_then(MetaValue::as_u64)
                .and_then(small)
                .ok_or_else(|| Error::gguf(format!("metadata {k} is missing or not an integer")))
        };
        let cfg = if arch == "taesd" {
            DecoderConfig::Taesd(TaesdConfig {
                latent_channels: num("latent_channels")?,
                width: num("width")?,
                out_channels: num("out_channels")?,
            })
        } else {
            let k = format!("{arch}.block_out_channels");
            let bad = || Error::gguf(format!("metadata {k} must be an array of integers"));
            let arr = h.meta(&k).and_then(MetaValue::as_array).ok_or_else(bad)?;
            let block_out_channels = arr.iter().map(|v| v.as_u64().and_then(small).ok_or_else(bad)).collect::<Result<Vec<_>>>()?;
            let ks = format!("{arch}.scaling_factor");
            DecoderConfig::SdVae(SdVaeConfig {
                latent_channels: num("latent_channels")?,
                out_channels: num("out_channels")?,
                block_out_channels,
                layers_per_block: num("layers_per_block")?,
                norm_num_groups: num("norm_num_groups")?,
                scaling_factor: h.meta(&ks).and_then(MetaValue::as_f64).ok_or_else(|| Error::gguf(format!("metadata {ks} is missing or not a number")))?,
            })
        };
        cfg.validate().map_err(|e| Error::gguf(format!("inconsistent decoder architecture in metadata: {e}")))?;
        Ok(cfg)
    }

    /// The decoder a checkpoint holds, read off its (canonical, see [`canonical_decoder_tensors`])
    /// names and shapes; `None` when it is not a decoder state dict.
    pub fn infer(map: &TensorMap, opts: &DecoderOptions) -> Result<Option<Self>> {
        let dims = |name: &str| -> Result<&[usize]> {
            map.get(name).map(|t| t.dims()).ok_or_else(|| Error::Keys { missing: vec![name.to_string()], unexpected: vec![] })
        };
        let cfg = if is_taesd(map) {
            let first = dims("1.weight")?;
            let last = dims("19.weight")?;
            if first.len() != 4 || last.len() != 4 {
                return Err(Error::arch(format!("TAESD: 1.weight {first:?} / 19.weight {last:?} are not conv weights")));
            }
            DecoderConfig::Taesd(TaesdConfig { latent_channels: first[1], width: first[0], out_channels: last[0] })
        } else if is_sdvae(map) {
            let conv_in = dims("decoder.conv_in.weight")?;
            let conv_out = dims("decoder.conv_out.weight")?;
            if conv_in.len() != 4 || conv_out.len() != 4 {
                return Err(Error::arch(format!("SD-VAE: conv_in {conv_in:?} / conv_out {conv_out:?} are not conv weights")));
            }
            let ups = indices(map, "decoder.up_blocks");
            let n = contiguous(&ups, "decoder.up_blocks")?;
            let resnets = contiguous(&indices(map, "decoder.up_blocks.0.resnets"), "decoder.up_blocks.0.resnets")?;
            if n == 0 || resnets == 0 {
                return Err(Error::arch("SD-VAE: no up blocks / resnets found under decoder.up_blocks"));
            }
            // up block i outputs block_out_channels reversed[i] (its resnets' conv1 width).
            let mut reversed = Vec::with_capacity(n);
            for i in 0..n {
                let d = dims(&format!("decoder.up_blocks.{i}.resnets.0.conv1.weight"))?;
                reversed.push(d[0]);
            }
            reversed.reverse();
            DecoderConfig::SdVae(SdVaeConfig {
                latent_channels: conv_in[1],
                out_channels: conv_out[0],
                block_out_channels: reversed,
                layers_per_block: resnets - 1,
                norm_num_groups: opts.norm_groups.unwrap_or(SD_NORM_GROUPS),
                scaling_factor: opts.scaling_factor.unwrap_or(SD_SCALING_FACTOR),
            })
        } else {
            return Ok(None);
        };
        cfg.validate()?;
        Ok(Some(cfg))
    }
}

fn is_taesd(map: &TensorMap) -> bool {
    map.contains_key("1.weight") && map.contains_key("3.conv.0.weight")
}

fn is_sdvae(map: &TensorMap) -> bool {
    map.contains_key("decoder.conv_in.weight")
}

/// Whether a checkpoint's tensors look like a TAESD or SD-VAE state dict.
pub fn is_decoder_checkpoint(map: &TensorMap) -> bool {
    is_taesd(map) || is_sdvae(map)
}

fn indices(map: &TensorMap, prefix: &str) -> std::collections::BTreeSet<usize> {
    let p = format!("{prefix}.");
    map.keys().filter_map(|k| k.strip_prefix(&p)).filter_map(|r| r.split('.').next()).filter_map(|i| i.parse().ok()).collect()
}

fn contiguous(set: &std::collections::BTreeSet<usize>, what: &str) -> Result<usize> {
    for (want, &have) in set.iter().enumerate() {
        if want != have {
            return Err(Error::arch(format!("{what}: index {want} is missing (found {have})")));
        }
    }
    Ok(set.len())
}

/// The decoder's tensors of a checkpoint under their canonical names: for the SD-VAE, only
/// `decoder.*` and `post_quant_conv.*` are kept (the encoder and `quant_conv` are dropped), the
/// older attention names `query / key / value / proj_attn` become `to_q / to_k / to_v /
/// to_out.0`, and 1x1-conv-shaped attention weights (C, C, 1, 1) become (C, C). TAESD tensors
/// pass unchanged.
pub fn canonical_decoder_tensors(map: TensorMap) -> Result<TensorMap> {
    if !is_sdvae(&map) {
        return Ok(map);
    }
    let mut out = TensorMap::new();
    for (k, t) in map {
        if !(k.starts_with("decoder.") || k.starts_with("post_quant_conv.")) {
            continue;
        }
        let mut name = k.clone();
        let mut t = t;
        if let Some(pos) = k.find(".attentions.") {
            let head = &k[..pos + ".attentions.".len()];
            let rest = &k[pos + ".attentions.".len()..];
            if let Some((idx, tail)) = rest.split_once('.') {
                let tail = [("query.", "to_q."), ("key.", "to_k."), ("value.", "to_v."), ("proj_attn.", "to_out.0.")]
                    .iter()
                    .find_map(|(old, new)| tail.strip_prefix(old).map(|s| format!("{new}{s}")))
                    .unwrap_or_else(|| tail.to_string());
                name = format!("{head}{idx}.{tail}");
            }
            if let [o, i, 1, 1] = *t.dims() {
                t = t.reshape((o, i))?;
            }
        }
        if out.insert(name.clone(), t).is_some() {
            return Err(Error::arch(format!("the checkpoint holds {name} twice (under the old and the new attention name)")));
        }
    }
    Ok(out)
}

// ----------------------------------------------------------------------------------------------
// Layers
// ----------------------------------------------------------------------------------------------

/// `nn.Conv2d` with stride 1, padding k / 2 (3x3: 1, 1x1: 0).
struct Conv2d {
    w: Tensor,
    b: Option<Tensor>,
    pad: usize,
}

impl Conv2d {
    fn load(w: &mut WeightLoader, p: &str, cin: usize, cout: usize, k: usize, bias: bool) -> Self {
        let weight = w.take(&format!("{p}.weight"), &[cout, cin, k, k]);
        let b = bias.then(|| w.take(&format!("{p}.bias"), &[cout]));
        Conv2d { w: weight, b, pad: k / 2 }
    }

    /// x: (B, cin, H, W) -> (B, cout, H, W)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(&self.w, self.pad, 1, 1, 1)?;
        Ok(match &self.b {
            Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?,
            None => y,
        })
    }
}

/// `nn.GroupNorm(groups, C, eps=1e-6)` with affine parameters.
struct GroupNorm {
    gamma: Tensor,
    beta: Tensor,
    groups: usize,
}

impl GroupNorm {
    fn load(w: &mut WeightLoader, p: &str, c: usize, groups: usize) -> Self {
        GroupNorm { gamma: w.take(&format!("{p}.weight"), &[c]), beta: w.take(&format!("{p}.bias"), &[c]), groups }
    }

    /// x: (B, C, H, W); mean and biased variance over (C / groups, H, W) per group.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let xg = x.reshape((b, self.groups, (c / self.groups) * h * w))?;
        let mean = xg.mean_keepdim(D::Minus1)?;
        let xc = xg.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + GN_EPS)?.sqrt()?)?.reshape((b, c, h, w))?;
        Ok(xn.broadcast_mul(&self.gamma.reshape((1, c, 1, 1))?)?.broadcast_add(&self.beta.reshape((1, c, 1, 1))?)?)
    }
}

fn upsample2x(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    Ok(x.upsample_nearest2d(2 * h, 2 * w)?)
}

// ----------------------------------------------------------------------------------------------
// TAESD
// ----------------------------------------------------------------------------------------------

/// `Block(n, n)`: ReLU(conv.4(ReLU(conv.2(ReLU(conv.0(x))))) + x).
struct TaesdBlock {
    convs: [Conv2d; 3],
}

enum TaesdOp {
    Clamp,
    Conv(Conv2d),
    Relu,
    Block(TaesdBlock),
    Upsample,
}

struct Taesd {
    ops: Vec<TaesdOp>,
}

impl Taesd {
    fn load(w: &mut WeightLoader, c: &TaesdConfig) -> Self {
        let width = c.width;
        let layers = taesd_layers();
        let last = layers.len() - 1;
        let mut ops = Vec::with_capacity(layers.len());
        for (i, layer) in layers.into_iter().enumerate() {
            ops.push(match layer {
                TaesdLayer::Clamp => TaesdOp::Clamp,
                TaesdLayer::Relu => TaesdOp::Relu,
                TaesdLayer::Upsample => TaesdOp::Upsample,
                TaesdLayer::Conv { bias } => {
                    let cin = if i == 1 { c.latent_channels } else { width };
                    let cout = if i == last { c.out_channels } else { width };
                    TaesdOp::Conv(Conv2d::load(w, &i.to_string(), cin, cout, 3, bias))
                }
                TaesdLayer::Block => TaesdOp::Block(TaesdBlock {
                    convs: [0, 2, 4].map(|j| Conv2d::load(w, &format!("{i}.conv.{j}"), width, width, 3, true)),
                }),
            });
        }
        Taesd { ops }
    }

    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut x = z.clone();
        for op in &self.ops {
            x = match op {
                TaesdOp::Clamp => ((x / 3.0)?.tanh()? * 3.0)?,
                TaesdOp::Conv(c) => c.forward(&x)?,
                TaesdOp::Relu => x.relu()?,
                TaesdOp::Upsample => upsample2x(&x)?,
                TaesdOp::Block(b) => {
                    let h = b.convs[0].forward(&x)?.relu()?;
                    let h = b.convs[1].forward(&h)?.relu()?;
                    (b.convs[2].forward(&h)? + &x)?.relu()?
                }
            };
        }
        Ok(x)
    }
}

// ----------------------------------------------------------------------------------------------
// SD-VAE decoder (diffusers AutoencoderKL)
// ----------------------------------------------------------------------------------------------

/// diffusers `ResnetBlock2D` without a time embedding, output_scale_factor 1:
/// conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))) + shortcut(x).
struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Resnet {
    fn load(w: &mut WeightLoader, p: &str, cin: usize, cout: usize, groups: usize) -> Self {
        Resnet {
            norm1: GroupNorm::load(w, &format!("{p}.norm1"), cin, groups),
            conv1: Conv2d::load(w, &format!("{p}.conv1"), cin, cout, 3, true),
            norm2: GroupNorm::load(w, &format!("{p}.norm2"), cout, groups),
            conv2: Conv2d::load(w, &format!("{p}.conv2"), cout, cout, 3, true),
            shortcut: (cin != cout).then(|| Conv2d::load(w, &format!("{p}.conv_shortcut"), cin, cout, 1, true)),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?;
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?)?;
        let skip = match &self.shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        Ok((skip + h)?)
    }
}

/// diffusers `Attention` as the VAE mid block uses it: group norm, one head over all C channels,
/// softmax(q k^T / sqrt(C)) v, `to_out.0`, residual.
struct MidAttention {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl MidAttention {
    fn load(w: &mut WeightLoader, p: &str, c: usize, groups: usize) -> Result<Self> {
        Ok(MidAttention {
            norm: GroupNorm::load(w, &format!("{p}.group_norm"), c, groups),
            q: Linear::load(w, &format!("{p}.to_q"), c, c)?,
            k: Linear::load(w, &format!("{p}.to_k"), c, c)?,
            v: Linear::load(w, &format!("{p}.to_v"), c, c)?,
            out: Linear::load(w, &format!("{p}.to_out.0"), c, c)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let t = self.norm.forward(x)?.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?; // (B, HW, C)
        let (q, k, v) = (self.q.forward(&t)?, self.k.forward(&t)?, self.v.forward(&t)?);
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (c as f64).sqrt()))?; // (B, HW, HW)
        let max = scores.max_keepdim(D::Minus1)?;
        let e = scores.broadcast_sub(&max)?.exp()?;
        let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        let o = self.out.forward(&probs.matmul(&v)?)?; // (B, HW, C)
        let o = o.transpose(1, 2)?.reshape((b, c, h, w))?;
        Ok((o + x)?)
    }
}

struct UpBlock {
    resnets: Vec<Resnet>,
    upsample: Option<Conv2d>,
}

struct SdVae {
    post_quant_conv: Conv2d,
    conv_in: Conv2d,
    mid: (Resnet, MidAttention, Resnet),
    ups: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl SdVae {
    fn load(w: &mut WeightLoader, c: &SdVaeConfig) -> Result<Self> {
        let g = c.norm_num_groups;
        let l = c.latent_channels;
        let rev: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let top = rev[0];
        let mid = (
            Resnet::load(w, "decoder.mid_block.resnets.0", top, top, g),
            MidAttention::load(w, "decoder.mid_block.attentions.0", top, g)?,
            Resnet::load(w, "decoder.mid_block.resnets.1", top, top, g),
        );
        let mut ups = Vec::with_capacity(rev.len());
        let mut prev = top;
        for (i, &out) in rev.iter().enumerate() {
            let p = format!("decoder.up_blocks.{i}");
            let resnets = (0..=c.layers_per_block)
                .map(|j| Resnet::load(w, &format!("{p}.resnets.{j}"), if j == 0 { prev } else { out }, out, g))
                .collect();
            let upsample = (i + 1 < rev.len()).then(|| Conv2d::load(w, &format!("{p}.upsamplers.0.conv"), out, out, 3, true));
            ups.push(UpBlock { resnets, upsample });
            prev = out;
        }
        let bottom = *c.block_out_channels.first().unwrap_or(&top);
        Ok(SdVae {
            post_quant_conv: Conv2d::load(w, "post_quant_conv", l, l, 1, true),
            conv_in: Conv2d::load(w, "decoder.conv_in", l, top, 3, true),
            mid,
            ups,
            norm_out: GroupNorm::load(w, "decoder.conv_norm_out", bottom, g),
            conv_out: Conv2d::load(w, "decoder.conv_out", bottom, c.out_channels, 3, true),
        })
    }

    /// z: the VAE latent (already divided by the scaling factor).
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let x = self.post_quant_conv.forward(z)?;
        let mut x = self.conv_in.forward(&x)?;
        x = self.mid.0.forward(&x)?;
        x = self.mid.1.forward(&x)?;
        x = self.mid.2.forward(&x)?;
        for up in &self.ups {
            for r in &up.resnets {
                x = r.forward(&x)?;
            }
            if let Some(conv) = &up.upsample {
                x = conv.forward(&upsample2x(&x)?)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward(&x)?.silu()?)
    }
}

// ----------------------------------------------------------------------------------------------
// Decoder
// ----------------------------------------------------------------------------------------------

enum Inner {
    Taesd(Taesd),
    SdVae(Box<SdVae>),
}

/// A loaded latent decoder (CPU reference).
pub struct Decoder {
    pub cfg: DecoderConfig,
    inner: Inner,
}

impl Decoder {
    /// Build from tensors with the canonical names (see [`canonical_decoder_tensors`]; older
    /// attention names are accepted too). Every missing, unexpected or mis-shaped tensor is an
    /// error.
    pub fn from_tensors(cfg: DecoderConfig, tensors: TensorMap) -> Result<Self> {
        cfg.validate()?;
        let mut w = WeightLoader::new(canonical_decoder_tensors(tensors)?);
        let inner = match &cfg {
            DecoderConfig::Taesd(c) => Inner::Taesd(Taesd::load(&mut w, c)),
            DecoderConfig::SdVae(c) => Inner::SdVae(Box::new(SdVae::load(&mut w, c)?)),
        };
        w.finish()?;
        Ok(Decoder { cfg, inner })
    }

    /// z: the latent as sampled, (B, latent_channels, h, w) -> the raw image (B, 3, 8h, 8w).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.cfg.output_shape(z.dims())?;
        let z = z.to_dtype(DType::F32)?;
        match &self.inner {
            Inner::Taesd(t) => t.forward(&z),
            Inner::SdVae(v) => v.forward(&(z * self.cfg.input_scale())?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn taesd_layer_indices_match_the_published_sequence() {
        let l = taesd_layers();
        assert_eq!(l.len(), 20);
        let convs: Vec<usize> = l.iter().enumerate().filter(|(_, x)| matches!(x, TaesdLayer::Conv { .. })).map(|(i, _)| i).collect();
        assert_eq!(convs, [1, 7, 12, 17, 19]);
        let blocks: Vec<usize> = l.iter().enumerate().filter(|(_, x)| matches!(x, TaesdLayer::Block)).map(|(i, _)| i).collect();
        assert_eq!(blocks, [3, 4, 5, 8, 9, 10, 13, 14, 15, 18]);
        let ups: Vec<usize> = l.iter().enumerate().filter(|(_, x)| matches!(x, TaesdLayer::Upsample)).map(|(i, _)| i).collect();
        assert_eq!(ups, [6, 11, 16]);
    }

    #[test]
    fn group_norm_matches_a_direct_computation() {
        let dev = Device::Cpu;
        let vals: Vec<f32> = (0..2 * 4 * 3 * 2).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
        let x = Tensor::from_vec(vals.clone(), (2, 4, 3, 2), &dev).unwrap();
        let gn = GroupNorm {
            gamma: Tensor::new(&[1.0f32, 2.0, -1.0, 0.5], &dev).unwrap(),
            beta: Tensor::new(&[0.1f32, 0.2, 0.3, 0.4], &dev).unwrap(),
            groups: 2,
        };
        let y: Vec<f32> = gn.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let (gamma, beta) = ([1.0f32, 2.0, -1.0, 0.5], [0.1f32, 0.2, 0.3, 0.4]);
        for b in 0..2 {
            for g in 0..2 {
                let s = &vals[(b * 4 + 2 * g) * 6..(b * 4 + 2 * g + 2) * 6];
                let m = s.iter().map(|&v| v as f64).sum::<f64>() / 12.0;
                let var = s.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / 12.0;
                for (i, &v) in s.iter().enumerate() {
                    let c = 2 * g + i / 6;
                    let want = ((v as f64 - m) / (var + GN_EPS).sqrt()) as f32 * gamma[c] + beta[c];
                    let got = y[(b * 4 + 2 * g) * 6 + i];
                    assert!((got - want).abs() < 1e-5, "b{b} g{g} i{i}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn old_attention_names_are_renamed_and_the_encoder_dropped() {
        let dev = Device::Cpu;
        let t = |d: &[usize]| Tensor::zeros(d, DType::F32, &dev).unwrap();
        let mut m = TensorMap::new();
        m.insert("decoder.conv_in.weight".into(), t(&[8, 4, 3, 3]));
        m.insert("decoder.mid_block.attentions.0.query.weight".into(), t(&[8, 8, 1, 1]));
        m.insert("decoder.mid_block.attentions.0.proj_attn.bias".into(), t(&[8]));
        m.insert("encoder.conv_in.weight".into(), t(&[8, 3, 3, 3]));
        m.insert("quant_conv.weight".into(), t(&[8, 8, 1, 1]));
        let c = canonical_decoder_tensors(m).unwrap();
        let mut keys: Vec<_> = c.keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["decoder.conv_in.weight", "decoder.mid_block.attentions.0.to_out.0.bias", "decoder.mid_block.attentions.0.to_q.weight"]
        );
        assert_eq!(c["decoder.mid_block.attentions.0.to_q.weight"].dims(), [8, 8]);
    }
}
