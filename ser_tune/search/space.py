"""Search spaces: what an experiment searches over, parsed and checked once.

A space maps trial-setting names (fields of :class:`~ser_tune.training.settings.TrialSettings`)
to a :class:`Param`. In an experiment YAML each parameter is a one-key mapping::

    lr:            {loguniform: [1.0e-6, 1.0e-3]}
    dropout:       {uniform: [0.0, 0.5]}
    num_epochs:    {int: [1, 10]}          # both ends included
    max_length:    {choice: [2, 3, 4, 5, 7, 10]}

A conditional space: ``head`` maps each head family to the settings searched only when it is the
trial's head (a family with nothing of its own searched maps to ``{}``)::

    head:
      logreg: {C: {loguniform: [1.0e-4, 1.0e+1]}}
      mlp:    {lr: {loguniform: [1.0e-5, 1.0e-3]}, head_hidden: {choice: [64, 256]}}

Parsed, that is a flat space: ``head`` a choice of the families, and each branch's setting a
parameter of its own named ``<head>.<setting>`` (``logreg.C``, ``mlp.lr``). Every searcher samples
the flat space (random, grid, skopt and BayesOpt know nothing of conditions; TPE and Optuna model each
parameter as its own dimension too), and a trial's config keeps only its head's branch, renamed, and
leaves out every setting that does not apply to its head
(:func:`ser_tune.training.settings.applicable`): a value sampled for another head never reaches the
trial, its settings or its ``cfg_`` columns. The honest cost: a searcher that learns also sees the
unused draws of the other branches (noise it must average out), and grid points that differ only in
another head's settings repeat a trial's settings.

>>> space = parse_space({"lr": {"loguniform": [1e-5, 1e-3]}, "num_epochs": {"int": [1, 4]}})
>>> space["num_epochs"]
Param(name='num_epochs', kind='int', low=1, high=4, values=())
>>> grid_size(paper_grid())
144
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from ser_tune.training.settings import BRANCH, HEADS, ONLY_FOR_HEADS, TrialSettings

KINDS = ("loguniform", "uniform", "int", "choice")


class SpaceError(ValueError):
    """A search space or grid is malformed; the message names the parameter."""


@dataclass(frozen=True)
class Param:
    """One searched trial setting."""

    name: str
    kind: str                    # "loguniform" | "uniform" | "int" | "choice"
    low: float | None = None     # bounds for loguniform / uniform / int (int: inclusive)
    high: float | None = None
    values: tuple = ()           # the options of a choice


def check_setting_name(name: Any, where: str) -> str:
    """A searched parameter must be a TrialSettings field (or ``<head>.<field>``, a conditional space's
    branch setting, that applies to that head); ``where`` prefixes the message."""
    known = TrialSettings.field_names()
    head, setting = split_branch(name) if isinstance(name, str) else (None, name)
    if not isinstance(setting, str) or setting not in known:
        raise SpaceError(f"{where}.{name}: '{setting}' is not a trial setting; "
                         f"known settings: {', '.join(known)}")
    if head is not None and head not in ONLY_FOR_HEADS.get(setting, HEADS):
        raise SpaceError(f"{where}.{name}: '{setting}' does not apply to head {head} (it applies to "
                         f"{', '.join(ONLY_FOR_HEADS[setting])})")
    return name


def split_branch(name: str) -> tuple[str | None, str]:
    """``"logreg.C"`` -> ("logreg", "C"); a plain setting name -> (None, name)."""
    head, sep, setting = name.partition(BRANCH)
    return (head, setting) if sep else (None, name)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _number(value: Any, where: str, what: str) -> float:
    if _is_number(value):
        return value
    hint = ""
    if isinstance(value, str):
        # PyYAML (YAML 1.1) reads 1e-6 without a dot as text.
        hint = "; YAML reads numbers like 1e-6 as text, write 1.0e-6"
    raise SpaceError(f"{where}: {what} must be a number (got {value!r}{hint})")


def _check_value(name: str, value: Any, where: str) -> None:
    """Reject values TrialSettings would refuse, e.g. num_epochs 0, at load time (a branch setting with
    its head: ``logreg.layer: weighted`` is refused)."""
    head, setting = split_branch(name)
    try:
        # judged beside a layer every head reads (only this value is judged), a branch's beside its head
        beside = {"layer": 0, **({} if head is None else {"head": head})}
        TrialSettings.from_config({**beside, setting: value})
    except Exception as err:  # SettingsError, or a type the field cannot hold
        raise SpaceError(f"{where}: {value!r} is not a valid value ({err})") from None


def parse_param(name: str, raw: Any, where: str = "space") -> Param:
    """Parse one ``{kind: [...]}`` entry; errors name ``<where>.<name>``."""
    check_setting_name(name, where)
    at = f"{where}.{name}"
    if isinstance(raw, Param):
        raw = _param_to_raw(raw)
    if not isinstance(raw, dict) or len(raw) != 1:
        raise SpaceError(f"{at}: expected a one-key mapping such as {{loguniform: [low, high]}}, "
                         f"{{uniform: [low, high]}}, {{int: [low, high]}} or {{choice: [...]}} (got {raw!r})")
    (kind, args), = raw.items()
    if kind not in KINDS:
        raise SpaceError(f"{at}: unknown kind '{kind}'; choose from {', '.join(KINDS)}")
    if not isinstance(args, (list, tuple)):
        raise SpaceError(f"{at}: {kind} needs a list (got {args!r})")

    if kind == "choice":
        if not args:
            raise SpaceError(f"{at}: choice needs at least one value")
        if len(set(map(repr, args))) != len(args):
            raise SpaceError(f"{at}: choice values repeat ({list(args)!r})")
        for value in args:
            _check_value(name, value, at)
        return Param(name, kind, values=tuple(args))

    if len(args) != 2:
        raise SpaceError(f"{at}: {kind} needs [low, high] (got {list(args)!r})")
    low = _number(args[0], at, "low")
    high = _number(args[1], at, "high")
    if kind == "int" and not all(isinstance(v, Integral) or float(v).is_integer() for v in (low, high)):
        raise SpaceError(f"{at}: int bounds must be integers (got {low!r}, {high!r})")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(f"{at}: loguniform low must be > 0 (got {low!r})")
    if kind == "int":
        low, high = int(low), int(high)
        if low > high:
            raise SpaceError(f"{at}: low must be <= high (got {low} > {high})")
    elif not low < high:
        raise SpaceError(f"{at}: low must be < high (got {low!r} > {high!r})" if low > high
                         else f"{at}: low must be < high (got {low!r} == {high!r})")
    _check_value(name, low, f"{at} low")
    _check_value(name, high, f"{at} high")
    return Param(name, kind, low=low, high=high)


def parse_space(raw: dict, where: str = "space") -> dict[str, Param]:
    """Parse a YAML space (name -> {kind: [...]}, ``head`` also -> {family: sub-space}) into Params,
    checking every entry."""
    if not isinstance(raw, dict):
        raise SpaceError(f"{where}: expected a mapping of setting name -> {{kind: [...]}} (got {raw!r})")
    if not raw:
        raise SpaceError(f"{where}: the space is empty; name at least one setting to search")
    space: dict[str, Param] = {}
    for name, value in raw.items():
        if is_branching(name, value):
            space.update(parse_branches(value, f"{where}.{name}"))
        else:
            space[name] = parse_param(name, value, where)
    return space


def is_branching(name: Any, value: Any) -> bool:
    """``head: {family: sub-space, ...}``: a conditional entry (any other mapping is a parameter)."""
    return (name == "head" and isinstance(value, dict) and bool(value) and not isinstance(value, Param)
            and not set(value) & set(KINDS))


def parse_branches(raw: dict, where: str) -> dict[str, Param]:
    """``{family: {setting: {kind: [...]}}}`` -> the choice of families and each branch's Params."""
    out = {"head": Param("head", "choice", values=tuple(raw))}
    for head, sub in raw.items():
        if head not in HEADS:
            raise SpaceError(f"{where}.{head}: not a head family; choose from {', '.join(HEADS)}")
        if sub is None or sub == {}:
            continue
        if not isinstance(sub, dict):
            raise SpaceError(f"{where}.{head}: expected a mapping of setting name -> {{kind: [...]}} "
                             f"(or {{}}) (got {sub!r})")
        for name, value in sub.items():
            if BRANCH in str(name) or name == "head":
                raise SpaceError(f"{where}.{head}.{name}: a branch searches settings of its head, not "
                                 f"'{name}'")
            full = f"{head}{BRANCH}{name}"
            out[full] = parse_param(full, value, where)
    return out


def _param_to_raw(param: Param) -> dict:
    if param.kind == "choice":
        return {"choice": list(param.values)}
    return {param.kind: [param.low, param.high]}


def space_to_raw(space: dict[str, Param]) -> dict:
    """The YAML form of a parsed space (inverse of :func:`parse_space`)."""
    branched = any(split_branch(name)[0] is not None for name in space)
    out: dict = {}
    for name, param in space.items():
        head, setting = split_branch(name)
        if head is not None:
            out.setdefault("head", {}).setdefault(head, {})[setting] = _param_to_raw(param)
        elif name == "head" and branched:
            out.setdefault("head", {}).update({h: out.get("head", {}).get(h, {}) for h in param.values})
        else:
            out[name] = _param_to_raw(param)
    return out


def paper_space() -> dict[str, Param]:
    """The reference paper's four hyper-parameters and ranges."""
    return parse_space({
        "lr": {"loguniform": [1e-6, 1e-3]},
        "num_epochs": {"int": [1, 10]},
        "unfreeze_epoch": {"int": [0, 5]},
        "max_length": {"choice": [2.0, 3.0, 4.0, 5.0, 7.0, 10.0]},
    })


def paper_grid() -> dict[str, list]:
    """A reconstruction of the reference paper's grid: 4 x 3 x 3 x 4 = 144 points.

    The paper reports that its grid search needed 143 trials to pass 0.9 but does not
    publish the grid's values; these cover the same four parameters and ranges as
    :func:`paper_space` at about the same size.
    """
    return {
        "lr": [1e-6, 1e-5, 1e-4, 1e-3],
        "num_epochs": [1, 5, 10],
        "unfreeze_epoch": [0, 2, 5],
        "max_length": [2.0, 3.0, 4.0, 5.0],
    }


def parse_grid(raw: Any, where: str = "grid") -> dict[str, list]:
    """Check a grid (name -> non-empty list of values); errors name ``<where>.<name>``."""
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{where}: expected a non-empty mapping of setting name -> list of values (got {raw!r})")
    grid = {}
    for name, values in raw.items():
        check_setting_name(name, where)
        at = f"{where}.{name}"
        if not isinstance(values, (list, tuple)) or not values:
            raise SpaceError(f"{at}: expected a non-empty list of values (got {values!r})")
        for value in values:
            _check_value(name, value, at)
        grid[name] = list(values)
    return grid


def default_grid(space: dict[str, Param], points: int = 4) -> dict[str, list]:
    """A grid for a space: the paper's grid for the paper's space, else ``points`` values per parameter
    (log-spaced for loguniform, evenly spaced for uniform and int, every option of a choice)."""
    if space == paper_space():
        return paper_grid()
    grid: dict[str, list] = {}
    for name, p in space.items():
        if p.kind == "choice":
            grid[name] = list(p.values)
        elif p.kind == "int":
            steps = [p.low + (p.high - p.low) * i / (points - 1) for i in range(points)]
            grid[name] = sorted({int(math.floor(s + 0.5)) for s in steps})
        elif p.kind == "loguniform":
            lo, hi = math.log10(p.low), math.log10(p.high)
            grid[name] = [float(f"{10 ** (lo + (hi - lo) * i / (points - 1)):.3g}") for i in range(points)]
        else:
            grid[name] = [float(f"{p.low + (p.high - p.low) * i / (points - 1):.4g}") for i in range(points)]
    return grid


def to_tune_space(space: dict[str, Param]) -> dict:
    """Ray Tune sampling domains for a space (randint's upper end is exclusive, hence +1)."""
    from ray import tune   # here, not at the top: reading a config never waits for Ray Tune's import

    out = {}
    for name, p in space.items():
        if p.kind == "loguniform":
            out[name] = tune.loguniform(p.low, p.high)
        elif p.kind == "uniform":
            out[name] = tune.uniform(p.low, p.high)
        elif p.kind == "int":
            out[name] = tune.randint(p.low, p.high + 1)
        else:
            out[name] = tune.choice(list(p.values))
    return out


def to_grid_space(grid: dict[str, list]) -> dict:
    """``{name: tune.grid_search(values)}`` after checking names and values against TrialSettings."""
    from ray import tune

    return {name: tune.grid_search(list(values)) for name, values in parse_grid(grid).items()}


def grid_size(grid: dict[str, list]) -> int:
    return math.prod(len(values) for values in grid.values())


def grid_points(grid: dict[str, list]) -> list[dict]:
    """Every grid point in the order Ray Tune's BasicVariantGenerator runs them: nested loops
    over the parameter names in alphabetical order, the first name varying fastest."""
    from ray.tune.search.variant_generator import generate_variants

    names = list(grid)
    return [{name: spec[name] for name in names} for _, spec in generate_variants(to_grid_space(grid))]
