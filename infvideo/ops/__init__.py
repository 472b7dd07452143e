"""The fused ops, registered as ``torch.ops.infvideo.*`` (each with a fake implementation).

Wrappers here take checked, public-shaped tensors and call the registered ops; the ops run the
Triton kernels of ``infvideo.kernels`` on CUDA tensors (or on CPU tensors with TRITON_INTERPRET=1).
"""
from .quadrature_attention import quadrature_attention, quadrature_constants
from .quantile_bins import quantile_bins
from .rect_consolidate import RectPlan, plan_on, rect_consolidate, rect_plan
from .slot_attention import slot_attention
from .step import StepConstants, fused_step, step_constants

__all__ = ["RectPlan", "StepConstants", "fused_step", "step_constants", "plan_on", "quadrature_attention", "quadrature_constants", "quantile_bins",
           "rect_consolidate", "rect_plan", "slot_attention"]
