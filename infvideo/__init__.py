"""infvideo: the continuous-time long-term memory of ∞-Video as fused, drop-in torch ops."""
from .backends import available_backends
from .config import MemoryConfig
from .memory import LongTermMemory

__version__ = "0.1.0"
__all__ = ["LongTermMemory", "MemoryConfig", "available_backends", "__version__"]
