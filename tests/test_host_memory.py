"""HostMemory: glibc keeps freed memory, so the same large buffers cost no page faults every step."""

import json
import os
import subprocess
import sys

import pytest
import torch

from lrnn_lightning.callbacks import HostMemory


# run in a fresh process: the test runner's own heap (its arenas, what earlier tests left, the thread
# the test runs on under pytest-xdist) is not the state of a training process's main thread
PROBE = """
import json, resource, torch
from lrnn_lightning.callbacks import keep_freed_memory
applied = keep_freed_memory()
words = 7_000_000  # 28 MB: the logits of 700 tokens x 10,000 words
counts = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    # three at once, as logits, log-probabilities and their gradient: with glibc's defaults the
    # steady state is two buffers' pages (13,640) taken back page by page every time
    bufs = [torch.empty(words).fill_(1.0) for _ in range(3)]
    del bufs
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "counts": counts, "pages": 3 * words * 4 // resource.getpagesize()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_buffers_are_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    counts, pages = probe["counts"], probe["pages"]
    assert probe["applied"]
    assert counts[0] <= pages + 1000
    # from the third time on: none in the typical step (glibc's defaults fault two buffers' pages,
    # 13,640, every time); a fresh process still takes one buffer's pages back now and then
    later = sorted(counts[2:])
    assert later[len(later) // 2] < pages // 20, counts
    assert sum(later) < len(later) * pages // 6, counts


def test_the_callback_applies_it_once_and_can_be_turned_off():
    off = HostMemory(enabled=False)
    off.setup(None, None, "fit")
    assert not off.applied
    on = HostMemory(trim_threshold_mb=512)
    on.setup(None, None, "fit")
    assert on.applied == sys.platform.startswith("linux")
