"""The cost structure of the published ∞-Video code (SPEC section 9, item 4), for side-by-side timing.

LABELLED BASELINE, not the package: it recomputes everything on every call the way the published
code does — basis and positions rebuilt, a 512-iteration Python loop evaluating the basis at the
sample points, a dense N×N inverse on the CPU, and the 1000-point trapezoid that materialises an
[S, H, Q, N, T] tensor — so speed-ups are measured in one run on any machine instead of quoted.
Its outputs equal the paper preset's (uniform sampling, rectangular bins).
"""
from __future__ import annotations

import torch


def _bounds(num_basis: int, device):
    edges = torch.linspace(0, 1, num_basis + 1, device=device)
    mid = (edges[:-1] + edges[1:]) / 2
    width = torch.ones(num_basis, device=device) / num_basis
    return mid - width / 2, mid + width / 2


def _psi(t, lo, hi):
    return ((t[:, None] >= lo) & (t[:, None] < hi)).float()  # [P, N]


def _ridge(positions, num_basis, ridge, device):
    lo, hi = _bounds(num_basis, "cpu")
    f = _psi(positions.cpu(), lo, hi).T  # [N, P]
    g = f.T @ torch.linalg.inv(f @ f.T + ridge * torch.eye(num_basis))  # dense inverse on the CPU
    return g.to(device)


def published_step(frames, past, query, proj_key, proj_value, num_heads, num_basis=256, tau=0.75,
                   samples=512, ridge=0.5, points=1000):
    """One LTM call with the published code's costs; frames [S, L, e] pooled, past [S, N, e] or None."""
    device = frames.device
    s, length, _ = frames.shape
    lo, hi = _bounds(num_basis, device)
    if past is None:
        positions = (torch.arange(length, dtype=torch.float32) + 0.5) / length
        coef = torch.einsum("ln,sle->sne", _ridge(positions, num_basis, ridge, device), frames)
    else:
        rows = []
        for i in range(1, samples + 1):  # the published per-sample loop
            t = torch.tensor([i * tau / samples / tau], device=device)
            rows.append(_psi(t, lo, hi))
        basis = torch.cat(rows)  # [M, N]
        old = torch.einsum("mn,sne->sme", basis, past)
        past_pos = torch.arange(1, samples + 1).float() * tau / samples
        new_pos = tau + (1 - tau) * (torch.arange(samples + 1, length + samples + 1).float() - samples) / length
        g = _ridge(torch.cat([past_pos, new_pos]), num_basis, ridge, device)
        coef = torch.einsum("pn,spe->sne", g, torch.cat([old, frames], dim=1))
    keys, values = proj_key(coef), proj_value(coef)
    q_len, model = query.shape[1], query.shape[2]
    d = model // num_heads
    qh = query.view(s, q_len, num_heads, d).transpose(1, 2) / d ** 0.5
    kh = keys.view(s, num_basis, num_heads, d).transpose(1, 2)
    vh = values.view(s, num_basis, num_heads, d).transpose(1, 2)
    t = torch.linspace(0, 1, points, device=device)
    psi = _psi(t, lo, hi)  # [T, N]
    scores = torch.einsum("shqd,shnd,tn->shqt", qh, kh, psi)
    prob = torch.exp(scores) / torch.trapz(torch.exp(scores), t, dim=-1)[..., None]
    integrand = prob[:, :, :, None, :] * psi.T[None, None, None]  # [S, H, Q, N, T]
    r = torch.trapz(integrand, t, dim=-1)
    context = torch.einsum("shqn,shnd->sqhd", r, vh).reshape(s, q_len, model)
    return context, coef
