"""Trials in warm workers: a trial's body runs as a Ray task, in a worker process Ray keeps for the next trial.

A Ray Tune trial runs in an actor, and a Tuner's actors end with it, so every unit of a study (a strategy's
run on one fold and repeat) would pay again for its trial processes to import torch and the trainables
(~4 CPU-s) and for torch's first optimiser step to import ``torch._dynamo`` (~2.6 CPU-s): at 80+ units a
comparison, minutes of CPU spent outside any trial. Ray's task workers, though, are pooled per job and reused
across Tuners. So a body ``(config, context, trial_id) -> dict`` (a trial that reports once, at its end, and
keeps its epoch state in its own folder, not in Ray Tune's session) runs behind a thin trial actor: the actor
imports Ray Tune and this module only, submits the body into the trial's placement group, whose one bundle
holds the trial's resources (the actor itself takes none: an empty head bundle), and reports what it returns.

Ray fate-shares a task with its owner: a trial actor stopped by Tune (an interrupt, a time budget) or lost with
its node takes its running body down with it; an error in the body is the trial's error (RayTaskError wraps it).
Ray ends idle workers above ``num_workers_soft_limit`` (default: a node's CPUs, trial actors included), so a
study's local Ray raises it to :func:`pool_size` (cluster/ray-node-common.sh does the same on each node).
"""
from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
import threading
from typing import Any, Callable

SOFT_LIMIT_ENV = "RAY_num_workers_soft_limit"
SWITCH_ENV = "SER_TUNE_WARM_WORKERS"   # 0: bodies run inside their trial actors (measuring what warm buys)


def enabled() -> bool:
    """Bodies run in warm workers unless SER_TUNE_WARM_WORKERS=0 (bench/warm_workers.py compares the two)."""
    return os.environ.get(SWITCH_ENV, "1") != "0"


def pool_size(cpus: int) -> int:
    """Workers a node keeps: a trial actor and its body's worker per CPU, and two for the driver's own tasks."""
    return 2 * max(1, int(cpus)) + 2


def trainable(body: Callable[[dict, Any, str], dict], context: Any) -> Callable[[dict], None]:
    """A Ray Tune function trainable that runs ``body(config, context, trial_id)`` in a pooled worker and
    reports the dict it returns. Trials keep the body's name (their folders are ``<body name>_<id>``).

    The context goes to the object store once (as ``tune.with_parameters`` does) and reaches the worker as a
    reference, so the actor never deserialises it (no pandas, torch or ser_tune.training in the actor)."""
    import ray
    from ray import tune

    # By name when importable, so the actor never imports what the body's module does; a body of a script
    # (``__main__``) or a nested function goes by value.
    importable = body.__module__ != "__main__" and "<locals>" not in body.__qualname__
    target = f"{body.__module__}:{body.__qualname__}" if importable else body

    def thin(config: dict, context_ref: list) -> None:   # pickled by value, with the body's name
        exit_quietly_from_finalizers()
        tune.report(run_in_worker(target, config, context_ref[0]))

    thin.__name__ = body.__name__
    # A list: Ray does not put an ObjectRef itself; the object holding it keeps it alive.
    return tune.with_parameters(thin, context_ref=[ray.put(context)])


def in_actor(body: Callable[[dict, Any, str], dict]) -> Callable[[dict, Any], None]:
    """The body as a plain Ray Tune function trainable ``(config, context)``, run inside the trial's actor:
    each unit's trial processes then start cold (import torch and the trainables), as Ray Tune's do."""
    def run(config: dict, context: Any) -> None:
        from ray import tune

        exit_quietly_from_finalizers()
        tune.report(body(config, context, tune.get_context().get_trial_id()))

    run.__name__ = body.__name__
    return run


def resources(cpus: float, memory: int | None = None):
    """A trial's resources for :func:`trainable`: an empty bundle for the thin actor (it computes nothing)
    and one for the body, on the same node."""
    from ray import tune

    worker = {"CPU": float(cpus), **({"memory": int(memory)} if memory else {})}
    return tune.PlacementGroupFactory([{}, worker], strategy="STRICT_PACK")


def run_in_worker(body: str | Callable, config: dict, context_ref) -> dict:
    """In a trial actor: run the body (``module:function``, or the function) in a pooled worker of the
    trial's bundle; its result."""
    import ray
    from ray import tune

    pg = ray.util.get_current_placement_group()
    bundle = pg.bundle_specs[-1] if pg is not None else {}
    trial_id = tune.get_context().get_trial_id()
    task = body_task().options(num_cpus=bundle.get("CPU", 1), memory=bundle.get("memory"),
                               name=f"{body_name(body)} {trial_id}")   # how the dashboard lists it
    return ray.get(task.remote(body, config, context_ref, trial_id))


def body_name(body: str | Callable) -> str:
    return body.rpartition(":")[2] if isinstance(body, str) else body.__name__


def start(body: Callable, slots: int, cpus: float) -> list:
    """Start ``slots`` workers (spread over the nodes), each importing the body's module and running its
    ``warm_up()`` when it has one; returns at once, with the references :func:`ready` waits for. Ray reuses
    the workers for the trials."""
    import ray

    task = ray.remote(max_retries=0)(import_body).options(num_cpus=cpus, scheduling_strategy="SPREAD",
                                                          runtime_env=trial_runtime_env())
    return [task.remote(body.__module__) for _ in range(slots)]


def ready(pending: list, *, timeout_s: float = 120.0) -> list[int]:
    """The pids of the workers :func:`start` started that are ready within ``timeout_s``; one not ready in time
    costs nothing but its start, which a trial would have paid."""
    import ray

    done, _ = ray.wait(pending, num_returns=len(pending), timeout=timeout_s)
    return ray.get(done)


def prewarm(body: Callable, slots: int, cpus: float, *, timeout_s: float = 120.0) -> list[int]:
    """:func:`start` the workers and wait until they are :func:`ready`."""
    return ready(start(body, slots, cpus), timeout_s=timeout_s)


def trial_runtime_env() -> dict:
    """The runtime environment Ray Tune gives its trial actors, which their bodies' tasks inherit: Ray pools
    workers by runtime environment, so workers started ahead must have the same one to be reused."""
    from ray.tune.execution.class_cache import DEFAULT_ENV_VARS, ENV_VARS_TO_PROPAGATE

    return {"env_vars": {**DEFAULT_ENV_VARS, **{k: os.environ[k] for k in ENV_VARS_TO_PROPAGATE if k in os.environ}}}


def leave_quietly_on_sigterm() -> None:
    """In a pooled worker: SIGTERM ends it at once and quietly. Ray's worker loop installs its own handler as
    it starts (after the study's setup hook), which raises SystemExit wherever the worker is; a finalizer
    running then prints the exit as a traceback on the study's terminal (seen when Ray ended an idle worker
    between units). A trial's state is on disk at every epoch, so nothing is lost. Only the main thread,
    where Ray runs a worker's tasks, can set a handler."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))


def import_body(module: str) -> int:
    """In a worker: import ``module`` and run its ``warm_up()`` (what its bodies would pay at their first
    trial); this worker's pid. A module the worker cannot import (a script's) is left to the trial."""
    leave_quietly_on_sigterm()
    try:
        imported = importlib.import_module(module)
    except ImportError:
        return os.getpid()
    if callable(getattr(imported, "warm_up", None)):
        imported.warm_up()
    return os.getpid()


@functools.cache
def body_task():
    """The Ray task that runs a body. No retries: a worker lost mid-trial is the trial's failure, retried by
    Ray Tune's FailureConfig from the trial's epoch state, as any trial."""
    import ray

    return ray.remote(max_retries=0)(run_body)


def run_body(body: str | Callable, config: dict, context: Any, trial_id: str) -> dict:
    """In the pooled worker: the body (imported when named ``module:function``) run; what it returns."""
    leave_quietly_on_sigterm()
    if isinstance(body, str):
        module, _, function = body.partition(":")
        body = getattr(importlib.import_module(module), function)
    return body(config, context, trial_id)


def exit_quietly_from_finalizers() -> None:
    """In a trial actor: a SystemExit raised inside a finalizer ends the process at once and quietly. Ray ends
    a Tuner's actors with SIGTERM, whose handler raises SystemExit wherever the main thread is; raised in a
    finalizer (a weakref callback), Python cannot propagate it and prints it as "Exception ignored ...
    Traceback" on the study's terminal (seen at the end of a unit), and the process goes on. The trainable
    runs off the main thread, where no signal handler can be set, but the hook for such exceptions
    (``sys.unraisablehook``) can be set from any thread; anything else still goes to the previous hook."""
    if getattr(sys.unraisablehook, "exits_on_system_exit", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, SystemExit):
            os._exit(0)
        previous(unraisable)

    hook.exits_on_system_exit = True
    sys.unraisablehook = hook
