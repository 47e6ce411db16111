"""Sampling words from a trained language model (``generate.py`` and the dashboard's samples)."""

from __future__ import annotations

import torch


@torch.no_grad()
def generate_words(model, vocab, prompt: list[str], num_words: int, temperature: float, generator) -> list[str]:
    device = next(model.parameters()).device
    ids = [vocab.eos_id] + vocab.encode(prompt)
    state = None
    if len(ids) > 1:
        context = torch.tensor(ids[:-1], device=device)[:, None]
        _, state = model.head.log_probs(model.core, context, None)
    prev = torch.tensor([ids[-1]], device=device)
    out = []
    for _ in range(num_words):
        nxt, state = model.head.sample(model.core, prev, state, temperature, generator)
        out.append(int(nxt[0]))
        prev = nxt
    return vocab.decode(out)
