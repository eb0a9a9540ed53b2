"""What the cluster tests read from a study folder while the study runs and after it, and their two-node
cluster: written for tests/test_cluster_launch.py and tests/test_cluster_jobs.py (beside cluster_harness.py).

Trials report to Ray once, at their end; every epoch goes to the trial's own report log
``<study>/_trial_state/<unit>/<trial_id>/reports.jsonl`` as it happens (one JSON line per epoch,
kept across a retry or a resume). These helpers read both, tolerating a line still being written.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import yaml

from cluster_harness import LoopbackRayCluster, namespace_support
from ser_tune.training.finetune import STATE_FILE


@pytest.fixture(scope="module")
def cluster():
    """A module's two-node cluster (~20 s to start; `ray job stop` waits cluster/start-head.sh's grace, 60 s);
    skips where private namespaces are not allowed. A test module takes it with ``from cluster_studies import
    cluster``."""
    supported, why_not = namespace_support()
    if not supported:
        pytest.skip(f"multi-node cluster tests need private namespaces: {why_not}")
    started = time.monotonic()
    with LoopbackRayCluster(cpus_per_node=1) as running:
        print(f"[timing] two-node cluster up in {time.monotonic() - started:.1f}s")
        yield running


def write_experiment(tmp_path: Path, name: str, **changes) -> Path:
    """A small study on the synthetic corpus and the tiny Whisper, head-only trials of 1 CPU; ``changes``
    replace top-level entries (space, grid, strategies, budget, concurrency, ...)."""
    raw = {
        "name": name,
        "corpus": {"name": "synthetic", "root": str(tmp_path / "corpus"), "options": {"clips_per_cell": 2}},
        "split": {"kind": "speaker", "val_speakers": 2, "test_speakers": 2, "seed": 0},
        "encoder": "tiny-whisper",
        "trial": {"unfreeze": "none", "max_length": 1.0, "batch_size": 16},
        "space": {"lr": {"loguniform": [1e-3, 1e-2]}, "num_epochs": {"int": [1, 5000]}},
        "strategies": ["grid"],
        "budget": {"trials": 4},
        "resources": {"cpus_per_trial": 1},
        "concurrency": 2,
        "seed": 0,
        "storage": str(tmp_path / "storage"),
        "objective": {"metric": "val_bca", "mode": "max"},
        **changes,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def json_lines(path: Path) -> list[dict]:
    """Every complete JSON line of a file (none when it does not exist yet)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:   # a line still being written
            pass
    return rows


def report_log(study: Path, unit: str, trial_id: str) -> list[dict]:
    """A trial's report log as written: one row per epoch run, in order (a resumed epoch appears twice)."""
    return json_lines(study / "_trial_state" / unit / trial_id / "reports.jsonl")


def has_saved_state(study: Path, unit: str, trial_id: str) -> bool:
    """Whether the trial has saved an epoch state (every STATE_EVERY_S seconds): what a cut-off trial
    continues from; before the first save it starts again."""
    return (study / "_trial_state" / unit / trial_id / STATE_FILE).is_file()


def running_logs(study: Path, unit: str) -> dict[str, list[dict]]:
    """trial id -> report log, for the unit's trials that have one."""
    folder = study / "_trial_state" / unit
    return {d.name: report_log(study, unit, d.name) for d in sorted(folder.glob("*")) if d.is_dir()}


def finished_trials(study: Path) -> set[tuple[str, str]]:
    """(unit, trial id) of every trial whose final report reached Ray (``trial_complete``)."""
    done = set()
    for result in study.glob("*/*/result.json"):
        for row in json_lines(result):
            if row.get("trial_complete"):
                done.add((result.parent.parent.name, str(row["trial_id"])))
    return done


def wait_for(condition: Callable[[], object], what: str, *, timeout_s: float,
             still_running: Callable[[], str | None] = lambda: None, poll_s: float = 0.2):
    """Poll ``condition()`` until it returns something truthy. ``still_running()`` returns why waiting is
    pointless (the study's process ended, with its log), or None."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = condition()
        if found:
            return found
        why = still_running()
        assert why is None, f"gave up waiting for {what}: {why}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s}s"
        time.sleep(poll_s)


def check_units_complete(study: Path, budgets: dict[str, int]) -> pd.DataFrame:
    """study.json says done, every unit done; each unit's trials in trials.csv are exactly its budget,
    TERMINATED, with unique ids. Returns trials.csv."""
    meta = json.loads((study / "study.json").read_text())
    assert meta["status"] == "done", meta.get("status")
    assert {name: unit["status"] for name, unit in meta["units"].items()} == {u: "done" for u in budgets}
    trials = pd.read_csv(study / "trials.csv", dtype={"trial_id": str})
    for unit, budget in budgets.items():
        rows = trials[trials.unit == unit]
        assert len(rows) == budget, (unit, rows[["trial_id", "status"]])
        assert rows.trial_id.is_unique, (unit, rows.trial_id.tolist())
        assert (rows.status == "TERMINATED").all(), rows[["trial_id", "status", "error"]]
        assert rows.val_bca.between(0, 1).all() and rows.test_bca.between(0, 1).all(), rows
    return trials
