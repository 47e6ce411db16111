"""The SRU elementwise recurrence: Triton kernels (forward, backward) and two PyTorch versions.

* ``naive.sru_recurrence_naive``: the reference, one step at a time, differentiated by autograd;
* ``torch_fast.sru_recurrence_torch``: vectorized over time with a hand-written backward (CPU path);
* ``sru.sru_recurrence_triton``: the Triton kernels and their autograd Function (CUDA).

All three take the same arguments (see ``naive``). Knows nothing of the lrnn_lightning package;
only ``lrnn_lightning.modules.sru`` imports it, and picks the backend.
"""
