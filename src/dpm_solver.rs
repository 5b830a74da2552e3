//! DPM-Solver++ (2M, multistep) for DiT's discrete-time diffusion, as the reference
//! implementation (`dpm_solver_pytorch.py` of LuChengTHU/dpm-solver) runs it with
//! `NoiseScheduleVP('discrete', betas)`, `model_type="noise"`, `algorithm_type="dpmsolver++"`,
//! `order=2`, `skip_type="time_uniform"`, `method="multistep"`, `lower_order_final=True` and the
//! default `t_start` / `t_end` (1 and 1/N).
//!
//! Everything here is the per-step arithmetic on scalars; the samplers (`diffusion::Sampler` on
//! the CPU, `gpu::sample` in WGSL) apply it elementwise. Step k (0-based, K steps) evaluates the
//! model once at continuous time t_k (the model's timestep input is `(t_k - 1/N) * 1000`, a
//! fraction in general), turns its epsilon into the data prediction
//! `m_k = (x_k - sigma_k eps) / alpha_k`, and moves to t_{k+1}:
//!
//! - first order (k = 0, and the last steps when K < 10): `x = (sigma_{k+1}/sigma_k) x - alpha_{k+1} phi m_k`,
//! - second order: the same plus `- 0.5 alpha_{k+1} phi (m_k - m_{k-1}) / r`, r = h_{k-1} / h_k,
//!
//! with lambda = log alpha - log sigma, h_k = lambda_{k+1} - lambda_k and phi = expm1(-h_k).

use crate::error::{Error, Result};

/// `NoiseScheduleVP('discrete', betas)`: log alpha_t (alpha_t = sqrt(alpha_bar)) interpolated
/// piecewise linearly over t_n = (n + 1) / N, after the reference's `numerical_clip_alpha`
/// (the tail where lambda < -5.1 is dropped; DiT's linear schedule keeps all 1000 steps).
#[derive(Clone, Debug)]
pub struct NoiseScheduleVp {
    log_alpha: Vec<f64>,
    t: Vec<f64>,
}

impl NoiseScheduleVp {
    pub fn discrete(betas: &[f64]) -> Result<NoiseScheduleVp> {
        if betas.len() < 2 || betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return Err(Error::arg("DPM-Solver++ needs at least 2 betas in [0, 1)"));
        }
        let mut acc = 0.0;
        let mut log_alpha: Vec<f64> = betas
            .iter()
            .map(|b| {
                acc += 0.5 * (1.0 - b).ln();
                acc
            })
            .collect();
        // numerical_clip_alpha(clipped_lambda = -5.1): searchsorted over the flipped lambdas.
        let lambda = |la: f64| la - 0.5 * (1.0 - (2.0 * la).exp()).ln();
        let clip = log_alpha.iter().rev().take_while(|&&la| lambda(la) < -5.1).count();
        log_alpha.truncate(log_alpha.len() - clip);
        let n = log_alpha.len();
        let t = (1..=n).map(|i| i as f64 / n as f64).collect();
        Ok(NoiseScheduleVp { log_alpha, t })
    }

    /// N: the steps the schedule keeps (t_0 = 1/N is where sampling ends).
    pub fn total_n(&self) -> usize {
        self.log_alpha.len()
    }

    /// log alpha_t by `interpolate_fn`: linear between the keypoints, extended linearly beyond
    /// the first and last pair.
    pub fn log_mean(&self, t: f64) -> f64 {
        let (xs, ys) = (&self.t, &self.log_alpha);
        let k = xs.len();
        let j = xs.partition_point(|&x| x < t).clamp(1, k - 1); // right keypoint of the segment
        let (x0, x1, y0, y1) = (xs[j - 1], xs[j], ys[j - 1], ys[j]);
        y0 + (t - x0) * (y1 - y0) / (x1 - x0)
    }

    pub fn alpha(&self, t: f64) -> f64 {
        self.log_mean(t).exp()
    }

    pub fn sigma(&self, t: f64) -> f64 {
        (1.0 - (2.0 * self.log_mean(t)).exp()).sqrt()
    }

    /// Half log-SNR: log alpha_t - log sigma_t.
    pub fn lambda(&self, t: f64) -> f64 {
        let la = self.log_mean(t);
        la - 0.5 * (1.0 - (2.0 * la).exp()).ln()
    }

    /// The model's timestep input for continuous time t: `(t - 1/N) * 1000`.
    pub fn model_time(&self, t: f64) -> f64 {
        (t - 1.0 / self.total_n() as f64) * 1000.0
    }
}

/// One step's scalars: data prediction `m = sr * x - srm1 * eps`, then
/// `x' = a * x + b * m + c * m_prev`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpmStep {
    /// 1 or 2.
    pub order: usize,
    /// The model's timestep input at this step.
    pub model_t: f64,
    /// 1 / alpha_s and sigma_s / alpha_s.
    pub sr: f64,
    pub srm1: f64,
    pub a: f64,
    pub b: f64,
    /// 0 for a first-order step.
    pub c: f64,
}

/// The K steps of a DPM-Solver++(2M) run.
#[derive(Clone, Debug)]
pub struct DpmSolverPp {
    pub steps: Vec<DpmStep>,
}

impl DpmSolverPp {
    /// K steps on `betas` (DiT: `linear_betas(1000)`), time-uniform from 1 to 1/N.
    pub fn new(betas: &[f64], k: usize) -> Result<DpmSolverPp> {
        if k < 2 {
            return Err(Error::arg(format!("DPM-Solver++ (2M) needs at least 2 steps, got {k}")));
        }
        let ns = NoiseScheduleVp::discrete(betas)?;
        let (t_end, t_start) = (1.0 / ns.total_n() as f64, 1.0);
        // torch.linspace(t_T, t_0, K + 1)
        let times: Vec<f64> = (0..=k).map(|i| t_start + (t_end - t_start) * i as f64 / k as f64).collect();
        let lambdas: Vec<f64> = times.iter().map(|&t| ns.lambda(t)).collect();
        let steps = (0..k)
            .map(|i| {
                // `lower_order_final` applies only below 10 steps in the reference.
                let order = if i == 0 { 1 } else if k < 10 { 2.min(k - i) } else { 2 };
                let (s, t) = (times[i], times[i + 1]);
                let (alpha_s, sigma_s) = (ns.alpha(s), ns.sigma(s));
                let (alpha_t, sigma_t) = (ns.alpha(t), ns.sigma(t));
                let h = lambdas[i + 1] - lambdas[i];
                let phi = (-h).exp_m1();
                let (a, first) = (sigma_t / sigma_s, -alpha_t * phi);
                let (b, c) = if order == 1 {
                    (first, 0.0)
                } else {
                    let r = (lambdas[i] - lambdas[i - 1]) / h;
                    // - alpha_t phi m_k - 0.5 alpha_t phi (m_k - m_{k-1}) / r
                    (first * (1.0 + 0.5 / r), -first * 0.5 / r)
                };
                DpmStep { order, model_t: ns.model_time(s), sr: 1.0 / alpha_s, srm1: sigma_s / alpha_s, a, b, c }
            })
            .collect();
        Ok(DpmSolverPp { steps })
    }

    /// Step `k` on flattened values: returns (x', m_k). `eps` is the (guided) noise prediction
    /// for x, `m_prev` the previous step's data prediction (ignored at first order).
    pub fn step(&self, k: usize, x: &[f32], eps: &[f32], m_prev: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let st = self.steps.get(k).ok_or_else(|| Error::arg(format!("DPM-Solver++ step {k} of {}", self.steps.len())))?;
        if eps.len() != x.len() || (st.order == 2 && m_prev.len() != x.len()) {
            return Err(Error::arg("DPM-Solver++ step: x, eps and the previous prediction sizes disagree"));
        }
        let s = st.as_f32();
        let m: Vec<f32> = x.iter().zip(eps).map(|(&xe, &ee)| s.sr * xe - s.srm1 * ee).collect();
        let next = x
            .iter()
            .zip(&m)
            .enumerate()
            .map(|(e, (&xe, &me))| {
                let prev = if st.order == 2 { s.c * m_prev[e] } else { 0.0 };
                s.a * xe + s.b * me + prev
            })
            .collect();
        Ok((next, m))
    }
}

/// A step's scalars rounded to f32, as both samplers apply them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpmStepF32 {
    pub sr: f32,
    pub srm1: f32,
    pub a: f32,
    pub b: f32,
    pub c: f32,
}

impl DpmStep {
    pub fn as_f32(&self) -> DpmStepF32 {
        DpmStepF32 { sr: self.sr as f32, srm1: self.srm1 as f32, a: self.a as f32, b: self.b as f32, c: self.c as f32 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::linear_betas;

    #[test]
    fn schedule_matches_the_reference_definitions() {
        let betas = linear_betas(1000);
        let ns = NoiseScheduleVp::discrete(&betas).unwrap();
        assert_eq!(ns.total_n(), 1000, "DiT's schedule is not clipped (lambda at T is -5.06)");
        // At the keypoints alpha_t^2 is DDPM's alpha_bar.
        let mut ab = 1.0;
        for (n, b) in betas.iter().enumerate() {
            ab *= 1.0 - b;
            let t = (n + 1) as f64 / 1000.0;
            assert!((ns.alpha(t).powi(2) - ab).abs() < 1e-12, "alpha_bar at n = {n}");
        }
        assert!((ns.model_time(1.0) - 999.0).abs() < 1e-9);
        assert!(ns.model_time(1e-3).abs() < 1e-9);
        // Between keypoints: linear in log alpha.
        let mid = ns.log_mean(0.0105);
        assert!((mid - 0.5 * (ns.log_mean(0.010) + ns.log_mean(0.011))).abs() < 1e-12);
    }

    #[test]
    fn orders_follow_lower_order_final() {
        let betas = linear_betas(1000);
        let orders = |k| DpmSolverPp::new(&betas, k).unwrap().steps.iter().map(|s| s.order).collect::<Vec<_>>();
        assert_eq!(orders(5), vec![1, 2, 2, 2, 1]);
        assert_eq!(orders(2), vec![1, 1]);
        assert_eq!(orders(10), [vec![1], vec![2; 9]].concat(), "no lower-order final at 10 steps and above");
        assert!(DpmSolverPp::new(&betas, 1).is_err());
        // The first model call is at t = 1 (input 999), the last before t = 1/N.
        let p = DpmSolverPp::new(&betas, 4).unwrap();
        assert!((p.steps[0].model_t - 999.0).abs() < 1e-9);
        assert!((p.steps[3].model_t - 999.0 * 0.25).abs() < 1e-9);
    }

    #[test]
    fn first_order_step_is_ddim() {
        // DPM-Solver++ of order 1 equals deterministic DDIM between the same two times.
        let betas = linear_betas(1000);
        let ns = NoiseScheduleVp::discrete(&betas).unwrap();
        let p = DpmSolverPp::new(&betas, 5).unwrap();
        let st = p.steps[0];
        let (s, t) = (1.0, 1.0 + (1e-3 - 1.0) / 5.0);
        let (x, eps) = (0.7f64, -0.3f64);
        let x0 = (x - ns.sigma(s) * eps) / ns.alpha(s);
        let ddim = ns.alpha(t) * x0 + ns.sigma(t) * eps;
        let got = st.a * x + st.b * (st.sr * x - st.srm1 * eps);
        assert!((got - ddim).abs() < 1e-12, "{got} vs {ddim}");
    }
}
