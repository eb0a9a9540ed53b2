"""Float relaxation of a space, for searchers that only search floats (``gp``'s BayesOptSearch).

A relaxed parameter gets a new name, so an undecoded config is refused by
``TrialSettings.from_config`` instead of silently used:

======================  ===============================  ==================================
kind                    searched float                   decoded value
======================  ===============================  ==================================
loguniform [lo, hi]     ``<name>__log10`` in             ``10 ** x``, clamped to [lo, hi]
                        [log10 lo, log10 hi]
int [lo, hi]            ``<name>__relaxed`` in           nearest integer, clamped to
                        [lo - 0.5, hi + 0.5]             [lo, hi]
choice (n values)       ``<name>__index`` in             ``values[nearest index]``,
                        [-0.5, n - 0.5]                  clamped to [0, n - 1]
uniform [lo, hi]        ``<name>`` unchanged             ``x``
======================  ===============================  ==================================

Every integer and option owns an interval of width 1, so each is equally likely under
random sampling. Two relaxed points may decode to the same settings.

This module stays light (no searcher libraries): Ray workers import it to decode configs.

>>> from ser_tune.search.space import paper_space
>>> decode = RelaxedDecoder(paper_space())
>>> decode({"lr__log10": -4.0, "num_epochs__relaxed": 10.5, "unfreeze_epoch__relaxed": 1.49,
...         "max_length__index": 4.6, "batch_size": 16})
{'batch_size': 16, 'lr': 0.0001, 'num_epochs': 10, 'unfreeze_epoch': 1, 'max_length': 10.0}
"""
from __future__ import annotations

import math

from ray import tune

from ser_tune.search.base import native
from ser_tune.search.space import Param

_SUFFIX = {"loguniform": "__log10", "int": "__relaxed", "choice": "__index", "uniform": ""}


def relaxed_name(param: Param) -> str:
    return param.name + _SUFFIX[param.kind]


def relax_space(space: dict[str, Param]) -> dict:
    """Tune uniform domains over the relaxed floats (see the module table)."""
    out = {}
    for p in space.values():
        if p.kind == "loguniform":
            low, high = math.log10(p.low), math.log10(p.high)
        elif p.kind == "int":
            low, high = p.low - 0.5, p.high + 0.5
        elif p.kind == "choice":
            low, high = -0.5, len(p.values) - 0.5
        else:
            low, high = p.low, p.high
        out[relaxed_name(p)] = tune.uniform(low, high)
    return out


def _nearest(x: float, low: int, high: int) -> int:
    # floor(x + 0.5), not round(): Python rounds halves to even, which skews the intervals.
    return min(high, max(low, int(math.floor(float(x) + 0.5))))


class RelaxedDecoder:
    """Raw Ray config (relaxed floats) -> trial settings values; other keys pass through."""

    def __init__(self, space: dict[str, Param]):
        self.space = dict(space)

    def decode_value(self, p: Param, x: float):
        if p.kind == "loguniform":
            return min(p.high, max(p.low, 10.0 ** float(x)))
        if p.kind == "int":
            return _nearest(x, int(p.low), int(p.high))
        if p.kind == "choice":
            return p.values[_nearest(x, 0, len(p.values) - 1)]
        return float(x)

    def __call__(self, config: dict) -> dict:
        relaxed = {relaxed_name(p): p for p in self.space.values()}
        out = {key: native(value) for key, value in config.items() if key not in relaxed}
        out.update({p.name: self.decode_value(p, config[key]) for key, p in relaxed.items() if key in config})
        return out
