//! One engine for the CLI and the page: a model on its backend (the candle CPU reference or
//! WebGPU), the checks of a sampling request, and the sampling driver with one step callback.
//!
//! Both front ends build a [`SampleRequest`] and call [`Engine::sample`]; the label rules, the
//! guided channels, the respacing default, the grid schedule and what a cancel returns (the
//! partly denoised latent) are decided here once, for both backends.

use std::cell::RefCell;
use std::rc::Rc;

use candle_core::{Device, Tensor};

use crate::config::{Config, GridSchedule, PooledMiddle};
use crate::diffusion::{default_respacing, Guidance, Sampler, SamplerKind, SeededNoise, NUM_TRAIN_TIMESTEPS};
use crate::error::{Error, Result};
use crate::flops::block_macs;
use crate::gguf::{Gguf, TensorType};
use crate::gpu::model::{EncodedMap, GpuModel, WeightSource};
use crate::gpu::sample::{sample_gpu, SampleOptions, StepAttention};
use crate::gpu::Gpu;
use crate::model::{to_vec_f32, Model, TensorMap};

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The candle CPU reference.
    Cpu,
    /// WebGPU (wgpu); an error when there is no adapter.
    Gpu,
    /// WebGPU when a hardware adapter exists, else the CPU: a software adapter (llvmpipe,
    /// SwiftShader) runs these models 10-20x slower than the candle CPU path, so `Auto` passes
    /// it by (`Gpu` still takes it).
    Auto,
}

impl Backend {
    /// The GPU this backend runs on (`None` for the CPU), and for `Auto` without an adapter the
    /// reason it fell back to the CPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(self) -> Result<(Option<Gpu>, Option<Error>)> {
        match self {
            Backend::Cpu => Ok((None, None)),
            Backend::Gpu => Ok((Some(Gpu::new_blocking()?), None)),
            // The adapter's type is known before a device is opened, so a software adapter
            // costs no device start-up. Passed by quietly: a deliberate choice, not a failure
            // (a failing command's stderr is one line).
            Backend::Auto => match Gpu::adapter_blocking() {
                Ok(a) if a.get_info().device_type == wgpu::DeviceType::Cpu => Ok((None, None)),
                Ok(a) => match Gpu::open_blocking(a) {
                    Ok(g) => Ok((Some(g), None)),
                    Err(e) => Ok((None, Some(e))),
                },
                Err(e) => Ok((None, Some(e))),
            },
        }
    }
}

/// The model on its backend: the CPU model, or the GPU model with the GPU it lives on.
pub enum Net {
    Cpu(Box<Model>),
    Gpu(Rc<Gpu>, Box<GpuModel>),
}

/// A loaded model on its backend.
pub struct Engine {
    net: Net,
}

/// What to sample. [`SampleRequest::plan`] checks it against a model before any work.
#[derive(Clone, Debug)]
pub struct SampleRequest {
    /// The class of every image: `0..num_classes`, or `num_classes` — the null label — for an
    /// unconditional sample of a model trained with label dropout.
    pub label: i64,
    /// Images to sample (ignored when `latent` is given).
    pub num: usize,
    /// Denoising steps K.
    pub steps: usize,
    pub sampler: SamplerKind,
    /// Timestep respacing; `None` is `K`, as the official `sample.py` builds its diffusion with
    /// `create_diffusion(str(K))` for DDPM and DDIM alike (`ddimK` is the DDIM paper's spacing).
    pub respacing: Option<String>,
    /// Classifier-free guidance scale; at most 1: no guidance (one model row per image).
    pub cfg_scale: f64,
    /// Guide every eps channel instead of the official code's first 3 (DiT) or 4 (Latte).
    pub guide_all_channels: bool,
    /// Seed of the starting latent (when `latent` is not given) and of the per-step noise.
    pub seed: u64,
    /// Sparse grid per step; `None`: the model's `semantic_size` at every step.
    pub schedule: Option<GridSchedule>,
    /// Starting latent (n, C, I, I) — clips (n, F, C, I, I) — flattened; `None`: drawn from `seed`.
    pub latent: Option<Vec<f32>>,
    /// Report the predicted x0 at every step (the live preview).
    pub preview: bool,
    /// Report the cross-attention maps of merge / recover blocks at every step (the token view).
    pub trace: bool,
}

impl SampleRequest {
    /// The official sampling script's defaults for `cfg`'s family: DiT / SparseDiT as
    /// [`SampleRequest::default`]; Latte's `configs/ucf101/ucf101_sample.yaml`: DDPM, 250 steps,
    /// CFG 7 (class-conditional), no guidance for an unconditional model.
    pub fn official_for(cfg: &Config) -> SampleRequest {
        let mut r = SampleRequest::default();
        if cfg.is_video() {
            r.steps = 250;
            r.sampler = SamplerKind::Ddpm;
            r.cfg_scale = if cfg.null_label().is_some() { 7.0 } else { 1.0 };
        }
        r
    }
}

impl Default for SampleRequest {
    /// The official `sample.py` defaults where they apply: 50 steps, CFG 4, seed 0.
    fn default() -> Self {
        SampleRequest {
            label: 0,
            num: 1,
            steps: 50,
            sampler: SamplerKind::Ddim { eta: 0.0 },
            respacing: None,
            cfg_scale: 4.0,
            guide_all_channels: false,
            seed: 0,
            schedule: None,
            latent: None,
            preview: false,
            trace: false,
        }
    }
}

/// A checked request: the sampler, the guidance and the grid of every step.
pub struct RunPlan {
    /// The respacing in use (e.g. `50`).
    pub respacing: String,
    pub sampler: Sampler,
    pub schedule: GridSchedule,
    pub guidance: Option<Guidance>,
    /// Original timestep of each step in run order (the noisiest first).
    pub timesteps: Vec<usize>,
    /// Sparse grid side of each step in run order (the dense side for a dense model).
    pub grids: Vec<usize>,
    /// Images in the run.
    pub images: usize,
}

impl RunPlan {
    /// Model rows per step: two per image with guidance ([cond; uncond]).
    pub fn rows(&self) -> usize {
        self.images * if self.guidance.is_some() { 2 } else { 1 }
    }

    /// The sparse grid side of the model call at original timestep `t`.
    pub fn grid_at(&self, t: usize, cfg: &Config) -> usize {
        if cfg.uses_grid() {
            self.schedule.grid_at(t as f64, NUM_TRAIN_TIMESTEPS, cfg.num_tokens())
        } else {
            cfg.grid()
        }
    }

    /// MACs of every transformer block over the whole run, all model rows.
    pub fn block_macs(&self, cfg: &Config) -> u64 {
        let mut per_grid: Vec<(usize, u64)> = Vec::new();
        let mut total = 0u64;
        for &g in &self.grids {
            let macs = match per_grid.iter().find(|(s, _)| *s == g) {
                Some(&(_, m)) => m,
                None => {
                    let m = block_macs(cfg, g);
                    per_grid.push((g, m));
                    m
                }
            };
            total += macs * self.rows() as u64;
        }
        total
    }
}

impl SampleRequest {
    /// Check every option against `cfg` and lay out the run. Nothing is computed yet.
    pub fn plan(&self, cfg: &Config) -> Result<RunPlan> {
        if !(1..=1000).contains(&self.steps) {
            return Err(Error::arg(format!("steps {} is outside 1..=1000", self.steps)));
        }
        if !self.cfg_scale.is_finite() {
            return Err(Error::arg("the guidance scale must be a finite number"));
        }
        if let SamplerKind::Ddim { eta } = self.sampler {
            if !(0.0..=1.0).contains(&eta) {
                return Err(Error::arg(format!("DDIM eta {eta} is outside [0, 1]")));
            }
        }
        cfg.check_labels(&[self.label])?;
        let per = cfg.latent_len();
        let images = match &self.latent {
            Some(z) if z.is_empty() || !z.len().is_multiple_of(per) => {
                return Err(Error::arg(format!(
                    "the starting latent has {} values, not a whole number of ({}) latents",
                    z.len(),
                    cfg.latent_dims_text()
                )));
            }
            Some(z) => z.len() / per,
            None if self.num == 0 => return Err(Error::arg("the number of images must be at least 1")),
            None => self.num,
        };
        let schedule = self.schedule.unwrap_or(GridSchedule::Fixed(cfg.semantic_size));
        schedule.validate()?;
        if let (true, GridSchedule::Fixed(s)) = (cfg.uses_grid(), schedule) {
            if s > cfg.grid() {
                return Err(Error::arg(format!("sparse grid side {s} is outside 1..={}", cfg.grid())));
            }
            if cfg.pooled_middle.is_some() && s == cfg.grid() {
                return Err(Error::arg(format!(
                    "the pooled middle needs a grid coarser than the model's {0}x{0}: pick a grid side below {0} or a timestep schedule",
                    cfg.grid()
                )));
            }
        }
        let respacing = match (self.sampler, &self.respacing) {
            // DPM-Solver++ spaces its own K steps (time-uniform), as the reference solver.
            (SamplerKind::DpmSolverPp, Some(r)) => {
                return Err(Error::arg(format!("DPM-Solver++ spaces its own steps: drop the respacing {r:?}, give the step count")))
            }
            (SamplerKind::DpmSolverPp, None) => self.steps.to_string(),
            (_, r) => r.clone().unwrap_or_else(|| default_respacing(self.steps)),
        };
        let sampler = Sampler::new(&respacing, self.sampler, cfg.learn_sigma)?;
        let guidance = if self.cfg_scale > 1.0 {
            let null = cfg.null_label().ok_or_else(|| Error::arg("this model has no null label: use a guidance scale of 1"))?;
            let guided_channels = if self.guide_all_channels { cfg.in_channels } else { cfg.official_guided_channels() };
            Some(Guidance { scale: self.cfg_scale, guided_channels, null_label: null as i64 })
        } else {
            None
        };
        let timesteps: Vec<usize> = (0..sampler.num_steps()).map(|iter| sampler.timestep(iter)).collect();
        let mut plan = RunPlan { respacing, sampler, schedule, guidance, timesteps, grids: Vec::new(), images };
        plan.grids = plan.timesteps.iter().map(|&t| plan.grid_at(t, cfg)).collect();
        Ok(plan)
    }
}

/// What the driver reports after each denoising step (the CPU sampler's and `sample_gpu`'s).
pub struct Step<'a> {
    /// 0-based step of the run, and the number of steps.
    pub iter: usize,
    pub total: usize,
    /// Original timestep of the model call.
    pub timestep: usize,
    /// Sparse grid side used at this step.
    pub grid: usize,
    /// Predicted x0 (n, C, I, I) flattened, when the request asked for previews.
    pub pred_x0: Option<&'a [f32]>,
    /// Cross-attention maps of the first image, when the request asked for a trace.
    pub attention: &'a [StepAttention],
}

/// The result of [`Engine::sample`].
pub struct Sampled {
    /// (n, C, I, I) — clips (n, F, C, I, I) — flattened: the sample, or after a cancel the
    /// partly denoised latent.
    pub latent: Vec<f32>,
    pub shape: Vec<usize>,
    /// The step callback asked to stop before the last step.
    pub cancelled: bool,
    /// Steps run.
    pub steps_done: usize,
}

impl Engine {
    pub fn new(net: Net) -> Engine {
        Engine { net }
    }

    /// A model from named f32 tensors (official key names) on `gpu`, or on the CPU.
    pub fn from_tensors(gpu: Option<Rc<Gpu>>, cfg: Config, tensors: TensorMap) -> Result<Engine> {
        let net = match gpu {
            None => Net::Cpu(Box::new(Model::from_tensors(cfg, tensors)?)),
            Some(g) => {
                let model = GpuModel::load(&g, cfg, &EncodedMap { tensors: &tensors, quant: TensorType::F32 })?;
                Net::Gpu(g, Box::new(model))
            }
        };
        Ok(Engine::new(net))
    }

    /// A model from a parsed pack: its linear weights stay quantized on the GPU; the CPU path
    /// dequantizes them to f32.
    pub fn from_pack(gpu: Option<Rc<Gpu>>, cfg: Config, pack: &Gguf) -> Result<Engine> {
        Self::from_source(gpu, cfg, pack)
    }

    /// A model from any weight source (a pack, a streamed pack).
    pub fn from_source(gpu: Option<Rc<Gpu>>, cfg: Config, src: &dyn WeightSource) -> Result<Engine> {
        let net = match gpu {
            None => {
                let mut tensors = TensorMap::new();
                for (name, shape) in Model::expected_tensors(&cfg)? {
                    let (values, found) = src.f32(&name)?;
                    if found != shape {
                        return Err(Error::Shape { name, expected: shape, found });
                    }
                    tensors.insert(name, Tensor::from_vec(values, found, &Device::Cpu)?);
                }
                Net::Cpu(Box::new(Model::from_tensors(cfg, tensors)?))
            }
            Some(g) => {
                let model = GpuModel::load(&g, cfg, src)?;
                Net::Gpu(g, Box::new(model))
            }
        };
        Ok(Engine::new(net))
    }

    pub fn cfg(&self) -> &Config {
        match &self.net {
            Net::Cpu(m) => &m.cfg,
            Net::Gpu(_, m) => &m.cfg,
        }
    }

    pub fn net(&self) -> &Net {
        &self.net
    }

    /// The GPU the model runs on; `None` on the CPU path.
    pub fn gpu(&self) -> Option<&Rc<Gpu>> {
        match &self.net {
            Net::Gpu(g, _) => Some(g),
            Net::Cpu(_) => None,
        }
    }

    /// `cpu (candle)` or `gpu: <adapter>`.
    pub fn describe(&self) -> String {
        match self.gpu() {
            None => "cpu (candle)".into(),
            Some(g) => format!("gpu: {}", g.describe()),
        }
    }

    /// Turn the training-free pooled middle on (`Some`) or off.
    pub fn set_pooled_middle(&mut self, pm: Option<PooledMiddle>) -> Result<()> {
        match &mut self.net {
            Net::Cpu(m) => m.set_pooled_middle(pm),
            Net::Gpu(_, m) => m.set_pooled_middle(pm),
        }
    }

    /// model(x, t, y) at sparse grid `grid`: x (B, c_in, I, I) -> (B, c_out, I, I); video
    /// (B, F, c_in, I, I) -> (B, F, c_out, I, I).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward(&self, x: &Tensor, t: &[f32], y: &[i64], grid: usize) -> Result<Tensor> {
        match &self.net {
            Net::Cpu(m) => m.forward(x, t, y, grid),
            Net::Gpu(g, m) => {
                let c = &m.cfg;
                let b = c.check_inputs(x.dims(), t, y)?;
                let plan = m.plan(g, b, grid)?;
                let out = m.forward(g, &plan, &to_vec_f32(x)?, t, y)?;
                Ok(Tensor::from_vec(out, c.output_shape(b), &Device::Cpu)?)
            }
        }
    }

    /// Run a checked request: `on_step` sees every step and returns whether to go on; a `false`
    /// ends the run after that step with the partly denoised latent (`cancelled`).
    pub async fn sample(&self, req: &SampleRequest, on_step: impl FnMut(&Step) -> Result<bool>) -> Result<Sampled> {
        self.sample_yielding(req, on_step, || std::future::ready(true)).await
    }

    /// [`Engine::sample`], awaiting `between()` after every CPU-path step but the last; a `false`
    /// from it ends the run there as a `false` from `on_step` does. The browser's engine worker
    /// yields there, so a cancel message can arrive mid-run (the GPU path yields on its own,
    /// waiting for the device).
    pub async fn sample_yielding<F: std::future::Future<Output = bool>>(
        &self,
        req: &SampleRequest,
        mut on_step: impl FnMut(&Step) -> Result<bool>,
        mut between: impl FnMut() -> F,
    ) -> Result<Sampled> {
        let cfg = self.cfg();
        let plan = req.plan(cfg)?;
        let n = plan.images;
        let shape = cfg.latent_shape(n);
        // Same draws, same order on both backends: the latent first, then per-step noise.
        let mut noise = SeededNoise::new(req.seed);
        let z = match &req.latent {
            Some(z) => z.clone(),
            None => noise.normal(n * cfg.latent_len()),
        };
        let y = vec![req.label; n];
        let total = plan.grids.len();
        let mut steps_done = 0usize;
        let mut stopped = false;
        let latent = match &self.net {
            Net::Gpu(gpu, model) => {
                let opts = SampleOptions { preview: req.preview, trace: req.trace };
                sample_gpu(gpu, model, &plan.sampler, &z, &y, plan.guidance, &plan.schedule, &mut noise, opts, |s| {
                    steps_done += 1;
                    let go_on = on_step(s)?;
                    stopped = !go_on && s.iter + 1 < total;
                    Ok(go_on)
                })
                .await?
            }
            Net::Cpu(model) => {
                let zt = Tensor::from_vec(z, shape.as_slice(), &Device::Cpu)?;
                let maps: RefCell<Vec<StepAttention>> = RefCell::new(Vec::new());
                // The latent after the last reported step: what a stop (from `on_step` or from
                // `between`) returns. One buffer, refilled every step.
                let mut partial: Vec<f32> = Vec::new();
                // A stop was asked for (a `Cancelled` from anywhere else stays an error).
                let stop = std::cell::Cell::new(false);
                let run = plan.sampler.sample_yielding(
                    |x, t, yb| {
                        let grid = plan.grid_at(t[0] as usize, cfg);
                        if !req.trace {
                            return model.forward(x, t, yb, grid);
                        }
                        let mut trace = Vec::new();
                        let out = model.forward_traced(x, t, yb, grid, Some(&mut trace))?;
                        *maps.borrow_mut() = first_image_maps(&trace)?;
                        Ok(out)
                    },
                    &zt,
                    &y,
                    plan.guidance,
                    &mut noise,
                    |s| {
                        let attention = maps.take();
                        let step = Step {
                            iter: s.iter,
                            total,
                            timestep: s.timestep,
                            grid: plan.grids[s.iter],
                            pred_x0: req.preview.then_some(s.pred_x0),
                            attention: &attention,
                        };
                        steps_done += 1;
                        partial.clear();
                        partial.extend_from_slice(s.x);
                        if !on_step(&step)? && s.iter + 1 < total {
                            // Stop here: the sampler unwinds with `Cancelled`, the latent is kept.
                            stop.set(true);
                            return Err(Error::Cancelled);
                        }
                        Ok(())
                    },
                    || {
                        let next = between();
                        let stop = &stop;
                        async move {
                            let go_on = next.await;
                            stop.set(stop.get() || !go_on);
                            go_on
                        }
                    },
                )
                .await;
                match run {
                    Err(Error::Cancelled) if stop.get() => {
                        stopped = true;
                        partial
                    }
                    run => to_vec_f32(&run?)?,
                }
            }
        };
        Ok(Sampled { latent, shape, cancelled: stopped, steps_done })
    }
}

/// The head-averaged cross-attention maps of a CPU trace, first image of the batch only (as
/// the GPU sampler reads them back).
fn first_image_maps(trace: &[crate::model::BlockTrace]) -> Result<Vec<StepAttention>> {
    let mut out = Vec::new();
    for (block, tr) in trace.iter().enumerate() {
        if let (Some(probs), true) = (&tr.attention, tr.kind.has_cross_attention()) {
            let (_, tq, tk) = probs.dims3()?;
            out.push(StepAttention { block, name: tr.name.clone(), kind: tr.kind, tq, tk, probs: to_vec_f32(&probs.narrow(0, 0, 1)?)? });
        }
    }
    Ok(out)
}
