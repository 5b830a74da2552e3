// One reverse diffusion step, fused with classifier-free guidance (model::apply_cfg +
// Diffusion::step, same formulas and f32 operation order). One invocation per element e of the
// latent x (n, C, H, W), e = (b, c, sp):
//   out(ch)  = uncond + scale * (cond - uncond) for ch < guided_channels when guided, with
//              cond = model_out[b, ch, sp], uncond = model_out[n + b, ch, sp]; else model_out[b, ch, sp]
//   eps      = out(c);  pred_x0 = sr * x - srm1 * eps
//   DDPM:    log_var = frac * max_log + (1 - frac) * min_log, frac = (out(C + c) + 1) / 2 (learned
//            range) or the fixed log variance; x' = c1 * pred_x0 + c2 * x + nonzero * exp(log_var / 2) * noise
//   DDIM:    eps2 = (sr * x - pred_x0) / srm1; x' = pred_x0 * sqrt(abp) + dir * eps2 + nonzero * sigma * noise
//   DPM-Solver++ (dpm_solver.rs): pred_x0 = sr * x - srm1 * eps with sr = 1 / alpha_s, srm1 =
//            sigma_s / alpha_s; x' = c2 * x + c1 * pred_x0 + c3 * x0_prev, x0_prev being what
//            x0_out held from the previous step (read before this step's pred_x0 replaces it)
// Per-step scalars (sigma, sqrt(abp), dir = sqrt(1 - abp - sigma^2), the fixed std) are computed
// on the host in f32 exactly as Diffusion::step computes them.

struct Params {
    n: u32,          // latent batch (the model batch is 2n when guided)
    C: u32,          // latent channels
    C_out: u32,      // model output channels (2C with learned sigma)
    S: u32,          // H * W
    guided: u32,     // 1: model_out is [cond; uncond] (2n rows) and is combined
    g: u32,          // guided channels, min(guided_channels, C_out)
    learned: u32,    // 1: learned-range variance from channels C .. 2C
    mode: u32,       // 0: DDPM, 1: DDIM, 2: DPM-Solver++
    cfg_scale: f32,
    sr: f32,         // sqrt(1 / alpha_bar)
    srm1: f32,       // sqrt(1 / alpha_bar - 1)
    c1: f32,         // posterior mean coefficient of pred_x0
    c2: f32,         // posterior mean coefficient of x
    min_log: f32,    // clipped posterior log variance
    max_log: f32,    // log beta
    fixed_std: f32,  // exp(0.5 * fixed large log variance)
    sigma: f32,      // DDIM sigma
    sqrt_abp: f32,   // sqrt(alpha_bar_prev)
    dir: f32,        // sqrt(1 - alpha_bar_prev - sigma^2)
    nonzero: f32,    // 0 at the last step (i = 0), else 1
    c3: f32,         // DPM-Solver++: coefficient of the previous step's pred_x0
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;      // (n, C, H, W), updated in place
@group(0) @binding(2) var<storage, read> model_out: array<f32>;    // (2n or n, C_out, H, W)
@group(0) @binding(3) var<storage, read> noise: array<f32>;        // (n, C, H, W)
@group(0) @binding(4) var<storage, read_write> x0_out: array<f32>; // (n, C, H, W) predicted x0

const WG: u32 = 256u;

// The (guided) model output of row b, channel ch, position sp.
fn out_at(b: u32, ch: u32, sp: u32) -> f32 {
    let cond = model_out[(b * p.C_out + ch) * p.S + sp];
    if (p.guided == 1u && ch < p.g) {
        let uncond = model_out[((p.n + b) * p.C_out + ch) * p.S + sp];
        return uncond + (cond - uncond) * p.cfg_scale;
    }
    return cond;
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = (wg.x + wg.y * 65535u) * WG + lid.x;
    if (e >= p.n * p.C * p.S) { return; }
    let sp = e % p.S;
    let r = e / p.S; // b * C + c
    let c = r % p.C;
    let b = r / p.C;
    let xe = x[e];
    let eps = out_at(b, c, sp);
    let pred_x0 = p.sr * xe - p.srm1 * eps;
    var next: f32;
    if (p.mode == 2u) {
        let prev = x0_out[e];
        x0_out[e] = pred_x0;
        x[e] = p.c2 * xe + p.c1 * pred_x0 + p.c3 * prev;
        return;
    }
    x0_out[e] = pred_x0;
    if (p.mode == 1u) {
        let eps2 = (p.sr * xe - pred_x0) / p.srm1;
        let mean = pred_x0 * p.sqrt_abp + p.dir * eps2;
        next = mean + p.nonzero * p.sigma * noise[e];
    } else {
        var sd = p.fixed_std;
        if (p.learned == 1u) {
            let v = out_at(b, p.C + c, sp);
            let frac = (v + 1.0) * 0.5;
            let log_var = frac * p.max_log + (1.0 - frac) * p.min_log;
            sd = exp(0.5 * log_var);
        }
        let mean = p.c1 * pred_x0 + p.c2 * xe;
        next = mean + p.nonzero * sd * noise[e];
    }
    x[e] = next;
}
