"""Triton kernels of the SRU recurrence (forward, backward) and their PyTorch reference.

Knows nothing of the lrnn_lightning package; only ``lrnn_lightning.modules.sru`` imports it.
"""
