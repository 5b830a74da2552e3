"""DiT's Gaussian diffusion training loss (gaussian_diffusion.training_losses), learned sigma.

Linear betas 1e-4..0.02 over T = 1000 steps (float64 tables, cast to float32 when indexed, as the
official code), epsilon prediction. With learned sigma ("learned range") the loss is DiT's hybrid
objective for LossType.MSE: mean_flat((eps - eps_hat)^2) + vb, where vb is the variational bound
term in bits per dimension computed with a *frozen* mean (eps_hat detached) so that it only trains
the variance interpolation v: KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, the
discretized Gaussian decoder NLL at t = 0.
"""

import math

import numpy as np
import torch

from models import gen, T_TRAIN


def _tab(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def mean_flat(x):
    return x.mean(dim=list(range(1, x.dim())))


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))


class TrainDiffusion:
    def __init__(self, T=T_TRAIN, learn_sigma=True):
        d = gen.Diffusion(gen.base_betas(T), range(T), learn_sigma)
        self.T = T
        self.learn_sigma = learn_sigma
        ac = d.alphas_cumprod
        self.sqrt_ac = _tab(np.sqrt(ac))
        self.sqrt_1m_ac = _tab(np.sqrt(1.0 - ac))
        self.sqrt_recip_ac = _tab(d.sqrt_recip_alphas_cumprod)
        self.sqrt_recipm1_ac = _tab(d.sqrt_recipm1_alphas_cumprod)
        self.coef1 = _tab(d.posterior_mean_coef1)
        self.coef2 = _tab(d.posterior_mean_coef2)
        self.post_logvar = _tab(d.posterior_log_variance_clipped)
        self.log_betas = _tab(np.log(d.betas))

    def to(self, device):
        """The tables on the device of the timesteps (a GPU run indexes them there)."""
        for k, v in vars(self).items():
            if torch.is_tensor(v):
                setattr(self, k, v.to(device))
        return self

    @staticmethod
    def _x(tab, t, like):
        return tab[t].float().view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0, t, noise):
        return self._x(self.sqrt_ac, t, x0) * x0 + self._x(self.sqrt_1m_ac, t, x0) * noise

    def loss(self, model_fn, x0, t, noise):
        """Per-sample losses: dict(loss, mse, vb) of shape (B,)."""
        x_t = self.q_sample(x0, t, noise)
        out = model_fn(x_t, t)
        C = x0.shape[1]
        if not self.learn_sigma:
            mse = mean_flat((noise - out) ** 2)
            return {"loss": mse, "mse": mse, "vb": torch.zeros_like(mse)}
        eps, v = torch.split(out, C, dim=1)
        mse = mean_flat((noise - eps) ** 2)
        # vb with the mean frozen (DiT: frozen_out = cat([model_output.detach(), model_var_values]))
        eps_f = eps.detach()
        x = lambda tab: self._x(tab, t, x0)  # noqa: E731
        true_mean = x(self.coef1) * x0 + x(self.coef2) * x_t
        true_logvar = x(self.post_logvar)
        min_log, max_log = x(self.post_logvar), x(self.log_betas)
        frac = (v + 1) / 2
        model_logvar = frac * max_log + (1 - frac) * min_log
        pred_x0 = x(self.sqrt_recip_ac) * x_t - x(self.sqrt_recipm1_ac) * eps_f
        model_mean = x(self.coef1) * pred_x0 + x(self.coef2) * x_t
        kl = mean_flat(normal_kl(true_mean, true_logvar, model_mean, model_logvar)) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        return {"loss": mse + vb, "mse": mse, "vb": vb}
