"""Issue 10: the same small study on one node and on two nodes.

    python bench/scaling.py [--trials 8] [--setups one-slot one-node two-nodes] [--out FILE]

One study config (synthetic corpus, tiny Whisper, ``random`` search with a fixed seed so every
setup runs the very same trial configs, ``top:2``, 20-40 epochs, 1 CPU per trial), run three ways, one after
another in one run:

- ``one-slot``:  a local single-node Ray, one trial at a time (``--concurrency 1``): a 1-CPU node;
- ``one-node``:  a local single-node Ray with both CPUs, two trials at a time;
- ``two-nodes``: a head and a worker node of 1 CPU each (tests/cluster_harness.LoopbackRayCluster:
  two Ray nodes in a private network namespace on this machine), two trials at a time, one per node.

Each setup gets its own storage (so its own shared encode) and is timed by the strategy's
wall-clock (the shared encode is outside it). Two nodes on one 2-core machine share its cores, so
this measures what distribution costs and whether trials really spread, not more hardware.
``two-nodes`` is skipped, with the reason, where private namespaces are not allowed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import REPO, RESULTS, SYNTHETIC_ROOT, BenchError, Run, print_table  # noqa: E402

SETUPS = ("one-slot", "one-node", "two-nodes")
WORDS = {"one-slot": "1 node, 1 trial at a time", "one-node": "1 node, 2 CPUs, 2 trials at a time",
         "two-nodes": "2 nodes x 1 CPU (loopback cluster)"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8, help="trials of the study (default 8)")
    p.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS, metavar="SETUP",
                   help=f"which setups to run (default all: {' '.join(SETUPS)})")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per setup (default 1800)")
    p.add_argument("--out", help="JSON output (default bench/results/scaling.json)")
    args = p.parse_args(argv)
    if args.trials < 2:
        raise BenchError(f"--trials must be >= 2 (got {args.trials})")
    return args


def experiment(storage: Path, trials: int) -> dict:
    from ser_tune.data import generate_synthetic

    root = generate_synthetic(SYNTHETIC_ROOT)
    return {
        "name": "scaling", "corpus": {"name": "synthetic", "root": str(root)},
        "split": {"kind": "speaker", "val_speakers": 2, "test_speakers": 2, "seed": 0},
        "encoder": "tiny-whisper",
        # Enough epochs that a trial (~5-10 s) outweighs Ray's per-trial start-up, yet the study stays small.
        "trial": {"unfreeze": "top:2", "batch_size": 8, "max_length": 2.0},
        "space": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}, "num_epochs": {"int": [20, 40]},
                  "unfreeze_epoch": {"int": [0, 2]}},
        "strategies": ["random"], "budget": {"trials": trials, "minutes": None},
        "resources": {"cpus_per_trial": 1, "memory_gb": None}, "concurrency": None, "seed": 0,
        "storage": str(storage), "objective": {"metric": "val_bca", "mode": "max"}, "thresholds": [0.8, 0.9],
    }


def _study_dir(stdout: str, what: str) -> Path:
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        return Path(json.loads(lines[-1])["study_dir"])
    except (IndexError, ValueError, KeyError, TypeError):
        raise BenchError(f"{what}: the launcher's last stdout line is not its JSON object") from None


def run_local(config: Path, extra: list[str], timeout: float) -> tuple[Path, float]:
    command = [sys.executable, "-m", "ser_tune.launch", str(config), "--json", *extra]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(command)} ran past --timeout {timeout:g} s") from None
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-1500:]}")
    return _study_dir(done.stdout, "local study"), seconds


def run_two_nodes(config: Path, timeout: float) -> tuple[Path | None, float | None, str | None]:
    """(study folder, seconds, None), or (None, None, why) when namespaces are not allowed here."""
    sys.path.insert(0, str(REPO / "tests"))
    from cluster_harness import ClusterHarnessError, LoopbackRayCluster, namespace_support

    supported, why = namespace_support()
    if not supported:
        return None, None, f"two-node setup skipped: {why}"
    start_up = time.perf_counter()
    try:
        with LoopbackRayCluster(cpus_per_node=1, memory_bytes=4 * 1024**3) as cluster:
            print(f"two-node loopback cluster up in {time.perf_counter() - start_up:.1f} s", flush=True)
            result = cluster.run([sys.executable, "-m", "ser_tune.launch", str(config), "--json",
                                  "--address", cluster.gcs_address], timeout_s=timeout, cwd=REPO)
    except ClusterHarnessError as exc:
        raise BenchError(f"two-node setup: {str(exc)[-2000:]}") from None
    if result.returncode != 0:
        raise BenchError(f"two-node setup: {result.describe(1500)}")
    return _study_dir(result.stdout, "two-node study"), result.duration_s, None


def measure(study_dir: Path, launcher_seconds: float) -> dict:
    import pandas as pd

    from ser_tune.results import compare, load_study

    study = load_study(study_dir)
    row = compare([study], [0.9])["strategies"].iloc[0]
    trials = study.trials
    nodes = sorted(set(trials["node"].dropna().astype(str))) if "node" in trials else []
    wall = float(row["wall_clock_seconds"])
    configs = trials.sort_values("trial_index").filter(like="cfg_").round(8).to_dict("records")
    return {"study_dir": str(study.dir), "trials": int(row["trials"]), "errors": int(row["errors"]),
            "strategy_wall_clock_seconds": wall, "launcher_seconds": launcher_seconds,
            "shared_encode_seconds": study.encode_seconds,
            "trials_per_hour": row["trials"] / wall * 3600 if wall > 0 else None,
            "mean_trial_seconds": float(pd.to_numeric(trials["time_total_s"]).mean()),
            "peak_concurrency": int(row["concurrency"]), "nodes_used": nodes,
            "trials_per_node": {n: int((trials["node"].astype(str) == n).sum()) for n in nodes},
            "best_val_bca": float(row["best_val"]), "configs": configs}


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        run = Run("scaling", argv)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ser_tune_bench_scaling_"))
    setups, skipped = {}, {}
    try:
        for name in args.setups:
            storage = work / name
            storage.mkdir()
            config = work / f"{name}.yaml"
            config.write_text(yaml.safe_dump(experiment(storage, args.trials), sort_keys=False))
            print(f"setup {name} ({WORDS[name]}) ...", flush=True)
            if name == "one-slot":
                study_dir, seconds = run_local(config, ["--concurrency", "1"], args.timeout)
            elif name == "one-node":
                study_dir, seconds = run_local(config, [], args.timeout)
            else:
                study_dir, seconds, why = run_two_nodes(config, args.timeout)
                if study_dir is None:
                    print(why, flush=True)
                    skipped[name] = why
                    continue
            setups[name] = measure(study_dir, seconds)
            s = setups[name]
            print(f"setup {name}: {s['trials']} trials in {s['strategy_wall_clock_seconds']:.1f} s "
                  f"(nodes used: {len(s['nodes_used'])})", flush=True)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    same = len({json.dumps(s["configs"], sort_keys=True) for s in setups.values()}) <= 1
    ratios = {}
    if "one-slot" in setups:
        base = setups["one-slot"]["strategy_wall_clock_seconds"]
        for name in ("one-node", "two-nodes"):
            if name in setups:
                ratios[f"{name}_speedup_over_one-slot"] = base / setups[name]["strategy_wall_clock_seconds"]
    if "one-node" in setups and "two-nodes" in setups:
        ratios["two-nodes_over_one-node_throughput"] = (setups["one-node"]["strategy_wall_clock_seconds"]
                                                        / setups["two-nodes"]["strategy_wall_clock_seconds"])
    print()
    print(f"scaling: {args.trials} trials of random search (synthetic corpus, tiny Whisper, top:2, 20-40 epochs); "
          f"same trial configs in every setup: {same}")
    print_table([{"setup": f"{name}: {WORDS[name]}", "wall-clock": f"{s['strategy_wall_clock_seconds']:.1f} s",
                  "trials / hour": f"{s['trials_per_hour']:.0f}", "mean trial": f"{s['mean_trial_seconds']:.1f} s",
                  "peak concurrency": s["peak_concurrency"], "nodes used": len(s["nodes_used"]),
                  "best val BCA": f"{s['best_val_bca']:.3f}"} for name, s in setups.items()],
                ["setup", "wall-clock", "trials / hour", "mean trial", "peak concurrency", "nodes used", "best val BCA"])
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x")
    for why in skipped.values():
        print(why)
    figures = {"trials": args.trials, "setups": setups, "skipped": skipped, "ratios": ratios,
               "same_trial_configs": same, "descriptions": {k: WORDS[k] for k in args.setups}}
    run.finish(figures, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
