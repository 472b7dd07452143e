"""Plain-torch reference of the ∞-Video memory: runs anywhere, differentiable, the ground truth."""
from .attention import attention_constants, read_values, scores, slot_weights
from .consolidate import consolidate_dense, consolidate_segmented
from .fit import consolidation_fit, first_fit, ridge_matrix
from .pooling import pool_frames
from .step import attend, consolidate_chunk, upstream_statistic

__all__ = ["attend", "attention_constants", "consolidate_chunk", "consolidate_dense", "consolidate_segmented",
           "consolidation_fit", "first_fit", "pool_frames", "read_values", "ridge_matrix", "scores",
           "slot_weights", "upstream_statistic"]
