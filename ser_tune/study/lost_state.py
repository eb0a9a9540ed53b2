"""A unit whose Ray Tune experiment state is lost: Ray writes ``experiment_state-*.json``, and the searcher's
snapshots (``search_gen_state-*.json``, ``searcher-state-*.pkl``), in place, so a kill at that moment leaves one
empty or cut short and ``Tuner.restore`` cannot read it. The unit then starts again with the budget its
ended trials left and its searcher told their results: no ended trial runs again, and each keeps its row (the
unit's study.json entry lists their folders under ``earlier_trials``, read back from the trials' own files)."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from ..training.trainable import TRIAL_COMPLETE

STATE_FILES, TUNER_FILE = "experiment_state-*.json", "tuner.pkl"   # Tuner.restore needs both
SEARCH_FILES = ("search_gen_state-*.json", "searcher-state-*.pkl")   # and reads the newest of each when there


def state_lost(unit_dir: Path) -> bool:
    """A unit folder Ray has written to whose newest experiment state, or searcher snapshot, cannot be read."""
    states = sorted(unit_dir.glob(STATE_FILES))
    if not (states or trial_dirs(unit_dir) or (unit_dir / TUNER_FILE).exists()):
        return False
    newest = [found[-1] for found in (sorted(unit_dir.glob(pattern)) for pattern in SEARCH_FILES) if found]
    return not states or not all(readable(path) for path in [states[-1], *newest])


def readable(path: Path) -> bool:
    """Whether a snapshot loads whole: JSON, or a (cloud)pickle as Ray reads its searcher's."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            import cloudpickle

            with path.open("rb") as f:
                cloudpickle.load(f)
        return True
    except Exception:   # noqa: BLE001 - empty, cut short or not unpicklable: Ray's restore would fail the same
        return False


def forget_state(unit_dir: Path, keep: Sequence[str] = ()) -> None:
    """What is left of Ray's state of the unit, so that it starts afresh: its snapshots, and the folders of
    its trials other than ``keep`` (the ended ones): a trial cut off by the kill cannot go on without Ray's
    state of it, and the budget it left runs as a new trial."""
    snapshots = [p for pattern in (STATE_FILES, *SEARCH_FILES) for p in unit_dir.glob(pattern)]
    for path in [*snapshots, unit_dir / TUNER_FILE]:
        path.unlink(missing_ok=True)
    started = {p.parent for name in ("params.json", "result.json") for p in unit_dir.glob(f"*/{name}")}
    for folder in started:
        if folder.name not in keep:
            shutil.rmtree(folder, ignore_errors=True)


def trial_dirs(unit_dir: Path) -> list[Path]:
    return sorted(p.parent for p in unit_dir.glob("*/result.json"))


def ended_trials(unit_dir: Path) -> list[str]:
    """The folders of the unit's trials that ended (finished or failed), from their own result files."""
    return [p.name for p in trial_dirs(unit_dir) if ended(load(p))]


def load(trial_dir: Path):
    from ray.tune import Result

    try:
        return Result.from_path(str(trial_dir))
    except (OSError, ValueError, RuntimeError):   # its last line half-written: it had not ended
        return None


def ended(result) -> bool:
    return result is not None and bool(result.error or (result.metrics or {}).get(TRIAL_COMPLETE))


def restart(unit, earlier: list):
    """``unit`` started afresh without its ``earlier`` trials: a grid's remaining points, or a searcher told the
    earlier results (random search has nothing to learn) running the budget they left; its progress lines
    count on from them."""
    if unit.progress is not None:
        unit = dataclasses.replace(unit, progress=unit.progress.going_on_from([r.metrics or {} for r in earlier]))
    return restarted_search(unit, earlier)


def restarted_search(unit, earlier: list):
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.sample import Domain
    from ray.tune.search.variant_generator import generate_variants

    axes = [k for k, v in unit.param_space.items() if isinstance(v, dict) and "grid_search" in v]
    if axes:
        # a grid's points not yet run, in Ray's order (a grid larger than the budget runs its first)
        grid = [config for _, config in generate_variants(unit.param_space)]
        left = [c for c in grid if not any(all(r.config.get(k) == c[k] for k in axes) for r in earlier)]
        left = left[:max(unit.expected_trials - len(earlier), 0)]
        limit = getattr(unit.searcher, "max_concurrent", 0) or unit.max_concurrent_trials or 0
        # the space stays whole: Ray resolves each point against it (its grid axes and constants)
        return dataclasses.replace(unit, num_samples=len(left),
                                   searcher=BasicVariantGenerator(points_to_evaluate=left, max_concurrent=limit))
    left = max(unit.num_samples - len(earlier), 0)
    if isinstance(unit.searcher, BasicVariantGenerator):   # random search: new draws, not its first ones again
        searcher = BasicVariantGenerator(random_state=restart_seed(unit, earlier),
                                         max_concurrent=unit.searcher.max_concurrent)
        return dataclasses.replace(unit, num_samples=left, searcher=searcher)
    if unit.searcher is None:
        return dataclasses.replace(unit, num_samples=left)
    unit.searcher.set_search_properties(unit.metric, unit.mode if unit.metric else None, unit.param_space)
    reseed(unit.searcher, restart_seed(unit, earlier))
    tell(unit.searcher, earlier, unit.metric)
    constants = {k: v for k, v in unit.param_space.items() if not isinstance(v, Domain)}
    return dataclasses.replace(unit, param_space=constants, num_samples=left)


def restart_seed(unit, earlier: list) -> int:
    """A restarted unit's searcher seed: drawn from the unit's and the count of its ended trials, so that it
    does not draw its first (random warm-up) points again, the ones its ended trials already ran."""
    return int(np.random.SeedSequence([int(unit.info.get("seed") or 0), len(earlier)]).generate_state(1)[0])


def reseed(searcher, seed: int) -> None:
    """A restarted hyperopt or BayesOpt search draws its random warm-up from ``seed`` (:func:`restart_seed`).
    (skopt's told points advance its warm-up; Optuna's samplers and random search are built anew.)"""
    from ray.tune.search.bayesopt import BayesOptSearch
    from ray.tune.search.hyperopt import HyperOptSearch

    while hasattr(searcher, "searcher"):   # through Ray's ConcurrencyLimiter
        searcher = searcher.searcher
    if isinstance(searcher, HyperOptSearch):
        searcher.rstate = np.random.RandomState(seed)
    elif isinstance(searcher, BayesOptSearch) and searcher.optimizer is not None:
        # its warm-up draws come from the target space's own generator, seeded as the study's unit was
        searcher.optimizer.space.random_state = np.random.RandomState(seed)


def tell(searcher, earlier: list, metric: str | None) -> None:
    """Each earlier trial's settings and result, told to the searcher as if it had suggested them."""
    if metric is None:   # a searcher of several objectives: started without them
        return
    for result in earlier:
        try:
            searcher.add_evaluated_point(result.config, (result.metrics or {}).get(metric), error=bool(result.error))
        except NotImplementedError:
            return
