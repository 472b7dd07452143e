"""Progress bars for the command line's long jobs (tqdm)."""
from __future__ import annotations

from tqdm import tqdm


def progress(total: int, what: str, quiet: bool) -> tqdm:
    """A bar over ``total`` frames showing frames/s; silent with ``quiet`` or when stderr is no terminal."""
    return tqdm(total=total, desc=what, unit="frame", unit_scale=True, dynamic_ncols=True, leave=False,
                disable=True if quiet else None)
