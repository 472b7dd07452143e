"""The fused ops, registered as ``torch.ops.infvideo.*`` (one schema and one fake each).

Wrappers here check public-shaped tensors and call the registered ops, whose ``backend`` argument
picks the Triton kernel or the C++/CUDA one of the tensors' device (``_library``,
``infvideo.backends``). rect_consolidate, slot_attention and quadrature_attention have their
backward registered on the op (``torch.library.register_autograd``), as a second op
``infvideo::<op>_backward`` with the same backend choice (eager calls of a Triton kernel record
the same backward without the dispatcher: ``_library.launch``); quantile_bins is not differentiable.
"""
from .. import backends
from .quadrature_attention import quadrature_attention, quadrature_constants
from .quantile_bins import quantile_bins
from .rect_consolidate import RectPlan, plan_on, rect_consolidate, rect_plan
from .slot_attention import slot_attention
from .step import StepConstants, fused_step, step_constants

__all__ = ["RectPlan", "StepConstants", "fused_step", "step_constants", "plan_on", "quadrature_attention", "quadrature_constants", "quantile_bins",
           "rect_consolidate", "rect_plan", "slot_attention"]

# The C++/CUDA kernels register for the schemas defined above when the extension loads.
backends.extension_path()
