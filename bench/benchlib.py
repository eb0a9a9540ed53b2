"""Shared pieces of the bench/ scripts: where the data is, what machine and commit a figure came
from, the corpus + encoder a benchmark uses, and writing bench/results/<name>.json.

Every script runs from the repository root (``python bench/<name>.py``) or anywhere else: paths
are resolved from this file. The real EmoDB and Whisper-base encoder are used when
``../shared`` (relative to the repository root) holds them; otherwise the synthetic stand-in
corpus and the tiny Whisper encoder, and every figure says which.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
EMODB_ROOT = SHARED / "data" / "emodb"
WHISPER_BASE = SHARED / "models" / "whisper-base-encoder"
RESULTS = REPO / "bench" / "results"
SYNTHETIC_ROOT = REPO / "studies" / "_synthetic"   # where the quickstart puts it too (git-ignored)


class BenchError(RuntimeError):
    """A benchmark cannot run or read its input; the message names the file, folder or flag."""


def real_data_available() -> bool:
    return (EMODB_ROOT.is_dir() and any(EMODB_ROOT.glob("*.wav"))
            and (WHISPER_BASE / "config.json").is_file())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def git_commit() -> str:
    """Short HEAD commit, with '+uncommitted' when the working tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (head or "unknown") + ("+uncommitted" if dirty else "")


def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "platform": platform.platform(),
            "python": sys.version.split()[0], "torch": torch.__version__.split("+")[0],
            "memory_gib": _memory_gib()}


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def command_line(argv: list[str] | None = None) -> str:
    """The command that produced the figures, as one would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = script.relative_to(REPO)
    except ValueError:
        shown = script
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", str(shown), *map(shlex.quote, args)])


class Run:
    """Context of one benchmark run: start time, load, commit; ``finish`` writes the JSON."""

    def __init__(self, name: str, argv: list[str] | None = None):
        self.name = name
        self.command = command_line(argv)
        self.started = _dt.datetime.now().astimezone()
        self.load_start = load_average()
        self.commit = git_commit()
        self.machine = machine()
        print(f"[{name}] command: {self.command}", flush=True)
        print(f"[{name}] machine: {self.machine['cpus']} CPUs ({self.machine['cpu_model']}), "
              f"load average {self.load_start}, commit {self.commit}", flush=True)

    def finish(self, figures: dict, out: str | Path | None = None) -> Path:
        load_end = load_average()
        record = {"benchmark": self.name, "command": self.command, "date": self.started.isoformat(timespec="seconds"),
                  "commit": self.commit, "machine": self.machine, "load_average_start": self.load_start,
                  "load_average_end": load_end, "figures": figures}
        path = Path(out) if out else RESULTS / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n")
        os.replace(tmp, path)
        print(f"[{self.name}] load average at end {load_end}", flush=True)
        print(f"[{self.name}] figures written to {path}", flush=True)
        print(f"[{self.name}] produced by: {self.command}", flush=True)
        return path


def _jsonable(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
    except ImportError:
        pass
    if isinstance(value, Path):
        return str(value)
    return str(value)


@dataclass
class BenchData:
    """The corpus, split and encoder a benchmark trains on."""
    table: object            # pandas DataFrame of clips
    assignment: object       # pandas Series: clip -> train / val / test
    labels: list
    encoder_spec: str
    real: bool
    description: str


def bench_data(force_synthetic: bool = False) -> BenchData:
    """Real EmoDB + Whisper-base when ../shared has them (and not forced off), else synthetic + tiny."""
    from ser_tune.data import generate_synthetic, load_corpus, make_split

    split_spec = {"kind": "speaker", "val_speakers": 2, "test_speakers": 2, "seed": 0}
    if real_data_available() and not force_synthetic:
        corpus = load_corpus("emodb", EMODB_ROOT)
        spec = f"hf:{WHISPER_BASE}"
        description = f"real EmoDB ({len(corpus.table)} clips, {EMODB_ROOT}) + Whisper-base encoder ({WHISPER_BASE})"
        real = True
    else:
        root = generate_synthetic(SYNTHETIC_ROOT)
        corpus = load_corpus("synthetic", root)
        spec = "tiny-whisper"
        why = "forced by --synthetic" if force_synthetic else f"no EmoDB/Whisper-base under {SHARED}"
        description = (f"SYNTHETIC stand-in corpus ({len(corpus.table)} clips, {root}) + tiny random Whisper "
                       f"encoder ({why})")
        real = False
    split = make_split(corpus.table, split_spec)
    labels = sorted(corpus.table["label"].unique())
    return BenchData(table=corpus.table, assignment=split.assignment, labels=labels, encoder_spec=spec,
                     real=real, description=description)


def study_cpus(study) -> tuple[float, float]:
    """(the cluster's CPUs, CPUs per trial) of a study (``ser_tune.study.folder.load_study``)."""
    cpus = float((study.meta.get("machine") or {}).get("cluster_cpus") or 1)
    per_trial = float((study.meta["experiment"].get("resources") or {}).get("cpus_per_trial") or 1)
    return cpus, per_trial


def trial_cpu_seconds(rows, cpus_per_trial: float) -> float:
    """The CPU-seconds trials spent: Ray Tune's ``time_total_s`` of each (trials.csv rows) x CPUs per trial."""
    return float(rows["time_total_s"].sum()) * cpus_per_trial


def cpu_outside_trials(trial_cpu_s: float, wall_clock_s: float, cpus: float) -> float:
    """*CPU outside trials*: the share of the CPU a unit (or units) held that no trial spent (starting workers,
    Ray Tune, the searcher, gaps, the tail): 1 - trial CPU-s / (wall-clock x the cluster's CPUs)."""
    return 1.0 - trial_cpu_s / (wall_clock_s * cpus)


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A plain aligned text table of ``rows`` (dicts) on stdout."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def profile_call(fn, *, top: int = 15, sort: str = "cumulative"):
    """Run ``fn()`` under cProfile; returns (its result, the ``top`` functions by ``sort`` as dicts)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    result = profiler.runcall(fn)
    stats = pstats.Stats(profiler)
    stats.sort_stats(sort)
    rows = []
    for func in stats.fcn_list[:top]:
        calls, primitive, tottime, cumtime, _ = stats.stats[func]
        filename, line, name = func
        where = f"{Path(filename).name}:{line}" if line else filename
        rows.append({"function": f"{where}({name})", "calls": calls, "tottime_s": round(tottime, 3),
                     "cumtime_s": round(cumtime, 3)})
    return result, rows


def print_profile(title: str, rows: list[dict]) -> None:
    print(title)
    print_table([{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
                ["cumtime_s", "tottime_s", "calls", "function"])
