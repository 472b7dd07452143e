"""Drop-in patches of host models (``infvideo.integrations.transformers``: BLIP-2 style Q-formers).

Submodules are imported on demand, so ``import infvideo`` never pulls in a host library.
"""
