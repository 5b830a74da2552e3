//! Gaussian diffusion as in DiT's code: 1000 linear betas, respacing, DDPM with learned-range
//! variance, DDIM with eta, and classifier-free guidance with the reference semantics.
//!
//! Tables are built in f64 exactly as numpy builds them; a coefficient is rounded to f32 when it
//! is used (the reference's `_extract_into_tensor(...).float()`), and the per-element updates
//! follow the reference's f32 operation order.

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::dpm_solver::DpmSolverPp;
use crate::error::{Error, Result};
use crate::model::{apply_cfg, to_vec_f32};

/// Training timesteps T.
pub const NUM_TRAIN_TIMESTEPS: usize = 1000;

/// numpy.linspace(start, stop, num) in f64, bit for bit.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// DiT's "linear" schedule: betas from 1e-4 to 0.02, scaled by 1000 / T.
pub fn linear_betas(num_timesteps: usize) -> Vec<f64> {
    let scale = 1000.0 / num_timesteps as f64;
    linspace(scale * 0.0001, scale * 0.02, num_timesteps)
}

/// Which of the `num_timesteps` steps a respaced sampler keeps, ascending.
/// `"ddimK"`: the stride i with exactly K steps in range(0, T, i); otherwise comma-separated
/// section counts (`"250"`, `"10,15,20"`), DiT's `space_timesteps`.
pub fn space_timesteps(num_timesteps: usize, spec: &str) -> Result<Vec<usize>> {
    let spec = spec.trim();
    if let Some(k) = spec.strip_prefix("ddim") {
        let desired: usize = k.parse().map_err(|_| Error::arg(format!("respacing {spec:?}: expected ddimK")))?;
        for i in 1..num_timesteps {
            if (0..num_timesteps).step_by(i).count() == desired {
                return Ok((0..num_timesteps).step_by(i).collect());
            }
        }
        return Err(Error::arg(format!("cannot create exactly {desired} steps with an integer stride out of {num_timesteps}")));
    }
    let counts: Vec<usize> = spec
        .split(',')
        .map(|c| c.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::arg(format!("respacing {spec:?}: expected a step count like 250, or ddimK")))?;
    if counts.is_empty() || counts.contains(&0) {
        return Err(Error::arg(format!("respacing {spec:?}: step counts must be at least 1")));
    }
    let size_per = num_timesteps / counts.len();
    let extra = num_timesteps % counts.len();
    let mut start = 0usize;
    let mut steps = Vec::new();
    for (i, &count) in counts.iter().enumerate() {
        let size = size_per + usize::from(i < extra);
        if size < count {
            return Err(Error::arg(format!("cannot divide a section of {size} steps into {count}")));
        }
        let frac_stride = if count <= 1 { 1.0 } else { (size - 1) as f64 / (count - 1) as f64 };
        let mut cur = 0.0f64;
        for _ in 0..count {
            // Python's round(): half to even.
            steps.push(start + cur.round_ties_even() as usize);
            cur += frac_stride;
        }
        start += size;
    }
    steps.sort_unstable();
    steps.dedup();
    Ok(steps)
}

/// The default respacing for `steps` steps: `"K"`, K evenly strided timesteps from 0 to 999, for
/// DDPM and DDIM alike, as the official sample.py builds its diffusion (`create_diffusion(str(K))`).
/// `"ddimK"` (DDIM's integer stride: 0, 1000/K, ...) is there when asked for by name.
pub fn default_respacing(steps: usize) -> String {
    steps.to_string()
}

/// Variance of the reverse process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarianceType {
    /// Model outputs [eps, v]; log variance interpolates log(beta) and the clipped posterior.
    LearnedRange,
    /// DiT's default without learned sigma: beta_t (with the posterior variance at t = 1).
    FixedLarge,
}

/// A (possibly respaced) Gaussian diffusion process with all tables in f64.
#[derive(Clone, Debug)]
pub struct Diffusion {
    /// Original timestep of each respaced step (what the model is called with).
    pub timestep_map: Vec<usize>,
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    pub alphas_cumprod_prev: Vec<f64>,
    sqrt_recip_alphas_cumprod: Vec<f64>,
    sqrt_recipm1_alphas_cumprod: Vec<f64>,
    pub posterior_log_variance_clipped: Vec<f64>,
    posterior_mean_coef1: Vec<f64>,
    posterior_mean_coef2: Vec<f64>,
    log_betas: Vec<f64>,
    fixed_large_log_variance: Vec<f64>,
}

impl Diffusion {
    /// The respaced process keeping `respacing` of the 1000 linear-beta steps.
    pub fn new(respacing: &str) -> Result<Diffusion> {
        let base = linear_betas(NUM_TRAIN_TIMESTEPS);
        let keep = space_timesteps(NUM_TRAIN_TIMESTEPS, respacing)?;
        let mut betas = Vec::with_capacity(keep.len());
        let mut last = 1.0f64;
        let mut ac = 1.0f64;
        let mut k = 0;
        for (i, b) in base.iter().enumerate() {
            ac *= 1.0 - b;
            if k < keep.len() && keep[k] == i {
                betas.push(1.0 - ac / last);
                last = ac;
                k += 1;
            }
        }
        Ok(Self::from_betas(betas, keep))
    }

    fn from_betas(betas: Vec<f64>, timestep_map: Vec<usize>) -> Diffusion {
        let n = betas.len();
        let mut alphas_cumprod = Vec::with_capacity(n);
        let mut acc = 1.0f64;
        for b in &betas {
            acc *= 1.0 - b;
            alphas_cumprod.push(acc);
        }
        let mut alphas_cumprod_prev = vec![1.0];
        alphas_cumprod_prev.extend_from_slice(&alphas_cumprod[..n - 1]);
        let map = |f: &dyn Fn(usize) -> f64| (0..n).map(f).collect::<Vec<f64>>();
        let ac = &alphas_cumprod;
        let acp = &alphas_cumprod_prev;
        let posterior_variance = map(&|i| betas[i] * (1.0 - acp[i]) / (1.0 - ac[i]));
        let posterior_log_variance_clipped = if n > 1 {
            map(&|i| if i == 0 { posterior_variance[1].ln() } else { posterior_variance[i].ln() })
        } else {
            vec![f64::NEG_INFINITY; n]
        };
        let fixed_large_log_variance =
            map(&|i| if i == 0 && n > 1 { posterior_variance[1].ln() } else { betas[i].ln() });
        Diffusion {
            sqrt_recip_alphas_cumprod: map(&|i| (1.0 / ac[i]).sqrt()),
            sqrt_recipm1_alphas_cumprod: map(&|i| (1.0 / ac[i] - 1.0).sqrt()),
            posterior_mean_coef1: map(&|i| betas[i] * acp[i].sqrt() / (1.0 - ac[i])),
            posterior_mean_coef2: map(&|i| (1.0 - acp[i]) * (1.0 - betas[i]).sqrt() / (1.0 - ac[i])),
            log_betas: map(&|i| betas[i].ln()),
            posterior_log_variance_clipped,
            fixed_large_log_variance,
            timestep_map,
            alphas_cumprod_prev,
            alphas_cumprod,
            betas,
        }
    }

    /// Number of sampling steps.
    pub fn num_steps(&self) -> usize {
        self.betas.len()
    }

    /// The coefficients of respaced step `i`, rounded to f32 when used as the reference's
    /// `_extract_into_tensor(...).float()` rounds them (shared by the CPU and GPU samplers).
    pub fn coefficients(&self, i: usize) -> Result<StepCoefficients> {
        if i >= self.num_steps() {
            return Err(Error::arg(format!("step index {i} out of range 0..{}", self.num_steps())));
        }
        let f = |v: &[f64]| v[i] as f32;
        Ok(StepCoefficients {
            sqrt_recip_ac: f(&self.sqrt_recip_alphas_cumprod),
            sqrt_recipm1_ac: f(&self.sqrt_recipm1_alphas_cumprod),
            coef1: f(&self.posterior_mean_coef1),
            coef2: f(&self.posterior_mean_coef2),
            min_log: f(&self.posterior_log_variance_clipped),
            max_log: f(&self.log_betas),
            fixed_log: f(&self.fixed_large_log_variance),
            alpha_bar: f(&self.alphas_cumprod),
            alpha_bar_prev: f(&self.alphas_cumprod_prev),
        })
    }

    /// One reverse step at respaced index `i` (the loop runs i = K-1 .. 0).
    ///
    /// `x`: current latent, `model_out`: the (guided) model output with `2C` channels for
    /// [`VarianceType::LearnedRange`] or `C` for fixed variance, laid out (B, C_out, H, W);
    /// `batch` rows of `channels` channels; `noise`: standard normal of x's size (ignored at i = 0 and for deterministic DDIM).
    /// Returns (next x, predicted x0).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        kind: SamplerKind,
        var: VarianceType,
        i: usize,
        x: &[f32],
        model_out: &[f32],
        batch: usize,
        channels: usize,
        noise: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        if i >= self.num_steps() {
            return Err(Error::arg(format!("step index {i} out of range 0..{}", self.num_steps())));
        }
        let out_ch = if var == VarianceType::LearnedRange { 2 * channels } else { channels };
        if batch == 0 || channels == 0 || !x.len().is_multiple_of(batch * channels) || model_out.len() != x.len() / channels * out_ch || noise.len() != x.len() {
            return Err(Error::arg("diffusion step: x, model output and noise sizes disagree"));
        }
        if kind == SamplerKind::DpmSolverPp {
            return Err(Error::arg("Diffusion::step runs DDPM / DDIM; DPM-Solver++ steps with dpm_solver::DpmSolverPp"));
        }
        let k = self.coefficients(i)?;
        let (sr, srm1, c1, c2) = (k.sqrt_recip_ac, k.sqrt_recipm1_ac, k.coef1, k.coef2);
        let (min_log, max_log, fixed_log) = (k.min_log, k.max_log, k.fixed_log);
        let (ab, abp) = (k.alpha_bar, k.alpha_bar_prev);
        let nonzero = if i != 0 { 1.0f32 } else { 0.0 };

        let spatial = x.len() / (batch * channels); // H * W
        let mut next = vec![0f32; x.len()];
        let mut x0 = vec![0f32; x.len()];
        // Element e of x is (b, c, h, w); its eps is model_out[b, c, h, w] and, with learned
        // sigma, its v is model_out[b, C + c, h, w].
        for (e, (&xe, &ne)) in x.iter().zip(noise).enumerate() {
            let b = e / (channels * spatial);
            let rem = e % (channels * spatial);
            let base = b * out_ch * spatial;
            let eps = model_out[base + rem];
            let pred_x0 = sr * xe - srm1 * eps;
            x0[e] = pred_x0;
            next[e] = match kind {
                SamplerKind::Ddpm => {
                    let log_var = match var {
                        VarianceType::LearnedRange => {
                            let v = model_out[base + channels * spatial + rem];
                            let frac = (v + 1.0) / 2.0;
                            frac * max_log + (1.0 - frac) * min_log
                        }
                        VarianceType::FixedLarge => fixed_log,
                    };
                    let mean = c1 * pred_x0 + c2 * xe;
                    mean + nonzero * (0.5 * log_var).exp() * ne
                }
                SamplerKind::Ddim { eta } => {
                    let eps2 = (sr * xe - pred_x0) / srm1;
                    let sigma = eta as f32 * ((1.0 - abp) / (1.0 - ab)).sqrt() * (1.0 - ab / abp).sqrt();
                    let mean = pred_x0 * abp.sqrt() + (1.0 - abp - sigma * sigma).sqrt() * eps2;
                    mean + nonzero * sigma * ne
                }
                SamplerKind::DpmSolverPp => xe, // refused above
            };
        }
        Ok((next, x0))
    }
}

/// Per-step coefficients of the reverse process, as f32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCoefficients {
    pub sqrt_recip_ac: f32,
    pub sqrt_recipm1_ac: f32,
    /// Posterior mean coefficients of x0 and x_t.
    pub coef1: f32,
    pub coef2: f32,
    /// Clipped posterior log variance (the learned range's minimum).
    pub min_log: f32,
    /// log beta (the learned range's maximum).
    pub max_log: f32,
    /// DiT's fixed large log variance (log beta; the posterior's at i = 0).
    pub fixed_log: f32,
    pub alpha_bar: f32,
    pub alpha_bar_prev: f32,
}

/// The reverse-process update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SamplerKind {
    /// Ancestral sampling with the model's (learned or fixed) variance.
    Ddpm,
    /// DDIM with stochasticity eta (0 = deterministic).
    Ddim { eta: f64 },
    /// DPM-Solver++ (2M, multistep; `dpm_solver.rs`): an ODE solver, no noise, K model calls at
    /// fractional timesteps.
    DpmSolverPp,
}

impl SamplerKind {
    pub fn parse(name: &str, eta: f64) -> Result<SamplerKind> {
        match name.to_ascii_lowercase().as_str() {
            "ddpm" => Ok(SamplerKind::Ddpm),
            "ddim" => {
                if !(0.0..=1.0).contains(&eta) {
                    return Err(Error::arg(format!("DDIM eta {eta} is outside [0, 1]")));
                }
                Ok(SamplerKind::Ddim { eta })
            }
            "dpm-solver++" | "dpmsolver++" | "dpm++" => Ok(SamplerKind::DpmSolverPp),
            other => Err(Error::arg(format!("unknown sampler {other:?} (ddim, ddpm or dpm-solver++)"))),
        }
    }

    /// The same sampler with DDIM's `eta` set (checked); DDPM ignores it.
    pub fn with_eta(self, eta: f64) -> Result<SamplerKind> {
        match self {
            SamplerKind::Ddim { .. } => SamplerKind::parse("ddim", eta),
            other => Ok(other),
        }
    }
}

/// Where per-step Gaussian noise comes from.
pub trait NoiseSource {
    /// Fill `out` with standard normal noise for loop iteration `iter` (0 = first step).
    fn fill(&mut self, iter: usize, out: &mut [f32]) -> Result<()>;
}

/// Seeded noise: ChaCha8 stream + standard normal. The initial latent is drawn first, then one
/// draw per step, so a seed fixes the whole sample on every platform (native and wasm).
pub struct SeededNoise(ChaCha8Rng);

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        SeededNoise(ChaCha8Rng::seed_from_u64(seed))
    }
    pub fn normal(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| StandardNormal.sample(&mut self.0)).collect()
    }
}

impl NoiseSource for SeededNoise {
    fn fill(&mut self, _iter: usize, out: &mut [f32]) -> Result<()> {
        for v in out.iter_mut() {
            *v = StandardNormal.sample(&mut self.0);
        }
        Ok(())
    }
}

/// Noise given up front, one slab of x's size per loop iteration (to reproduce a reference run).
pub struct GivenNoise {
    pub data: Vec<f32>,
    pub per_step: usize,
}

impl NoiseSource for GivenNoise {
    fn fill(&mut self, iter: usize, out: &mut [f32]) -> Result<()> {
        let start = iter * self.per_step;
        let slab = self
            .data
            .get(start..start + self.per_step)
            .ok_or_else(|| Error::arg(format!("given noise has no slab for step {iter}")))?;
        if out.len() != self.per_step {
            return Err(Error::arg("given noise slab size differs from the latent size"));
        }
        out.copy_from_slice(slab);
        Ok(())
    }
}

/// Classifier-free guidance settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Guidance {
    pub scale: f64,
    /// Output channels guided: 3 in the official code (a documented quirk), `in_channels` for
    /// the standard form.
    pub guided_channels: usize,
    /// The null label.
    pub null_label: i64,
}

/// What the sampler reports after each step (for progress bars and previews).
pub struct StepInfo<'a> {
    /// 0-based loop iteration.
    pub iter: usize,
    pub total: usize,
    /// Original timestep the model was called with.
    pub timestep: usize,
    /// The new latent (n, C, H, W), flattened.
    pub x: &'a [f32],
    /// The predicted x0 at this step, flattened.
    pub pred_x0: &'a [f32],
}

/// A sampling run: process + update rule + variance type.
pub struct Sampler {
    /// The respaced process DDPM / DDIM step through (for DPM-Solver++: K evenly respaced steps,
    /// only its length is used).
    pub diffusion: Diffusion,
    pub kind: SamplerKind,
    pub variance: VarianceType,
    /// DPM-Solver++'s steps, when `kind` is [`SamplerKind::DpmSolverPp`].
    pub dpm: Option<DpmSolverPp>,
}

impl Sampler {
    /// A sampler over `respacing` (DDPM / DDIM: e.g. `250`, `ddim50`; DPM-Solver++: the step
    /// count K, time-uniform over DiT's 1000 training steps as the reference solver).
    pub fn new(respacing: &str, kind: SamplerKind, learn_sigma: bool) -> Result<Sampler> {
        let dpm = match kind {
            SamplerKind::DpmSolverPp => {
                let k: usize = respacing
                    .parse()
                    .map_err(|_| Error::arg(format!("DPM-Solver++ takes a step count, not the respacing {respacing:?}")))?;
                Some(DpmSolverPp::new(&linear_betas(NUM_TRAIN_TIMESTEPS), k)?)
            }
            _ => None,
        };
        Ok(Sampler {
            diffusion: Diffusion::new(respacing)?,
            kind,
            variance: if learn_sigma { VarianceType::LearnedRange } else { VarianceType::FixedLarge },
            dpm,
        })
    }

    /// Model calls of a run.
    pub fn num_steps(&self) -> usize {
        self.diffusion.num_steps()
    }

    /// The timestep input of the model at loop iteration `iter` (0 = first call): the original
    /// timestep of the respaced step, or DPM-Solver++'s `(t_k - 1/N) * 1000`.
    pub fn model_t(&self, iter: usize) -> f32 {
        match &self.dpm {
            Some(d) => d.steps[iter].model_t as f32,
            None => self.diffusion.timestep_map[self.num_steps() - 1 - iter] as f32,
        }
    }

    /// The timestep reported for iteration `iter` (and the one a grid schedule reads): the
    /// model's input, rounded.
    pub fn timestep(&self, iter: usize) -> usize {
        match &self.dpm {
            Some(d) => d.steps[iter].model_t.round().max(0.0) as usize,
            None => self.diffusion.timestep_map[self.num_steps() - 1 - iter],
        }
    }

    /// Whether iteration `iter` draws Gaussian noise (DDPM and DDIM with eta > 0 before the
    /// last step).
    pub fn needs_noise(&self, iter: usize) -> bool {
        let last = iter + 1 == self.num_steps();
        !last && !matches!(self.kind, SamplerKind::Ddim { eta } if eta == 0.0) && self.kind != SamplerKind::DpmSolverPp
    }

    /// Run the reverse process from `z` (n, C, H, W) — or clips (n, F, C, H, W) — for labels
    /// `y` (n).
    ///
    /// `model(x, t, y)` evaluates the denoiser on a batch (B, C, H, W) with original timesteps
    /// `t` and labels `y`, returning (B, C_out, H, W). With guidance, each call gets the batch
    /// [x; x] with labels [y; null] (the reference's `forward_with_cfg` on its doubled batch),
    /// and the guided first half drives the update.
    pub fn sample<M, P>(&self, model: M, z: &Tensor, y: &[i64], guidance: Option<Guidance>, noise: &mut dyn NoiseSource, on_step: P) -> Result<Tensor>
    where
        M: FnMut(&Tensor, &[f32], &[i64]) -> Result<Tensor>,
        P: FnMut(&StepInfo) -> Result<()>,
    {
        // Nothing waits between steps here, so one poll runs the whole loop.
        let run = std::pin::pin!(self.sample_yielding(model, z, y, guidance, noise, on_step, || std::future::ready(true)));
        match std::future::Future::poll(run, &mut std::task::Context::from_waker(std::task::Waker::noop())) {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => unreachable!("sample awaits only ready futures"),
        }
    }

    /// [`Sampler::sample`], awaiting `between()` after every step's `on_step` but the last: the
    /// browser's engine worker yields there, so a cancel message can arrive mid-run. A `false`
    /// from it stops the run with [`Error::Cancelled`] (the last `on_step` saw the latent).
    #[allow(clippy::too_many_arguments)]
    pub async fn sample_yielding<M, P, B, F>(
        &self,
        mut model: M,
        z: &Tensor,
        y: &[i64],
        guidance: Option<Guidance>,
        noise: &mut dyn NoiseSource,
        mut on_step: P,
        mut between: B,
    ) -> Result<Tensor>
    where
        M: FnMut(&Tensor, &[f32], &[i64]) -> Result<Tensor>,
        P: FnMut(&StepInfo) -> Result<()>,
        B: FnMut() -> F,
        F: std::future::Future<Output = bool>,
    {
        let dims = z.dims().to_vec();
        if !(dims.len() == 4 || dims.len() == 5) || dims[0] != y.len() || dims[0] == 0 {
            return Err(Error::arg(format!("latent z has shape {dims:?} for {} labels: expected (n, C, H, W) or (n, F, C, H, W)", y.len())));
        }
        // The step is elementwise per (row, channel): a clip's frames are rows of C channels
        // (Latte's diffusion splits eps and v on dim 2, DiT's on dim 1).
        let n = dims[0];
        let channels = dims[dims.len() - 3];
        let step_rows: usize = dims[..dims.len() - 3].iter().product();
        let dev = Device::Cpu;
        let mut x = to_vec_f32(z)?;
        let mut noise_buf = vec![0f32; x.len()];
        let mut m_prev: Vec<f32> = Vec::new(); // DPM-Solver++: the previous data prediction
        let total = self.num_steps();
        for (iter, i) in (0..total).rev().enumerate() {
            let t_model = self.model_t(iter);
            let xt = Tensor::from_slice(&x, dims.as_slice(), &dev)?;
            let out = match guidance {
                Some(g) => {
                    let batch = Tensor::cat(&[&xt, &xt], 0)?;
                    let mut labels = y.to_vec();
                    labels.extend(std::iter::repeat_n(g.null_label, n));
                    let raw = model(&batch, &vec![t_model; 2 * n], &labels)?;
                    apply_cfg(&raw, g.scale, g.guided_channels)?.narrow(0, 0, n)?
                }
                None => model(&xt, &vec![t_model; n], y)?,
            };
            let (next, x0) = match &self.dpm {
                Some(dpm) => {
                    // model_type="noise": the first C channels of the (guided) output
                    let eps = to_vec_f32(&out.narrow(dims.len() - 3, 0, channels)?)?;
                    let (next, m) = dpm.step(iter, &x, &eps, &m_prev)?;
                    m_prev = m.clone();
                    (next, m)
                }
                None => {
                    let out_v = to_vec_f32(&out)?;
                    if self.needs_noise(iter) {
                        noise.fill(iter, &mut noise_buf)?;
                    }
                    self.diffusion.step(self.kind, self.variance, i, &x, &out_v, step_rows, channels, &noise_buf)?
                }
            };
            x = next;
            on_step(&StepInfo { iter, total, timestep: self.timestep(iter), x: &x, pred_x0: &x0 })?;
            if iter + 1 < total && !between().await {
                return Err(Error::Cancelled);
            }
        }
        Ok(Tensor::from_vec(x, dims.as_slice(), &dev)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respacing_matches_dit() {
        let t = space_timesteps(1000, "ddim10").unwrap();
        assert_eq!(t, (0..1000).step_by(100).collect::<Vec<_>>());
        let t = space_timesteps(1000, "10").unwrap();
        assert_eq!(t, vec![0, 111, 222, 333, 444, 555, 666, 777, 888, 999]);
        let t = space_timesteps(1000, "250").unwrap();
        assert_eq!(t.len(), 250);
        assert_eq!(t[1], 4);
        assert_eq!(*t.last().unwrap(), 999);
        // ddimK: the first stride with exactly K steps (143 for 7), an error when none has.
        assert_eq!(space_timesteps(1000, "ddim7").unwrap(), vec![0, 143, 286, 429, 572, 715, 858]);
        let e = space_timesteps(1000, "ddim999").unwrap_err().to_string();
        assert!(e.contains("cannot create exactly 999 steps"), "{e}");
        assert!(space_timesteps(1000, "0").is_err());
        assert!(space_timesteps(1000, "x").is_err());
    }

    #[test]
    fn default_respacing_is_the_official_k_for_both_samplers() {
        // sample.py: create_diffusion(str(K)), also for DDIM; ddim7 (no t = 999) only by name.
        assert_eq!(default_respacing(10), "10");
        let d = Diffusion::new(&default_respacing(7)).unwrap();
        assert_eq!(d.timestep_map, vec![0, 166, 333, 500, 666, 832, 999]);
    }

    #[test]
    fn base_process_tables() {
        let d = Diffusion::new("1000").unwrap();
        assert_eq!(d.num_steps(), 1000);
        assert!((d.betas[0] - 1e-4).abs() < 1e-12);
        assert!((d.betas[999] - 0.02).abs() < 1e-12);
        assert!((d.alphas_cumprod[999] - 4.035e-5).abs() < 1e-7);
    }
}
