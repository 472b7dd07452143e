"""Video Q-formers with the ∞-Video memory (Video-LLaMA's, VideoChat2's) and their checkpoints.

Built on transformers' ``Blip2QFormerModel`` (``pip install 'infvideo[hf]'``); transformers is
imported when a model is built, not by ``import infvideo.models``.
"""
from .checkpoints import CheckpointReport, convert_lavis_state_dict, load_lavis_checkpoint
from .video_qformer import VideoChat2QFormer, VideoLlamaQFormer

__all__ = ["CheckpointReport", "VideoChat2QFormer", "VideoLlamaQFormer", "convert_lavis_state_dict",
           "load_lavis_checkpoint"]
