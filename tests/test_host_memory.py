"""HostMemory: glibc keeps freed memory, so the same large buffers cost no page faults every step."""

import resource
import sys

import pytest
import torch

from lrnn_lightning.callbacks import HostMemory, keep_freed_memory


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_buffers_are_reused_without_page_faults():
    assert keep_freed_memory()
    words = 7_000_000  # 28 MB: the logits of 700 tokens x 10,000 words
    counts = []
    for _ in range(5):
        before = faults()
        # three at once, as logits, log-probabilities and their gradient: with glibc's defaults the
        # steady state is two buffers' pages (13,640) taken back page by page every time
        bufs = [torch.empty(words).fill_(1.0) for _ in range(3)]
        del bufs
        counts.append(faults() - before)
    pages = 3 * words * 4 // resource.getpagesize()
    assert counts[0] <= pages + 1000
    assert max(counts[2:]) < pages // 20, counts  # from the third time on: none


def test_the_callback_applies_it_once_and_can_be_turned_off():
    off = HostMemory(enabled=False)
    off.setup(None, None, "fit")
    assert not off.applied
    on = HostMemory(trim_threshold_mb=512)
    on.setup(None, None, "fit")
    assert on.applied == sys.platform.startswith("linux")
