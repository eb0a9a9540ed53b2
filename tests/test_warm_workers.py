"""study.warm: a trial's body runs in a Ray worker that the next Tuner run's trials reuse; the body's error is
the trial's error; a trial stopped by Ray Tune takes its running body down with it."""
from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest
import ray
from ray import tune

from ser_tune.study import warm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    if ray.is_initialized():
        ray.shutdown()
    before = os.environ.get(warm.SOFT_LIMIT_ENV)
    os.environ[warm.SOFT_LIMIT_ENV] = str(warm.pool_size(2))   # as a study's local Ray starts
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
    if before is None:
        os.environ.pop(warm.SOFT_LIMIT_ENV, None)
    else:
        os.environ[warm.SOFT_LIMIT_ENV] = before


def fit(body, context, tmp_path: Path, name: str, values, **tune_config):
    trainable = tune.with_resources(warm.trainable(body, context), warm.resources(1))
    return tune.Tuner(trainable, param_space={"x": tune.grid_search(list(values))},
                      tune_config=tune.TuneConfig(max_concurrent_trials=2, **tune_config),
                      run_config=tune.RunConfig(storage_path=str(tmp_path), name=name, verbose=0)).fit()


def test_later_tuner_runs_reuse_the_workers_of_earlier_ones_and_bodies_get_their_trial_and_context(tmp_path):
    def body(config, context, trial_id):   # nested: shipped by value (workers cannot import a test module)
        import signal

        return {"y": config["x"] * context["scale"], "worker": os.getpid(), "body_trial": trial_id,
                "sigterm": getattr(signal.getsignal(signal.SIGTERM), "__module__", None)}

    runs = [fit(body, {"scale": 10}, tmp_path, f"unit{n}", [1, 2, 3]) for n in range(3)]
    results = [r for grid in runs for r in grid]
    assert all(r.error is None for r in results)
    assert sorted(r.metrics["y"] for r in results) == [10, 10, 10, 20, 20, 20, 30, 30, 30]
    assert all(r.metrics["body_trial"] == r.metrics["trial_id"] for r in results)
    assert all(r.metrics["worker"] != r.metrics["pid"] for r in results)   # not in the trial's own actor
    # SIGTERM (Ray ending an idle worker, or the study's Ray) ends a worker quietly, not by Ray's own
    # handler, whose SystemExit a finalizer can print as a traceback on the study's terminal
    assert {r.metrics["sigterm"] for r in results} == {"ser_tune.study.warm"}
    workers = [{r.metrics["worker"] for r in grid} for grid in runs]
    # each later run's trials ran in a process the first run started (its Tuner and actors had ended)
    assert all(later & workers[0] for later in workers[1:]), workers
    assert len(set.union(*workers)) <= warm.pool_size(2), workers   # the pool Ray keeps, for all 9 trials


def test_workers_started_ahead_run_the_first_trials(tmp_path):
    """study.driver starts as many workers as trials run at a time before the first unit: its trials run in
    them (no unit pays for starting workers)."""
    def body(config, context, trial_id):
        return {"worker": os.getpid()}

    ahead = warm.prewarm(body, 2, 1)
    assert len(ahead) == 2
    used = {r.metrics["worker"] for r in fit(body, None, tmp_path, "ahead", [1, 2, 3, 4])}
    assert used & set(ahead), (used, ahead)


def test_an_error_in_the_body_is_the_trials_error(tmp_path):
    def body(config, context, trial_id):
        if config["x"] == 2:
            raise ValueError(f"loss became nan in trial x={config['x']}")
        return {"y": 1}

    results = {r.config["x"]: r for r in fit(body, None, tmp_path, "errors", [1, 2])}
    assert results[1].error is None and results[1].metrics["y"] == 1
    assert "loss became nan in trial x=2" in str(results[2].error)


def test_a_trial_stopped_by_ray_tune_takes_its_running_body_down(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()

    def body(config, context, trial_id):
        (Path(context) / f"started-{os.getpid()}").touch()
        time.sleep(120)
        (Path(context) / f"ended-{os.getpid()}").touch()
        return {"y": 1}

    start = time.monotonic()
    fit(body, str(marks), tmp_path, "stopped", [1], time_budget_s=8)
    assert time.monotonic() - start < 90
    started = [int(p.name.split("-")[1]) for p in marks.glob("started-*")]
    assert started, "the body never started"
    deadline = time.monotonic() + 30
    while any(psutil.pid_exists(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(psutil.pid_exists(pid) for pid in started)
    assert not list(marks.glob("ended-*"))
