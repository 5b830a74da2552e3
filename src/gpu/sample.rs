//! The whole sampler on the GPU: each denoising step is one submission (copy the latent into
//! the [x; x] model batch, the forward plan, the fused CFG + DDPM/DDIM update), and nothing is
//! read back until the end unless a preview is asked for.
//!
//! Noise is drawn on the host from the same [`NoiseSource`] in the same order as the CPU
//! sampler, so a seed gives the same sample on both backends (up to float rounding).

use std::collections::HashMap;

use crate::diffusion::{Guidance, NoiseSource, Sampler, NUM_TRAIN_TIMESTEPS};
use crate::engine::Step;
use crate::error::{Error, Result};
use crate::gpu::model::{GpuModel, Plan};
use crate::gpu::ops::tokens::{sampler_step, SamplerStepParams};
use crate::gpu::Gpu;
use crate::config::GridSchedule;

/// What a sampling run reads back after each step (nothing by default: one readback at the end).
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleOptions {
    /// Read the predicted x0 back after every step (live preview).
    pub preview: bool,
    /// Capture and read back the head-averaged attention maps of merge / recover blocks.
    pub trace: bool,
}

/// One merge / recover block's head-averaged cross-attention at one step, first image only.
#[derive(Clone, Debug)]
pub struct StepAttention {
    /// Index of the block in forward order.
    pub block: usize,
    pub name: String,
    /// Merge or recover.
    pub kind: crate::blocks::BlockKind,
    /// Query and key token counts (merge: s² x N; recover: N x s²).
    pub tq: usize,
    pub tk: usize,
    /// (tq, tk) row-major; each row sums to 1.
    pub probs: Vec<f32>,
}

/// Sample `n = y.len()` latents z (n, [F,] C, H, W) for labels `y` on the GPU. `on_step` returns whether
/// to go on: `false` stops after that step and returns the partly denoised latent.
#[allow(clippy::too_many_arguments)]
pub async fn sample_gpu(
    gpu: &Gpu,
    model: &GpuModel,
    sampler: &Sampler,
    z: &[f32],
    y: &[i64],
    guidance: Option<Guidance>,
    schedule: &GridSchedule,
    noise: &mut dyn NoiseSource,
    opts: SampleOptions,
    mut on_step: impl FnMut(&Step) -> Result<bool>,
) -> Result<Vec<f32>> {
    let cfg = &model.cfg;
    let chw = cfg.latent_len(); // one latent: [F ×] C × H × W
    let n = y.len();
    if n == 0 || z.len() != n * chw {
        return Err(Error::arg(format!("latent has {} values for {n} labels of {chw}", z.len())));
    }
    cfg.check_labels(y)?;
    let rows = if guidance.is_some() { 2 * n } else { n };
    let mut labels = y.to_vec();
    if let Some(g) = guidance {
        labels.extend(std::iter::repeat_n(g.null_label, n));
    }
    let x = gpu.upload("latent", z)?; // (n, C, H, W)
    let x0 = gpu.zeros("pred_x0", n * chw)?; // (n, C, H, W)
    let noise_buf = gpu.zeros("noise", n * chw)?; // (n, C, H, W)
    let mut host_noise = vec![0f32; n * chw];
    let mut plans: HashMap<usize, Plan> = HashMap::new();
    let total = sampler.num_steps();
    let spatial = cfg.input_size * cfg.input_size;
    // The step works image by image: a clip's F frames are F images (eps / variance split per
    // frame, Latte's `dim=2`), the [cond; uncond] halves n·F images apart.
    let images = n * cfg.frames();
    for (iter, i) in (0..total).rev().enumerate() {
        let t_orig = sampler.timestep(iter);
        // (a dense model runs at its dense grid whatever the schedule says)
        let grid = if cfg.uses_grid() { schedule.grid_at(t_orig as f64, NUM_TRAIN_TIMESTEPS, cfg.num_tokens()) } else { cfg.grid() };
        if !plans.contains_key(&grid) {
            // Plans of later grids share the first plan's activation buffers.
            let plan = match plans.values().next() {
                Some(first) => model.plan_sharing(gpu, first, grid, opts.trace)?,
                None => model.plan_with(gpu, rows, grid, opts.trace)?,
            };
            plans.insert(grid, plan);
        }
        let plan = &plans[&grid];
        model.write_inputs(gpu, plan, None, &vec![sampler.model_t(iter); rows], &labels)?;
        if sampler.needs_noise(iter) {
            noise.fill(iter, &mut host_noise)?;
            gpu.write(&noise_buf, &host_noise)?;
        }
        let params = match &sampler.dpm {
            // pred_x0 holds the previous step's data prediction, which the second-order update reads
            Some(dpm) => SamplerStepParams::dpm_solver(&dpm.steps[iter], images, cfg.in_channels, cfg.out_channels(), spatial, guidance),
            None => SamplerStepParams::new(&sampler.diffusion, i, sampler.kind, sampler.variance, images, cfg.in_channels, spatial, guidance)?,
        };
        let step = sampler_step(gpu, "sampler_step", &x, &plan.out, &noise_buf, &x0, &params)?;
        let mut copies = vec![(&x, &plan.x_in, 0usize)];
        if guidance.is_some() {
            copies.push((&x, &plan.x_in, n * chw));
        }
        gpu.run_step(&copies, &[&plan.dispatches, std::slice::from_ref(&step)])?;
        let pred = if opts.preview { Some(gpu.read_async(&x0).await?) } else { None };
        let mut attention = Vec::new();
        if opts.trace {
            for cap in &plan.attention {
                let mut probs = gpu.read_async(&cap.buf).await?;
                probs.truncate(cap.tq * cap.tk); // first image of the batch
                let block = plan.blocks.iter().position(|b| b.name == cap.block).ok_or_else(|| Error::arch(format!("captured map of an unknown block {}", cap.block)))?;
                let kind = plan.blocks[block].kind;
                attention.push(StepAttention { block, name: cap.block.clone(), kind, tq: cap.tq, tk: cap.tk, probs });
            }
        }
        let go_on = on_step(&Step { iter, total, timestep: t_orig, grid, pred_x0: pred.as_deref(), attention: &attention })?;
        if !go_on {
            break;
        }
    }
    let mut out = gpu.read_async(&x).await?;
    out.truncate(n * chw);
    Ok(out)
}
