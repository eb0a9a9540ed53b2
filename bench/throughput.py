"""Issue "every core busy": its three figures, measured side by side in one run.

    python bench/throughput.py [--config experiments/emodb.yaml] [--strategies tpe random] [--trials 15]
                               [--cv-folds 4] [--ray-trials 20] [--no-encode] [--out FILE]

1. **Idle CPU over each strategy's wall-clock.** Runs the study (``python -m ser_tune.launch CONFIG
   --json``: head-only trials on cached features, 1 CPU each, as many at a time as this machine has
   cores) while sampling this machine's CPU counters (``/proc/stat``, every 0.2 s). Per strategy (one
   Tuner run, from the unit's start to its end as study.json records them):

   - *idle CPU*: the CPUs' idle (and I/O wait) time over the wall-clock, what "idle" literally is;
   - *CPU outside trials*: 1 - the trials' CPU-seconds (Ray's ``time_total_s`` x CPUs per trial) over
     wall-clock x CPUs, which also counts as waste the CPU spent starting trial workers;
   - where the trial slots' time outside trials went: the start (the unit's start to each slot's first
     trial: Tuner set-up and the trial workers' start), the gaps between a trial ending and the next
     one starting in its slot, and the tail (slots left empty while the last trials finish).

2. **Ray's overhead per head-only trial at 2 at a time**: the mean gap between a trial ending and the
   next one starting in its slot, from the study above; and Tune's per-trial overhead with trivial
   trainables on a fresh local Ray (``cost_breakdown.ray_overhead``: a bare report, and a study-like
   trial writing epoch state and report-log lines).

3. **The shared encode on two 1-CPU nodes against one** (``encode_scaling``: a loopback Ray cluster
   in a private network namespace, each node pinned to a core of its own).

Targets (issue 17): idle CPU <= 15 % over each strategy, Ray overhead <= 0.3 s per head-only trial at
2 trials at a time, the encode on two nodes >= 1.7x faster than on one.
"""
from __future__ import annotations

import argparse
import heapq
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cost_breakdown  # noqa: E402
import encode_scaling  # noqa: E402
from benchlib import (REPO, BenchError, Run, cpu_outside_trials, print_table, real_data_available,  # noqa: E402
                      study_cpus, trial_cpu_seconds)

TARGET_IDLE = 0.15
TARGET_RAY_OVERHEAD_S = cost_breakdown.TARGET_RAY_OVERHEAD_S
TARGET_SPEEDUP = encode_scaling.TARGET_SPEEDUP
SAMPLE_EVERY_S = 0.2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="experiment YAML (default experiments/emodb.yaml, or the quickstart without ../shared)")
    p.add_argument("--strategies", nargs="+", default=["tpe", "random"])
    p.add_argument("--trials", type=int, default=15)
    p.add_argument("--cv-folds", type=int, default=4)
    p.add_argument("--ray-trials", type=int, default=20, help="trivial trials per Ray measurement (default 20)")
    p.add_argument("--no-encode", dest="encode", action="store_false", help="skip the two-node encode")
    p.add_argument("--storage", help="storage folder (default: a fresh temporary one, removed after)")
    p.add_argument("--out", help="JSON output (default bench/results/throughput.json)")
    return p.parse_args(argv)


# ----- the machine's CPU counters while the study runs -------------------------------------------
class CpuSampler:
    """(time, idle jiffies, total jiffies) of all CPUs every ``every`` seconds, in a thread."""

    def __init__(self, every: float = SAMPLE_EVERY_S):
        self.every = every
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> tuple[float, int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return time.time(), fields[3] + fields[4], sum(fields[:8])   # idle + iowait; no guest time

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.read())
            self._stop.wait(self.every)

    def __enter__(self) -> "CpuSampler":
        self.samples.append(self.read())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.read())

    def idle_fraction(self, start: float, end: float) -> float | None:
        """Idle share of the CPUs' time between ``start`` and ``end`` (counters interpolated)."""
        times = [s[0] for s in self.samples]
        if len(times) < 2 or start < times[0] or end > times[-1] or end <= start:
            return None

        def at(t: float) -> tuple[float, float]:
            i = max(1, next((k for k, v in enumerate(times) if v >= t), len(times) - 1))
            (t0, i0, a0), (t1, i1, a1) = self.samples[i - 1], self.samples[i]
            w = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            return i0 + w * (i1 - i0), a0 + w * (a1 - a0)

        (idle0, all0), (idle1, all1) = at(start), at(end)
        return (idle1 - idle0) / (all1 - all0) if all1 > all0 else None


# ----- where a unit's slot time goes ------------------------------------------------------------
def slot_timeline(start: float, end: float, trials: list[tuple[float, float]], slots: int) -> dict:
    """Slot-seconds of a unit outside its trials: the start (unit start to each slot's first trial),
    the gaps (a trial's start minus the end of the trial whose slot it took: the earliest end so far),
    and the tail (unit end minus each slot's last trial end)."""
    running: list[float] = []
    startup, gaps = [], []
    for began, ended in sorted(trials):
        if len(running) < slots:
            startup.append(began - start)
        else:
            gaps.append(began - heapq.heappop(running))
        heapq.heappush(running, ended)
    tail = [end - finish for finish in running] + [end - start] * (slots - len(running))
    return {"start_slot_seconds": sum(startup), "first_trial_after_seconds": min(startup) if startup else None,
            "gaps": len(gaps), "gap_mean_seconds": sum(gaps) / len(gaps) if gaps else None,
            "gap_slot_seconds": sum(gaps), "tail_slot_seconds": sum(tail)}


def run_study(args, storage: Path) -> Path:
    config = args.config or str(REPO / "experiments" / ("emodb.yaml" if real_data_available() else "quickstart.yaml"))
    command = [sys.executable, "-m", "ser_tune.launch", config, "--strategies", *args.strategies,
               "--trials", str(args.trials), "--cv-folds", str(args.cv_folds), "--storage", str(storage), "--json"]
    print("running: " + " ".join(["python", *command[1:]]), flush=True)
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0 or not done.stdout.strip():
        raise BenchError(f"the launcher exited {done.returncode} on {config}")
    return Path(json.loads(done.stdout.strip().splitlines()[-1])["study_dir"])


def strategy_figures(study_dir: Path, sampler: CpuSampler) -> dict:
    """Per search unit: wall-clock, idle CPU, CPU outside trials and where the slot time went."""
    from ser_tune.results import load_study

    study = load_study(study_dir)
    cpus, cpus_per_trial = study_cpus(study)
    figures = {}
    for unit in study.units:
        meta = study.unit_meta(unit)
        rows = study.unit_trials(unit)
        if meta.get("tags", {}).get("strategy") not in study.meta["experiment"]["strategies"] or rows.empty:
            continue   # the baselines' units
        start, end = float(meta["started_at"]), float(meta["finished_at"])
        slots = int(meta.get("concurrency") or cpus // cpus_per_trial)
        wall = end - start
        busy = trial_cpu_seconds(rows, cpus_per_trial)
        figures[unit] = {"trials": int(len(rows)), "slots": slots, "wall_clock_seconds": wall,
                         "idle_cpu": sampler.idle_fraction(start, end),
                         "cpu_outside_trials": cpu_outside_trials(busy, wall, cpus),
                         **slot_timeline(start, end, list(zip(rows["started_at"], rows["finished_at"])), slots)}
    return figures


def print_strategies(figures: dict) -> None:
    def pct(v):
        return "-" if v is None else f"{100 * v:.0f} %"

    def sec(v):
        return "-" if v is None else f"{v:.2f} s"

    print_table([{"strategy": unit, "trials": f["trials"], "wall-clock": sec(f["wall_clock_seconds"]),
                  "idle CPU": pct(f["idle_cpu"]), "CPU outside trials": pct(f["cpu_outside_trials"]),
                  "first trial after": sec(f["first_trial_after_seconds"]), "gap": sec(f["gap_mean_seconds"]),
                  "start slot-s": sec(f["start_slot_seconds"]), "tail slot-s": sec(f["tail_slot_seconds"])}
                 for unit, f in figures.items()],
                ["strategy", "trials", "wall-clock", "idle CPU", "CPU outside trials", "first trial after", "gap",
                 "start slot-s", "tail slot-s"])


def verdicts(figures: dict) -> dict:
    strategies = figures["strategies"].values()
    idle = max((f["idle_cpu"] for f in strategies if f["idle_cpu"] is not None), default=None)
    gaps = [f["gap_mean_seconds"] for f in strategies if f["gap_mean_seconds"] is not None]
    study_gap = sum(gaps) / len(gaps) if gaps else None
    tune_runs = figures["ray_overhead"]["runs"]
    at_two = [r["overhead_per_trial_seconds"] for r in tune_runs.values() if r["slots"] >= 2]
    out = {"worst_idle_cpu": idle, "idle_target_met": idle is not None and idle <= TARGET_IDLE,
           "study_gap_seconds": study_gap, "tune_overhead_worst_seconds": max(at_two) if at_two else None,
           "ray_overhead_target_met": (study_gap is not None and study_gap <= TARGET_RAY_OVERHEAD_S
                                       and bool(at_two) and max(at_two) <= TARGET_RAY_OVERHEAD_S)}
    if "encode" in figures:
        out["encode_speedup"] = figures["encode"]["speedup"]
        out["encode_target_met"] = figures["encode"]["speedup"] >= TARGET_SPEEDUP
    return out


def measure_encode(args) -> dict:
    encode_args = encode_scaling.parse_args([] if real_data_available() else ["--synthetic"])
    work = Path(tempfile.mkdtemp(prefix="throughput-encode-"))
    try:
        setups = {setup: encode_scaling.run_setup(setup, encode_args, work / setup) for setup in encode_scaling.SETUPS}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    speedup = setups["one-node"]["encode_seconds"] / setups["two-nodes"]["encode_seconds"]
    return {"setups": setups, "speedup": speedup, "corpus": encode_args.corpus, "encoder": encode_args.encoder}


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        run = Run("throughput", argv)
        storage = Path(args.storage) if args.storage else Path(tempfile.mkdtemp(prefix="ser_tune_throughput_"))
        try:
            with CpuSampler() as sampler:
                study_dir = run_study(args, storage)
            figures = {"study_dir": str(study_dir), "strategies": strategy_figures(study_dir, sampler)}
            print_strategies(figures["strategies"])
            ray_storage = Path(tempfile.mkdtemp(prefix="ser_tune_bench_ray_"))
            try:
                figures["ray_overhead"] = cost_breakdown.ray_overhead(args.ray_trials, ray_storage)
            finally:
                shutil.rmtree(ray_storage, ignore_errors=True)
            if args.encode:
                figures["encode"] = measure_encode(args)
        finally:
            if not args.storage:
                shutil.rmtree(storage, ignore_errors=True)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    figures["verdicts"] = verdict = verdicts(figures)
    print(f"worst idle CPU over a strategy: {100 * (verdict['worst_idle_cpu'] or 0):.0f} % (target <= "
          f"{100 * TARGET_IDLE:.0f} %: {'met' if verdict['idle_target_met'] else 'NOT met'}); Ray overhead per "
          f"head-only trial: {verdict['study_gap_seconds'] or 0:.2f} s in the study, "
          f"{verdict['tune_overhead_worst_seconds'] or 0:.2f} s with trivial trials (target <= "
          f"{TARGET_RAY_OVERHEAD_S:g} s: {'met' if verdict['ray_overhead_target_met'] else 'NOT met'})")
    if "encode_speedup" in verdict:
        print(f"shared encode, two 1-CPU nodes against one: {verdict['encode_speedup']:.2f}x (target "
              f">= {TARGET_SPEEDUP}x: {'met' if verdict['encode_target_met'] else 'NOT met'})")
    run.finish(figures, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
