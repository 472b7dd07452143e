"""The cost structure of the published ∞-Video code (SPEC section 9, item 4), for side-by-side timing.

LABELLED BASELINE, not the package: it recomputes everything on every call the way the published
code does — basis and positions rebuilt, a 512-iteration Python loop evaluating the basis at the
sample points, a dense N×N inverse on the CPU, the 1000-point trapezoid that materialises an
[S, H, Q, N, T] tensor, and one stream at a time (the published code handles batch 1 only) — so
speed-ups are measured in one run on any machine instead of quoted. With rectangular bins its
outputs equal the paper preset's (uniform sampling). ``basis="gaussian"`` swaps in the Gaussian ψ
(centres and widths as in SPEC section 4, no boundary padding) at the same costs.
"""
from __future__ import annotations

import torch


def _bounds(num_basis: int, device):
    edges = torch.linspace(0, 1, num_basis + 1, device=device)
    mid = (edges[:-1] + edges[1:]) / 2
    width = torch.ones(num_basis, device=device) / num_basis
    return mid - width / 2, mid + width / 2


def _psi(t, num_basis: int, basis: str):
    """ψ(t) [P, N], rebuilt from scratch on every call as the published code does."""
    if basis == "rectangular":
        lo, hi = _bounds(num_basis, t.device)
        return ((t[:, None] >= lo) & (t[:, None] < hi)).float()
    sigmas = torch.tensor([0.005, 0.01], device=t.device)
    mu = torch.linspace(0, 1, num_basis // 2, device=t.device).repeat_interleave(2)
    sigma = sigmas.repeat(num_basis // 2)
    z = (t[:, None] - mu) / sigma
    return torch.exp(-0.5 * z * z) / (sigma * (2 * torch.pi) ** 0.5)


def _ridge(positions, num_basis, ridge, device, basis):
    f = _psi(positions.cpu(), num_basis, basis).T  # [N, P]
    g = f.T @ torch.linalg.inv(f @ f.T + ridge * torch.eye(num_basis))  # dense inverse on the CPU
    return g.to(device)


def per_stream(fn, *tensors):
    """Run ``fn`` on one stream at a time (batch 1) and stack the results along dim 0."""
    outs = [fn(*(t[i:i + 1] if isinstance(t, torch.Tensor) else t for t in tensors))
            for i in range(tensors[0].shape[0])]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def published_consolidate(frames, past, num_basis=256, tau=0.75, samples=512, ridge=0.5, basis="rectangular"):
    """New coefficients [1, N, e] from pooled frames [1, L, e] and old coefficients [1, N, e] (or None)."""
    device = frames.device
    length = frames.shape[1]
    if past is None:
        positions = (torch.arange(length, dtype=torch.float32) + 0.5) / length
        return torch.einsum("ln,sle->sne", _ridge(positions, num_basis, ridge, device, basis), frames)
    rows = []
    for i in range(1, samples + 1):  # the published per-sample loop
        t = torch.tensor([i * tau / samples / tau], device=device)
        rows.append(_psi(t, num_basis, basis))
    sample_basis = torch.cat(rows)  # [M, N]
    old = torch.einsum("mn,sne->sme", sample_basis, past)
    past_pos = torch.arange(1, samples + 1).float() * tau / samples
    new_pos = tau + (1 - tau) * (torch.arange(samples + 1, length + samples + 1).float() - samples) / length
    g = _ridge(torch.cat([past_pos, new_pos]), num_basis, ridge, device, basis)
    return torch.einsum("pn,spe->sne", g, torch.cat([old, frames], dim=1))


def published_attention(query, keys, values, num_heads, points=1000, basis="rectangular"):
    """Context [1, Q, D] of queries [1, Q, D] over projected coefficients K, V [1, N, D], by the
    trapezoid on ``points`` grid points with the [1, H, Q, N, T] integrand materialised."""
    s, q_len, model = query.shape
    num_basis = keys.shape[1]
    d = model // num_heads
    qh = query.view(s, q_len, num_heads, d).transpose(1, 2) / d ** 0.5
    kh = keys.view(s, num_basis, num_heads, d).transpose(1, 2)
    vh = values.view(s, num_basis, num_heads, d).transpose(1, 2)
    t = torch.linspace(0, 1, points, device=query.device)
    psi = _psi(t, num_basis, basis)  # [T, N]
    scores = torch.einsum("shqd,shnd,tn->shqt", qh, kh, psi)
    prob = torch.exp(scores) / torch.trapz(torch.exp(scores), t, dim=-1)[..., None]
    integrand = prob[:, :, :, None, :] * psi.T[None, None, None]  # [S, H, Q, N, T]
    r = torch.trapz(integrand, t, dim=-1)
    return torch.einsum("shqn,shnd->sqhd", r, vh).reshape(s, q_len, model)


def published_step(frames, past, query, proj_key, proj_value, num_heads, num_basis=256, tau=0.75,
                   samples=512, ridge=0.5, points=1000, basis="rectangular"):
    """One LTM call with the published code's costs, one stream at a time.

    frames [S, L, e] pooled, past [S, N, e] or None, query [S, Q, D]; returns (context [S, Q, D],
    new coefficients [S, N, e]).
    """
    def one(frames_1, past_1, query_1):
        coef = published_consolidate(frames_1, past_1, num_basis, tau, samples, ridge, basis)
        context = published_attention(query_1, proj_key(coef), proj_value(coef), num_heads, points, basis)
        return context, coef

    if past is None:
        return per_stream(lambda f, q: one(f, None, q), frames, query)
    return per_stream(one, frames, past, query)
