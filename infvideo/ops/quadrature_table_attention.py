"""``torch.ops.infvideo.quadrature_table_attention``: the forward of ``quadrature_attention`` as one CUDA kernel.

The kernel is csrc's (``csrc/attention/quadrature_table_attention_cuda.cu``): one block per
(stream, head, 16 queries) sweeps the quadrature's tiles of points with the band of the basis
each tile needs, from a table of basis values (``kernels.basis_tables.chunked_basis_table``),
with an online softmax and r kept in shared memory; every product on the tensor cores (three TF32
passes where float32 accuracy is needed). The schema is defined here, like every op's, so that it
exists with or without the extension; ``quadrature_attention`` calls it on CUDA tensors where the
extension has it (:func:`runs`), Triton's kernels elsewhere. The backward stays Triton's.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from .. import backends
from ..kernels.basis_tables import CHUNK, chunked_basis_table
from . import _library

_library._LIB.define("quadrature_table_attention(Tensor query, Tensor keys, Tensor values, int num_heads, "
                     "Tensor table, Tensor band_start, int band_chunks, Tensor log_weight, bool write_density) "
                     "-> (Tensor, Tensor)")


@torch.library.register_fake("infvideo::quadrature_table_attention")
def _(query, keys, values, num_heads, table, band_start, band_chunks, log_weight, write_density):
    s, q_len, model = query.shape
    return (query.new_empty(s, q_len, model),
            query.new_empty(s, _library.mass_groups(num_heads, q_len), log_weight.shape[0] if write_density else 1,
                            dtype=torch.float32))


# Whether quadrature_attention's forward takes this kernel where it can run (a switch, so that a
# benchmark can time Triton's kernels in the same process).
ENABLED = True

_ROWS, _LD = 16, CHUNK + 4


def shared_bytes(width: int) -> int:
    """Shared memory of one block for a table ``width`` columns wide (``shared_bytes`` in the .cu):
    a and r [16, width + 4], two ψ tiles and a tile of weights [·, 68] in two parts each, two [16]
    vectors."""
    return 4 * (2 * _ROWS * (width + 4) + 4 * CHUNK * _LD + 2 * _ROWS * _LD + 2 * _ROWS)


@lru_cache(maxsize=None)
def _device_limits(index: int) -> tuple[tuple[int, int], int]:
    props = torch.cuda.get_device_properties(index)
    return (props.major, props.minor), props.shared_memory_per_block_optin


def kernel_table(query: Tensor, mu: Tensor, sigma: Tensor, grid: Tensor):
    """The CUDA kernel's table (``kernels.basis_tables.chunked_basis_table``: table, band starts,
    chunks) where the kernel can take a call on ``query``'s device, else None: CUDA tensors, the
    extension built with CUDA, tensor cores with TF32 (compute capability 8.0 or later), and the
    block's rows of a and r as wide as the table within its shared memory."""
    if not (ENABLED and query.is_cuda and "cuda" in backends.built()):
        return None
    capability, limit = _device_limits(query.device.index if query.device.index is not None else
                                       torch.cuda.current_device())
    if capability < (8, 0):
        return None
    table = chunked_basis_table(mu, sigma, grid)
    return table if shared_bytes(table[0].shape[2]) <= limit else None


def quadrature_table_attention(query: Tensor, keys: Tensor, values: Tensor, num_heads: int, table: Tensor,
                               band_start: Tensor, band_chunks: int, log_weight: Tensor, write_density: bool
                               ) -> tuple[Tensor, Tensor]:
    """``quadrature_attention``'s forward (same arguments but the basis, inputs already checked:
    query [S, Q, D], keys/values [S, N, D] with unit last strides, log_weight [T] float32) by the
    CUDA kernel, on a table from :func:`kernel_table`. Returns the context [S, Q, D] and
    Σ_q p(t_j) per head and block of 16 queries, [S, H·⌈Q/16⌉, T] ([·, ·, 1] zeros without
    ``write_density``)."""
    return torch.ops.infvideo.quadrature_table_attention(query, keys, values, num_heads, table, band_start,
                                                         band_chunks, log_weight, write_density)
