"""infvideo: the continuous-time long-term memory of ∞-Video as fused, drop-in torch ops."""
from .backends import available_backends, info
from .config import MemoryConfig
from .memory import LongTermMemory

__version__ = "0.1.0"
__all__ = ["ContinuousHopfield", "DiscreteHopfield", "LongTermMemory", "MemoryConfig", "apply_infvideo",
           "available_backends", "info", "reset_memory", "__version__"]

_INTEGRATION = ("apply_infvideo", "reset_memory")
_HOPFIELD = ("ContinuousHopfield", "DiscreteHopfield")


def __getattr__(name: str):
    # The transformers patch loads on first use, so `import infvideo` stays as light as the
    # memory itself (the integration never imports transformers either).
    if name in _INTEGRATION:
        from .integrations import transformers as integration
        return getattr(integration, name)
    if name in _HOPFIELD:
        from . import hopfield
        return getattr(hopfield, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
