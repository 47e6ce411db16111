"""Keep freed host memory in the process: no page faults for the same large buffers every step."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

import lightning as L

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # the largest value glibc accepts on 64-bit


def keep_freed_memory(trim_threshold_mb: int = 1024, mmap_threshold_mb: int = 32) -> bool:
    """Set glibc's malloc to keep up to ``trim_threshold_mb`` of freed memory at the top of the heap
    (default glibc: twice the largest recent buffer, at most 64 MB) and to serve buffers up to
    ``mmap_threshold_mb`` from the heap. True when applied (Linux with glibc), else False.

    A training step on the CPU allocates and frees the same large tensors every step (logits,
    their gradients: 28 MB each for 700 tokens x 10,000 words). By default glibc returns such
    memory to the system as soon as enough of it is free at the top of the heap, or maps each
    buffer afresh, so every step takes its pages back one page fault at a time: 5,000-20,000
    faults per step measured for the PTB setting of ``benchmarks/framework_tax.py``, a quarter to
    a third of the CPU time of a step.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mmap = min(int(mmap_threshold_mb * 1024 * 1024), _MMAP_THRESHOLD_MAX)
    trim = int(trim_threshold_mb * 1024 * 1024)
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))


class HostMemory(L.Callback):
    """Applies ``keep_freed_memory`` when a run sets up (fit, validate, test) in every process.

    trim_threshold_mb: freed memory kept by the process before any is returned to the system.
    mmap_threshold_mb: buffers up to this size come from the heap (glibc's maximum is 32).
    enabled: false leaves glibc's defaults.
    """

    def __init__(self, trim_threshold_mb: int = 1024, mmap_threshold_mb: int = 32, enabled: bool = True):
        self.trim_threshold_mb, self.mmap_threshold_mb, self.enabled = trim_threshold_mb, mmap_threshold_mb, enabled
        self.applied = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.enabled and not self.applied:
            self.applied = keep_freed_memory(self.trim_threshold_mb, self.mmap_threshold_mb)
            log.debug("host memory: keep freed memory %s", "on" if self.applied else "not available")
