"""Triton kernels of infvideo, installed as ``infvideo.kernels``."""
