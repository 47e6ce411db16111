"""Hydra overrides -> Optuna distributions (``interval``, ``choice``, ``range``, ``tag(log, ...)``).

Parsed with Hydra's own override grammar (``OverridesParser``); optuna is imported only when a
distribution is built, so the plugin module imports with hydra-core alone. (A leading underscore
keeps Hydra's plugin scanner from importing this module on every start.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, QuotedString, RangeSweep


class SearchSpaceError(ValueError):
    """A search-space entry Optuna cannot sample; the message says which and how to write it."""


KNOWN_TAGS = {"log"}


@dataclass
class SearchSpace:
    """``distributions``: name -> optuna distribution; ``keys``: name -> override key as written
    (``+`` / ``++`` kept); ``fixed``: overrides every job gets as they are."""

    distributions: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """A job's command line: the fixed overrides, then ``key=value`` for a trial's ``params``."""
        return [*self.fixed, *(f"{self.keys[name]}={render(value)}" for name, value in params.items())]


def parse(params: Mapping[str, Any] | None, arguments: Sequence[str], config_loader: Any = None) -> SearchSpace:
    """``hydra.sweeper.params`` (``{key: "interval(0, 1)"}``) then the command line: a key given in
    both takes the command line's form (a sweep or a fixed value)."""
    lines = [f"{key}={_param_string(value)}" for key, value in (params or {}).items()] + list(arguments)
    try:
        parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(lines)
    except Exception as e:  # Hydra's grammar errors say where the line is wrong
        raise SearchSpaceError(str(e)) from None
    by_name: dict[str, Override] = {}
    for o in parsed:
        by_name.pop(_name(o), None)  # a later entry replaces an earlier one, and takes its place in the order
        by_name[_name(o)] = o
    space = SearchSpace()
    for name, o in by_name.items():
        if o.is_sweep_override():
            space.distributions[name] = distribution(o)
            space.keys[name] = o.get_key_element()
        else:
            space.fixed.append(o.input_line if o.input_line is not None else f"{o.get_key_element()}={o.get_value_element_as_str()}")
    return space


def _param_string(value: Any) -> str:
    # a config node `key: 0.1` arrives as a number, `key: [1, 2]` as a list: write them as Hydra would
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "choice(" + ",".join(render(v) for v in value) + ")"
    return render(value)


def _name(o: Override) -> str:
    return o.key_or_group if o.package is None else f"{o.key_or_group}@{o.package}"


def distribution(o: Override) -> Any:
    """The Optuna distribution of one sweep override."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key, sweep = o.get_key_element(), o.value()
    tags = set(getattr(sweep, "tags", set()) or set())
    unknown = tags - KNOWN_TAGS
    if unknown:
        raise SearchSpaceError(f"{key}: unknown tag(s) {sorted(unknown)}; the only tag understood is 'log', "
                               f"as in {key}='tag(log, interval(1e-4, 1e-1))'")
    log = "log" in tags
    if o.is_interval_sweep():
        assert isinstance(sweep, IntervalSweep)
        low, high = sweep.start, sweep.end
        if not low < high:
            raise SearchSpaceError(f"{key}: interval({low}, {high}) is empty; write interval(low, high) with low < high")
        if log and low <= 0:
            raise SearchSpaceError(f"{key}: a log interval needs a positive lower bound (got {low})")
        # Hydra reads interval bounds as floats; whole numbers are range(low, high + 1)
        return FloatDistribution(float(low), float(high), log=log)
    if o.is_range_sweep():
        assert isinstance(sweep, RangeSweep)
        values = list(sweep.range())
        if not values:
            raise SearchSpaceError(f"{key}: range({sweep.start}, {sweep.stop}, {sweep.step}) is empty "
                                   "(the stop value is excluded, as in Python's range)")
        step = abs(sweep.step)
        if log and step != 1:
            raise SearchSpaceError(f"{key}: a log-scaled range needs step 1 (got {sweep.step}); "
                                   "use tag(log, interval(low, high)) for a continuous log scale")
        if all(isinstance(v, int) for v in values):
            return IntDistribution(min(values), max(values), log=log, step=1 if log else int(step))
        return FloatDistribution(min(values), max(values), step=None if log else float(step), log=log)
    if o.is_choice_sweep():
        if log:
            raise SearchSpaceError(f"{key}: 'log' applies to interval() and range(), not to choice()")
        choices = [_plain(v) for v in o.sweep_iterator()]
        bad = [v for v in choices if v is not None and not isinstance(v, (bool, int, float, str))]
        if bad:
            raise SearchSpaceError(f"{key}: choice() values must be numbers, strings, booleans or null (got {bad[0]!r}); "
                                   "name a config file of the group instead (e.g. model=choice(lstm,sru))")
        if not choices:
            raise SearchSpaceError(f"{key}: choice() needs at least one value")
        if len(set(map(repr, choices))) != len(choices):
            raise SearchSpaceError(f"{key}: choice() lists a value twice: {choices}")
        return CategoricalDistribution(choices)
    raise SearchSpaceError(f"{key}: unsupported sweep {o.get_value_string()!r}; "
                           "use interval(a,b), tag(log, interval(a,b)), choice(a,b,...) or range(start,stop[,step])")


def _plain(v: Any) -> Any:
    return v.text if isinstance(v, QuotedString) else v


def render(value: Any) -> str:
    """``value`` written for Hydra's override grammar so that it parses back to the same value
    (strings that would read as numbers, booleans or null, or hold special characters, are quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if _reads_back(value, value):
            return value
        escaped = value.replace("\\", "\\\\").replace("'", "\\'")
        return f"'{escaped}'"
    raise SearchSpaceError(f"cannot write {value!r} as a Hydra override value")


def _reads_back(text: str, value: str) -> bool:
    try:
        o = OverridesParser.create().parse_override(f"k={text}")
    except Exception:
        return False
    return not o.is_sweep_override() and type(o.value()) is str and o.value() == value
