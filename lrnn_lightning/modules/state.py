from __future__ import annotations

from typing import Any

import torch


def detach_state(state: Any) -> Any:
    """Cut the graph of a recurrent state (tensor, tuple or list of them, or None)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)


def select_state(state: Any, index: torch.Tensor) -> Any:
    """Keep the batch entries ``index`` of a state whose batch dimension is 1 (as nn.LSTM's)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.index_select(1, index)
    return type(state)(select_state(s, index) for s in state)


def repeat_state(state: Any, times: int) -> Any:
    """Repeat every batch entry of a state ``times`` times (batch dimension 1), entry-major."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.repeat_interleave(times, dim=1)
    return type(state)(repeat_state(s, times) for s in state)
