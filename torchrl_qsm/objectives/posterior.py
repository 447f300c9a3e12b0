"""The posterior noise of a box-restricted policy: what a perfect eps-network predicts.

The forward process noises a clean action ``a0`` to ``x_t = sqrt(abar_t) a0 + sigma_t xi`` with
``sigma_t = sqrt(1 - abar_t)`` and ``xi ~ N(0, I)``. For a policy ``pi(a0)`` on the box
``[low, high]``, the eps-network that makes the DDPM chain sample ``pi`` predicts, at every step, the
posterior mean of the noise::

    eps*(x_t, t) = E[xi | x_t],     p(a0 | x_t) ~ N(x_t; sqrt(abar_t) a0, sigma_t^2 I) pi(a0)

(Ho et al. 2020, eq. 11; the score of the noised policy is ``-eps* / sigma_t``). Writing
``a0 = (x_t - sigma_t xi) / sqrt(abar_t)``, the Gaussian likelihood is exactly the law of ``xi``, so
``K`` candidates ``xi_k ~ N(0, I)`` restricted to the ``xi`` whose ``a0_k`` lie in the box are draws of
the posterior's proposal, and self-normalised importance sampling gives::

    w_k = pi(a0_k) / sum_j pi(a0_j),     eps_hat = sum_k w_k xi_k

which is bounded (a convex combination of normal draws), exact as ``K`` grows, and whose ``a0`` never
leave the box. With ``pi ~ exp(alpha Q)`` the weights are ``softmax_k(alpha Q(s, a0_k))``: the
"Q-weighted noise estimation" (MaxEntDP, ICML 2025; github diffusionyes/MaxEntDP). This module is
pure tensor code; :class:`~torchrl_qsm.QSMLoss` (``score_target="q_weighted"``) supplies ``Q``.
"""

from __future__ import annotations

import torch


def truncated_normal(lower: torch.Tensor, upper: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``num_samples`` draws of ``N(0, 1)`` restricted to ``[lower, upper]`` (elementwise), by inverse CDF.

    Shape ``[num_samples, *lower.shape]``. Computed in float64 on the side of zero where the normal CDF keeps
    its precision (an interval above zero is drawn as its mirror image and negated), so bounds many standard
    deviations out still give draws inside them.
    """
    flip = lower > 0
    low = torch.where(flip, -upper, lower).double()
    high = torch.where(flip, -lower, upper).double()
    cdf_low, cdf_high = torch.special.ndtr(low), torch.special.ndtr(high)
    u = torch.rand((num_samples, *lower.shape), dtype=torch.float64, device=lower.device)
    tiny = torch.finfo(torch.float64).tiny
    draws = torch.special.ndtri((cdf_low + u * (cdf_high - cdf_low)).clamp(tiny, 1 - 1e-16))
    draws = torch.minimum(torch.maximum(draws, low), high)
    return torch.where(flip, -draws, draws).to(lower.dtype)


def posterior_candidates(
    x_t: torch.Tensor, alpha_bar: torch.Tensor, low: torch.Tensor, high: torch.Tensor, num_candidates: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(xi, a0)``, each ``[K, *x_t.shape]``: noise candidates whose clean actions lie in the box.

    ``alpha_bar`` (``abar_t`` of each sample, broadcastable to ``x_t``) and the box ``[low, high]`` are in the
    coordinates of ``x_t`` (the chain's). ``a0 = (x_t - sigma_t xi) / sqrt(abar_t)`` is in ``[low, high]`` exactly
    when ``xi`` is in ``[(x_t - sqrt(abar_t) high) / sigma_t, (x_t - sqrt(abar_t) low) / sigma_t]``.
    """
    root, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    xi = truncated_normal((x_t - root * high) / sigma, (x_t - root * low) / sigma, num_candidates)
    a0 = ((x_t - sigma * xi) / root).clamp(low, high)  # in the box up to rounding
    return xi, a0


def weighted_noise(xi: torch.Tensor, log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eps_hat, w)``: ``eps_hat = sum_k w_k xi_k`` with ``w = softmax_k(log_weights)`` over the first dim.

    ``xi``: ``[K, *B, A]``; ``log_weights``: ``[K, *B]`` (``alpha Q(s, a0_k)`` for ``pi ~ exp(alpha Q)``).
    """
    weights = torch.softmax(log_weights, dim=0)
    return (weights.unsqueeze(-1) * xi).sum(0), weights


def posterior_spread(a0: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The posterior's standard deviation of ``a0``, geometric mean over action dims, shape ``[*B]``.

    The weighted variance of the candidates, divided by ``1 - sum_k w_k^2`` (the unbiased form for
    normalised weights, so that a few candidates carrying most of the weight do not read as a sharp posterior).
    """
    mean = (weights.unsqueeze(-1) * a0).sum(0)
    variance = (weights.unsqueeze(-1) * (a0 - mean).pow(2)).sum(0)
    variance = variance / (1 - weights.pow(2).sum(0)).clamp_min(1e-6).unsqueeze(-1)
    return variance.clamp_min(1e-12).log().mean(-1).mul(0.5).exp()
