"""What ``LongTermMemory.load_state_dict`` accepts: everything is checked before anything changes.

A loaded state must fit the loading memory's configuration and keep its arithmetic sound:
``coef`` [S, N, e] finite; ``filled`` [S] bool; ``sticky_stats`` [S, G, K] finite and
non-negative, with attention mass in every filled stream of a sticky memory (the samplers
normalise it to a distribution: each (stream, group) row sums to the group's query count, less
the null slot's share in the paper preset, and to one for the upstream sampler); and it must have
been saved by a memory of the same basis. Every message names the offending key.

The basis a state was saved with travels in the state dict's metadata (``state_dict()._metadata``,
kept by ``torch.save`` / ``torch.load``), not as a key, so the state dict stays the three buffers
(plus the generator's extra state) and states saved without it still load.
"""
from __future__ import annotations

import torch

from .config import MemoryConfig

BUFFERS = ("coef", "filled", "sticky_stats")
GENERATOR_KEYS = ("generator_state", "generator_device")
METADATA_KEY = "infvideo_basis"
# The upstream sampler's statistic is one normalised histogram per stream.
_UPSTREAM_SUM_TOLERANCE = 1e-3


def basis_identity(cfg: MemoryConfig) -> dict:
    """What the coefficients and statistics mean: the basis, its size and (Gaussian) widths."""
    identity = {"basis": cfg.basis, "num_basis": cfg.num_basis, "sticky_bins": cfg.sticky_bins}
    if cfg.basis == "gaussian":
        identity["sigmas"] = list(cfg.sigmas)
    return identity


def stamp(destination, prefix: str, cfg: MemoryConfig) -> None:
    """Records the basis identity in the metadata that ``state_dict()`` keeps for this module."""
    metadata = getattr(destination, "_metadata", None)
    if metadata is not None:
        metadata.setdefault(prefix[:-1], {})[METADATA_KEY] = basis_identity(cfg)


def extra_state_problem(state, generator: torch.Generator | None) -> str | None:
    """Why ``state`` is not an extra state of :meth:`LongTermMemory.get_extra_state` for a memory
    holding ``generator`` (None: it fits)."""
    if not isinstance(state, dict) or (state and set(state) != set(GENERATOR_KEYS)):
        return f"_extra_state must be {{}} or a dict with keys {GENERATOR_KEYS}, got {state!r:.200}"
    if not state:
        return None
    saved, device = state["generator_state"], state["generator_device"]
    if not isinstance(saved, torch.Tensor) or saved.dtype != torch.uint8 or saved.dim() != 1:
        return (f"_extra_state: generator_state must be a 1-d uint8 tensor (Generator.get_state()), "
                f"got {saved!r:.200}")
    try:
        device = torch.device(device)
        probe = torch.Generator(device=device)
    except (TypeError, RuntimeError) as err:
        return f"_extra_state: the saved generator's device {device!r} is not usable here ({err})"
    if generator is not None and generator.device.type != device.type:
        return (f"_extra_state: the saved state is of a {device} generator, but this memory's generator is on "
                f"{generator.device}")
    try:
        probe.set_state(saved)
    except RuntimeError as err:
        return f"_extra_state: generator_state does not fit a {device} generator ({err})"
    return None


def _shape_problems(cfg: MemoryConfig, coef, filled, stats, prefix: str) -> list[str]:
    problems = []
    n, k = cfg.num_basis, cfg.sticky_bins
    if coef.dim() != 3 or not coef.is_floating_point() or coef.shape[1] != n:
        problems.append(f"{prefix}coef: expected a floating tensor [S, N={n}, e], got {coef.dtype} of shape "
                        f"{tuple(coef.shape)} (saved with another num_basis?)")
    if filled.dim() != 1 or filled.dtype != torch.bool:
        problems.append(f"{prefix}filled: expected a bool tensor [S], got {filled.dtype} of shape "
                        f"{tuple(filled.shape)}")
    if stats.dim() != 3 or not stats.is_floating_point() or stats.shape[1] < 1 or stats.shape[2] != k:
        problems.append(f"{prefix}sticky_stats: expected a floating tensor [S, G, K={k}], got {stats.dtype} of "
                        f"shape {tuple(stats.shape)} (saved with another basis, num_basis, quad_points, "
                        "preset or sampling? The Gaussian basis's exact preset keeps one mass per Gauss–Legendre "
                        "panel, ⌈T/8⌉; states saved before that rule hold T − 1 trapezoid intervals)")
    if problems:
        return problems
    if not coef.shape[0] == filled.shape[0] == stats.shape[0]:
        return [f"{prefix}coef, filled and sticky_stats hold different stream counts: {coef.shape[0]}, "
                f"{filled.shape[0]} and {stats.shape[0]}"]
    if coef.shape[2] == 0 and bool(filled.any()):
        problems.append(f"{prefix}coef: streams are marked filled but the coefficients have width 0")
    return problems


def _value_problems(cfg: MemoryConfig, coef, filled, stats, prefix: str) -> list[str]:
    problems = [f"{prefix}{name} contains NaN or Inf" for name, value in (("coef", coef), ("sticky_stats", stats))
                if not bool(torch.isfinite(value).all())]
    if problems:
        return problems
    if bool((stats < 0).any()):
        worst = float(stats.min())
        return [f"{prefix}sticky_stats holds negative attention mass (down to {worst:g}); a statistic is a "
                "distribution over time"]
    if not cfg.sticky or stats.numel() == 0:
        return []
    totals = stats.double().sum((1, 2))
    empty = (filled.to(totals.device) & (totals <= 0)).nonzero().flatten().tolist()
    if empty:
        return [f"{prefix}sticky_stats: filled stream(s) {empty} hold no attention mass, so the sticky sampler "
                "has no distribution to read (saved by a memory with sticky=False?)"]
    if cfg.sampling == "upstream":
        rows = stats.double().sum(2)[filled.to(stats.device)]
        off = (rows - 1).abs().max() if rows.numel() else torch.zeros(())
        if float(off) > _UPSTREAM_SUM_TOLERANCE:
            return [f"{prefix}sticky_stats: the upstream sampler's histograms must each sum to one, one is off by "
                    f"{float(off):.3g}"]
    return []


def _identity_problem(cfg: MemoryConfig, local_metadata, prefix: str) -> str | None:
    saved = (local_metadata or {}).get(METADATA_KEY)
    if saved is None:
        return None  # saved before the identity was recorded, or through a format without metadata
    mine = basis_identity(cfg)
    if not isinstance(saved, dict) or saved != mine:
        return (f"{prefix}coef and {prefix}sticky_stats were saved by a memory with {saved!r:.200}, but this memory "
                f"has {mine!r}: the numbers mean other basis functions")
    return None


def state_problems(cfg: MemoryConfig, generator, current: dict, state_dict, prefix: str, local_metadata) -> list[str]:
    """Why loading ``state_dict`` into a memory of ``cfg`` whose buffers are ``current`` would leave
    an unusable memory (empty: it fits). Keys the state dict lacks keep the current buffers."""
    new = {name: state_dict.get(prefix + name, current[name]) for name in BUFFERS}
    if not all(isinstance(value, torch.Tensor) for value in new.values()):
        return [f"{prefix}{name}: expected a tensor, got {type(value).__name__}"
                for name, value in new.items() if not isinstance(value, torch.Tensor)]
    if any(value.device.type == "meta" for value in new.values()):
        return [f"{prefix}{name}: a meta tensor holds no values to load" for name, value in new.items()
                if value.device.type == "meta"]
    problems = _shape_problems(cfg, *new.values(), prefix)
    identity = _identity_problem(cfg, local_metadata, prefix)
    if identity is not None:
        problems.append(identity)
    if not problems:
        problems = _value_problems(cfg, *new.values(), prefix)
    if prefix + "_extra_state" in state_dict:
        problem = extra_state_problem(state_dict[prefix + "_extra_state"], generator)
        if problem is not None:
            problems.append(prefix + problem)
    return problems
