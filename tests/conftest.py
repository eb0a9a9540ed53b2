"""Shared fixtures: the synthetic corpus (generated once per session) and the real EmoDB when present."""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from ser_tune.data import generate_synthetic, load_corpus

# Local studies start no Ray dashboard (~5 s each and a share of the 2 cores while they run); the tests
# of the dashboard's token and login line ask for it back.
os.environ.setdefault("SER_TUNE_RAY_DASHBOARD", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
EMODB_ROOT = SHARED / "data" / "emodb"


# Seconds the slowest files took in a whole run on 2 cores (2026-12-07, clean clone of 9ead578, `--durations=0`;
# the active, recovery and interrupt files shortened after it): pyproject's ``-n 2 --dist loadfile
# --no-loadscope-reorder`` hands whole files to the two test processes in this order as they free up, so the
# longest going first makes them end together.
SLOW_FILE_SECONDS = {"test_launch.py": 390, "test_readme_commands.py": 320, "test_cluster_jobs.py": 200,
                     "test_active_cli.py": 190, "test_study_repeats.py": 170, "test_study_interrupt.py": 140,
                     "test_search_tuner.py": 100, "test_study_recovery.py": 90, "test_cluster_launch.py": 85,
                     "test_study_deploy.py": 80, "test_warm_workers.py": 75, "test_live_view.py": 65}


def pytest_collection_modifyitems(config, items):
    """Files holding slow tests first, the longest first (stable: a file's tests stay together and in
    order), so that the two test processes end together instead of one finishing a long file alone."""
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}

    def order(item):
        path = item.nodeid.split("::")[0]
        return path not in slow_files, -SLOW_FILE_SECONDS.get(Path(path).name, 0)
    items.sort(key=order)


@pytest.fixture(autouse=True)
def python_ctrl_c():
    """Every test starts with Python's own Ctrl-C handler: a test process can be left with SIGINT ignored
    (a local Ray starts with it ignored), and a launcher a test starts inherits an ignored SIGINT, so the
    interrupt tests would send Ctrl-C into nothing."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Folder holding the default synthetic corpus (seed 0: 8 speakers x 7 emotions x 4 clips)."""
    return generate_synthetic(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def synthetic_corpus(synthetic_root):
    return load_corpus("synthetic", synthetic_root)


@pytest.fixture(scope="session")
def emodb_root() -> Path:
    """The real EmoDB copy at ../shared/data/emodb; skips the test when it is absent."""
    if not EMODB_ROOT.is_dir() or not any(EMODB_ROOT.glob("*.wav")):
        pytest.skip(f"real EmoDB not found at {EMODB_ROOT}")
    return EMODB_ROOT


@pytest.fixture(scope="session")
def feature_cache_root(tmp_path_factory) -> Path:
    """One feature cache for the session: tests that do not inspect cache misses share encoded features,
    as the trials of a study do."""
    return tmp_path_factory.mktemp("feature_cache")
