"""The LightRNN word table, the loss statistics that drive it, and the matching solvers (no Lightning)."""

from lrnn_lightning.allocation.solvers import allocation_cost, lower_bound, reallocate
from lrnn_lightning.allocation.table import WordTable, row_purity, table_shape

__all__ = ["WordTable", "allocation_cost", "lower_bound", "reallocate", "row_purity", "table_shape"]
