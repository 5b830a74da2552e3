//! Latent decoders on the GPU (TAESD and the SD-VAE decoder), checked against
//! [`crate::decoder`] (the CPU reference).
//!
//! Conv and attention weights that f16 holds exactly (an f16 pack's, or the published f16
//! checkpoints') stay f16 on the GPU, half the bytes; the others, biases and norms are f32. A
//! [`DecoderPlan`] holds the activations and the recorded dispatches for one (batch, h, w) and
//! is replayed per call: one submission per decode. Activations rotate through a small pool of
//! equal buffers sized for the largest feature map.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::decoder::{canonical_decoder_tensors, Decoder, DecoderConfig};
use crate::error::{Error, Result};
use crate::gpu::ops::conv::{conv2d, group_norm, vae_attention, Act, ConvShape, ConvWeight};
use crate::gpu::{Dispatch, Gpu, GpuBuf};
use crate::model::{to_vec_f32, TensorMap};

/// GroupNorm eps of the SD-VAE decoder.
const GN_EPS: f32 = 1e-6;
/// Activation buffers in the pool.
const POOL: usize = 5;

/// A decoder's weights on the GPU.
pub struct GpuDecoder {
    pub cfg: DecoderConfig,
    /// Biases and norm parameters (rank 1, f32).
    weights: HashMap<String, GpuBuf>,
    /// Conv kernels and attention projections (every tensor of rank >= 2).
    convs: HashMap<String, ConvWeight>,
    /// The plan of the last [`Self::decode_reusing_async`], kept for the next call.
    spare: RefCell<Option<DecoderPlan>>,
    /// Plans recorded so far (by [`Self::plan`]).
    plans_built: Cell<usize>,
}

/// Buffers and dispatches for one (batch, h, w).
pub struct DecoderPlan {
    pub batch: usize,
    pub h: usize,
    pub w: usize,
    input: GpuBuf,
    output: GpuBuf,
    dispatches: Vec<Dispatch>,
    /// Kept alive for the dispatches' bind groups.
    _pool: Vec<GpuBuf>,
}

impl GpuDecoder {
    /// Upload a decoder's tensors (checked first as [`Decoder::from_tensors`] checks them).
    pub fn load(gpu: &Gpu, cfg: DecoderConfig, tensors: TensorMap) -> Result<Self> {
        let tensors = canonical_decoder_tensors(tensors)?;
        drop(Decoder::from_tensors(cfg.clone(), tensors.clone())?);
        let (mut weights, mut convs) = (HashMap::new(), HashMap::new());
        for (name, t) in &tensors {
            let v = to_vec_f32(t)?;
            // Conv kernels, and the attention projections (run as 1x1 convs).
            if t.rank() >= 2 {
                convs.insert(name.clone(), ConvWeight::upload(gpu, name, &v)?);
            } else {
                weights.insert(name.clone(), gpu.upload(name, &v)?);
            }
        }
        Ok(GpuDecoder { cfg, weights, convs, spare: RefCell::new(None), plans_built: Cell::new(0) })
    }

    /// Bytes of weights on the GPU, and how many weight tensors of rank >= 2 are stored as f16.
    pub fn weight_bytes(&self) -> (usize, usize) {
        let bytes = self.weights.values().map(|b| b.len * 4).sum::<usize>() + self.convs.values().map(ConvWeight::bytes).sum::<usize>();
        (bytes, self.convs.values().filter(|c| c.f16).count())
    }

    fn conv_weight(&self, name: &str) -> Result<&ConvWeight> {
        self.convs.get(name).ok_or_else(|| Error::Gpu(format!("decoder conv weight {name} is not on the GPU")))
    }

    fn w(&self, name: &str) -> Result<&GpuBuf> {
        self.weights.get(name).ok_or_else(|| Error::Gpu(format!("decoder tensor {name} is not on the GPU")))
    }

    /// Record the decoder for latents (batch, latent_channels, h, w).
    pub fn plan(&self, gpu: &Gpu, batch: usize, h: usize, w: usize) -> Result<DecoderPlan> {
        self.plans_built.set(self.plans_built.get() + 1);
        let [_, oc, oh, ow] = self.cfg.output_shape(&[batch, self.cfg.latent_channels(), h, w])?;
        let input = gpu.zeros("decoder.latent", batch * self.cfg.latent_channels() * h * w)?;
        let output = gpu.zeros("decoder.image", batch * oc * oh * ow)?;
        let area = h * w;
        // The largest feature map (channels x area) of any layer.
        let max_elems = match &self.cfg {
            DecoderConfig::Taesd(c) => c.width * area * 64,
            DecoderConfig::SdVae(c) => {
                let rev: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
                let n = rev.len();
                (0..n).map(|i| rev[i] * area * (1 << (2 * (i + 1).min(n - 1)))).max().unwrap_or(0).max(rev[0] * area)
            }
        } * batch;
        let pool = (0..POOL).map(|i| gpu.zeros(&format!("decoder.act{i}"), max_elems)).collect::<Result<Vec<_>>>()?;
        let mut rec = Recorder { gpu, dec: self, batch, pool: &pool, ds: Vec::new() };
        match &self.cfg {
            DecoderConfig::Taesd(c) => rec.taesd(c.latent_channels, c.width, c.out_channels, h, w, &input, &output)?,
            DecoderConfig::SdVae(c) => {
                // one batch element's (T, T) probabilities at a time (ops::conv::vae_attention)
                let scores = gpu.zeros("decoder.attention_scores", area * area)?;
                rec.sdvae(c, h, w, &input, &output, &scores)?;
                let ds = rec.ds;
                let mut keep = pool;
                keep.push(scores);
                return Ok(DecoderPlan { batch, h, w, input, output, dispatches: ds, _pool: keep });
            }
        }
        let ds = rec.ds;
        Ok(DecoderPlan { batch, h, w, input, output, dispatches: ds, _pool: pool })
    }

    /// z (batch, latent_channels, h, w) as sampled -> the raw image (batch, 3, 8h, 8w), row-major.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode(&self, gpu: &Gpu, plan: &DecoderPlan, z: &[f32]) -> Result<Vec<f32>> {
        pollster::block_on(self.decode_async(gpu, plan, z))
    }

    /// Plans recorded so far.
    pub fn plans_built(&self) -> usize {
        self.plans_built.get()
    }

    /// Decode latents (batch, latent_channels, h, w) with the previous call's plan when it has
    /// the same sizes, else a new one (a live preview decodes every step). The plan is taken
    /// out while it runs: a second decode at the same time (the final image while a preview is
    /// in flight) records its own instead of sharing buffers.
    pub async fn decode_reusing_async(&self, gpu: &Gpu, batch: usize, h: usize, w: usize, z: &[f32]) -> Result<Vec<f32>> {
        let spare = self.spare.borrow_mut().take();
        let plan = match spare {
            Some(p) if (p.batch, p.h, p.w) == (batch, h, w) => p,
            _ => self.plan(gpu, batch, h, w)?,
        };
        let out = self.decode_async(gpu, &plan, z).await;
        *self.spare.borrow_mut() = Some(plan);
        out
    }

    /// [`Self::decode_reusing_async`], blocking.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode_reusing(&self, gpu: &Gpu, batch: usize, h: usize, w: usize, z: &[f32]) -> Result<Vec<f32>> {
        pollster::block_on(self.decode_reusing_async(gpu, batch, h, w, z))
    }

    /// [`Self::decode`] without blocking (the browser).
    pub async fn decode_async(&self, gpu: &Gpu, plan: &DecoderPlan, z: &[f32]) -> Result<Vec<f32>> {
        let n = plan.batch * self.cfg.latent_channels() * plan.h * plan.w;
        if z.len() != n {
            return Err(Error::InvalidArgument(format!("{} latent values for a plan of {n}", z.len())));
        }
        let s = self.cfg.input_scale() as f32;
        let scaled: Vec<f32> = z.iter().map(|v| v * s).collect();
        gpu.write(&plan.input, if s == 1.0 { z } else { &scaled })?;
        gpu.run(&plan.dispatches)?;
        gpu.read_async(&plan.output).await
    }
}

/// Records dispatches, picking activation buffers from the pool.
struct Recorder<'a> {
    gpu: &'a Gpu,
    dec: &'a GpuDecoder,
    batch: usize,
    pool: &'a [GpuBuf],
    ds: Vec<Dispatch>,
}

impl Recorder<'_> {
    /// A pool buffer that is none of `busy`.
    fn free(&self, busy: &[&GpuBuf]) -> Result<GpuBuf> {
        self.pool
            .iter()
            .find(|b| !busy.iter().any(|x| std::rc::Rc::ptr_eq(&x.buf, &b.buf)))
            .cloned()
            .ok_or_else(|| Error::Gpu("decoder plan: activation pool exhausted".into()))
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(&mut self, name: &str, x: &GpuBuf, cin: usize, cout: usize, h: usize, w: usize, k: usize, bias: bool, up: bool, clamp: bool, act: Act, res: Option<&GpuBuf>, out: &GpuBuf) -> Result<()> {
        let s = ConvShape { batch: self.batch, cin, cout, h, w, k, upsample: up, clamp_input: clamp, act };
        let weight = self.dec.conv_weight(&format!("{name}.weight"))?;
        let b = if bias { Some(self.dec.w(&format!("{name}.bias"))?) } else { None };
        self.ds.push(conv2d(self.gpu, name, &s, x, weight, b, res, out)?);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn taesd(&mut self, latent: usize, width: usize, out_c: usize, h: usize, w: usize, z: &GpuBuf, image: &GpuBuf) -> Result<()> {
        // 0 Clamp + 1 conv + 2 ReLU in one dispatch.
        let mut x = self.free(&[])?;
        self.conv("1", z, latent, width, h, w, 3, true, false, true, Act::Relu, None, &x)?;
        let (mut h, mut w) = (h, w);
        let block = |r: &mut Self, i: usize, x: &GpuBuf, h: usize, w: usize| -> Result<GpuBuf> {
            let a = r.free(&[x])?;
            r.conv(&format!("{i}.conv.0"), x, width, width, h, w, 3, true, false, false, Act::Relu, None, &a)?;
            let b = r.free(&[x, &a])?;
            r.conv(&format!("{i}.conv.2"), &a, width, width, h, w, 3, true, false, false, Act::Relu, None, &b)?;
            // fuse: ReLU(conv.4(b) + x)
            r.conv(&format!("{i}.conv.4"), &b, width, width, h, w, 3, true, false, false, Act::Relu, Some(x), &a)?;
            Ok(a)
        };
        for (blocks, up) in [([3, 4, 5].as_slice(), 7), (&[8, 9, 10], 12), (&[13, 14, 15], 17)] {
            for &i in blocks {
                x = block(self, i, &x, h, w)?;
            }
            // nn.Upsample(2) + conv without bias, fused.
            let y = self.free(&[&x])?;
            h *= 2;
            w *= 2;
            self.conv(&up.to_string(), &x, width, width, h, w, 3, false, true, false, Act::None, None, &y)?;
            x = y;
        }
        x = block(self, 18, &x, h, w)?;
        self.conv("19", &x, width, out_c, h, w, 3, true, false, false, Act::None, None, image)
    }

    fn norm(&mut self, name: &str, x: &GpuBuf, c: usize, hw: usize, act: Act, out: &GpuBuf) -> Result<()> {
        let groups = match &self.dec.cfg {
            DecoderConfig::SdVae(c) => c.norm_num_groups,
            DecoderConfig::Taesd(_) => return Err(Error::Gpu("TAESD has no norms".into())),
        };
        let (g, b) = (self.dec.w(&format!("{name}.weight"))?, self.dec.w(&format!("{name}.bias"))?);
        self.ds.push(group_norm(self.gpu, name, x, self.batch, c, groups, hw, GN_EPS, act, g, b, out)?);
        Ok(())
    }

    /// diffusers ResnetBlock2D; returns the buffer holding the output.
    fn resnet(&mut self, p: &str, x: &GpuBuf, cin: usize, cout: usize, h: usize, w: usize) -> Result<GpuBuf> {
        let a = self.free(&[x])?;
        self.norm(&format!("{p}.norm1"), x, cin, h * w, Act::Silu, &a)?;
        let b = self.free(&[x, &a])?;
        self.conv(&format!("{p}.conv1"), &a, cin, cout, h, w, 3, true, false, false, Act::None, None, &b)?;
        self.norm(&format!("{p}.norm2"), &b, cout, h * w, Act::Silu, &a)?;
        let skip = if cin != cout {
            self.conv(&format!("{p}.conv_shortcut"), x, cin, cout, h, w, 1, true, false, false, Act::None, None, &b)?;
            b.clone()
        } else {
            x.clone()
        };
        let out = self.free(&[x, &a, &skip])?;
        self.conv(&format!("{p}.conv2"), &a, cout, cout, h, w, 3, true, false, false, Act::None, Some(&skip), &out)?;
        Ok(out)
    }

    fn sdvae(&mut self, c: &crate::decoder::SdVaeConfig, h: usize, w: usize, z: &GpuBuf, image: &GpuBuf, scores: &GpuBuf) -> Result<()> {
        let l = c.latent_channels;
        let rev: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let top = rev[0];
        let pq = self.free(&[])?;
        self.conv("post_quant_conv", z, l, l, h, w, 1, true, false, false, Act::None, None, &pq)?;
        let x = self.free(&[&pq])?;
        self.conv("decoder.conv_in", &pq, l, top, h, w, 3, true, false, false, Act::None, None, &x)?;
        let mut x = self.resnet("decoder.mid_block.resnets.0", &x, top, top, h, w)?;
        // Attention: group norm, q / k / v as 1x1 convs on the channel-major map, attention,
        // to_out.0 as a 1x1 conv with the residual.
        {
            let p = "decoder.mid_block.attentions.0";
            let n = self.free(&[&x])?;
            self.norm(&format!("{p}.group_norm"), &x, top, h * w, Act::None, &n)?;
            let q = self.free(&[&x, &n])?;
            let k = self.free(&[&x, &n, &q])?;
            let v = self.free(&[&x, &n, &q, &k])?;
            for (name, dst) in [("to_q", &q), ("to_k", &k), ("to_v", &v)] {
                self.conv(&format!("{p}.{name}"), &n, top, top, h, w, 1, true, false, false, Act::None, None, dst)?;
            }
            self.ds.extend(vae_attention(self.gpu, p, &q, &k, &v, self.batch, top, h * w, scores, &n)?);
            self.conv(&format!("{p}.to_out.0"), &n, top, top, h, w, 1, true, false, false, Act::None, Some(&x), &q)?;
            x = q;
        }
        x = self.resnet("decoder.mid_block.resnets.1", &x, top, top, h, w)?;
        let (mut h, mut w) = (h, w);
        let mut prev = top;
        for (i, &out) in rev.iter().enumerate() {
            for j in 0..=c.layers_per_block {
                x = self.resnet(&format!("decoder.up_blocks.{i}.resnets.{j}"), &x, if j == 0 { prev } else { out }, out, h, w)?;
            }
            if i + 1 < rev.len() {
                let y = self.free(&[&x])?;
                h *= 2;
                w *= 2;
                self.conv(&format!("decoder.up_blocks.{i}.upsamplers.0.conv"), &x, out, out, h, w, 3, true, true, false, Act::None, None, &y)?;
                x = y;
            }
            prev = out;
        }
        let bottom = c.block_out_channels[0];
        let n = self.free(&[&x])?;
        self.norm("decoder.conv_norm_out", &x, bottom, h * w, Act::Silu, &n)?;
        self.conv("decoder.conv_out", &n, bottom, c.out_channels, h, w, 3, true, false, false, Act::None, None, image)
    }
}
