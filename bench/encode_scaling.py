"""The shared encode on one 1-CPU node vs two 1-CPU nodes of a Ray cluster, side by side.

    python bench/encode_scaling.py [--corpus emodb:PATH] [--encoder hf:PATH] [--max-length 3.0]
                                   [--unfreeze-top K] [--out FILE]

What a study does before its first trial (``ser_tune.study.prepare.encode_once``): every clip encoded
once by the frozen encoder into the shared feature cache, here as Ray tasks
(``ser_tune.encoders.distributed.RayShardedEncode``). It runs twice in one go, each time on a fresh
loopback Ray cluster in a private network namespace (tests/cluster_harness.LoopbackRayCluster) and
into a fresh cache:

- ``one-node``:  a head of 1 CPU (``--num-cpus 1``), no worker;
- ``two-nodes``: a head and a worker of 1 CPU each.

Default: the real EmoDB and the Whisper-base encoder from ``../shared`` at the study default
max_length 3 s (pooled features only, as for head-only trials), else ``--synthetic``: the synthetic
corpus and the tiny Whisper. Each setup's driver runs ``encode_once`` inside the namespace and reports
its ``seconds`` (what study.json records as the shared encode: the driver's audio decode, the Ray
tasks, writing the entry) and the whole call (plus loading the encoder on the driver). Both caches
are then compared bit for bit (same batches, one torch thread per task on either setup).
The target is two nodes at least 1.7x faster than one.

Each node is pinned to a core of its own (``taskset``: the head and the driver on core 0, the worker
on core 1), as two 1-CPU machines would be, the driver on the head's: unpinned, Ray's "1 CPU" is only
a scheduling count, and the one-node setup would lend its driver (the audio decode, the encoder load,
the gather) the second core that the two-node setup's worker needs. ``--no-pin`` measures unpinned.
Another process's load lands on both setups' figures (the load average is recorded).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import EMODB_ROOT, REPO, SYNTHETIC_ROOT, WHISPER_BASE, BenchError, Run, print_table  # noqa: E402

SETUPS = {"one-node": 0, "two-nodes": 1}      # setup -> worker nodes beside the head
TARGET_SPEEDUP = 1.7


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=f"emodb:{EMODB_ROOT}", help="NAME:ROOT of the corpus (default EmoDB in ../shared)")
    p.add_argument("--encoder", default=f"hf:{WHISPER_BASE}", help="encoder spec (default Whisper-base in ../shared)")
    p.add_argument("--max-length", type=float, default=3.0, help="seconds of audio kept per clip (default 3.0)")
    p.add_argument("--unfreeze-top", type=int, default=None, metavar="K",
                   help="also cache the frames below the top K layers (as for top:K trials)")
    p.add_argument("--synthetic", action="store_true", help="synthetic corpus + tiny Whisper instead")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="leave the nodes unpinned (default: one core per node, the driver on the head's)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds allowed per setup (default 1200)")
    p.add_argument("--out", help="JSON output (default bench/results/encode_scaling.json)")
    p.add_argument("--driver", nargs=2, metavar=("GCS_ADDRESS", "CACHE_ROOT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.pin and (os.cpu_count() or 1) < 2:
        raise BenchError("pinning each node to a core needs 2 cores; run with --no-pin")
    if args.synthetic:
        args.corpus, args.encoder = f"synthetic:{SYNTHETIC_ROOT}", "tiny-whisper"
    if ":" not in args.corpus:
        raise BenchError(f"--corpus must be NAME:ROOT, got {args.corpus!r}")
    name, root = args.corpus.split(":", 1)
    if name != "synthetic" and not Path(root).is_dir():   # the synthetic corpus is generated when missing
        raise BenchError(f"--corpus: no folder {root} (give --corpus NAME:ROOT, or --synthetic)")
    return args


def driver_command(args: argparse.Namespace, address: str, cache_root: Path) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--corpus", args.corpus, "--encoder", args.encoder,
               "--max-length", str(args.max_length), "--driver", address, str(cache_root)]
    if args.unfreeze_top is not None:
        command += ["--unfreeze-top", str(args.unfreeze_top)]
    return command


def driver(args: argparse.Namespace) -> None:
    """Inside the namespace: join the cluster, run the shared encode, print its figures as JSON."""
    import ray

    from ser_tune.data import generate_synthetic, load_corpus
    from ser_tune.study.prepare import encode_once

    name, root = args.corpus.split(":", 1)
    if name == "synthetic":
        root = generate_synthetic(root)
    table = load_corpus(name, root).table
    address, cache_root = args.driver
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    cpus = ray.cluster_resources().get("CPU", 0)
    nodes = len([n for n in ray.nodes() if n["Alive"]])
    start = time.perf_counter()
    done = encode_once(table, args.encoder, Path(cache_root), [args.max_length], [args.unfreeze_top])
    call = time.perf_counter() - start
    print(json.dumps({"clips": len(table), "audio_seconds": float(table["duration"].sum()), "nodes": nodes,
                      "cluster_cpus": cpus, "encode_seconds": done["seconds"], "call_seconds": call,
                      "cache": done["cache"]}))


def run_setup(setup: str, args: argparse.Namespace, cache_root: Path) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from cluster_harness import ClusterHarnessError, LoopbackRayCluster, namespace_support

    supported, why = namespace_support()
    if not supported:
        raise BenchError(f"the loopback cluster cannot run here: {why}")
    started = time.perf_counter()
    try:
        cores = [str(node) for node in range(1 + SETUPS[setup])] if args.pin else None
        with LoopbackRayCluster(cpus_per_node=1, workers=SETUPS[setup], memory_bytes=3 * 1024**3,
                                cores=cores) as cluster:
            up = time.perf_counter() - started
            result = cluster.run(cluster.pinned(driver_command(args, cluster.gcs_address, cache_root)),
                                 timeout_s=args.timeout, cwd=REPO)
    except ClusterHarnessError as exc:
        raise BenchError(f"{setup}: {str(exc)[-2000:]}") from None
    if result.returncode != 0:
        raise BenchError(f"{setup}: {result.describe(2000)}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["cluster_start_seconds"] = round(up, 1)
    print(f"{setup}: {figures['nodes']} node(s), {figures['cluster_cpus']:g} CPUs, shared encode "
          f"{figures['encode_seconds']:.1f} s ({figures['call_seconds']:.1f} s with the driver's encoder load)",
          flush=True)
    return figures


def same_bits(first: Path, second: Path) -> bool:
    """Every array of every entry of one cache equals the other's, bit for bit."""
    import numpy as np

    files = sorted(p.relative_to(first) for p in first.rglob("*.npy"))
    if not files or files != sorted(p.relative_to(second) for p in second.rglob("*.npy")):
        return False
    return all(np.array_equal(np.load(first / f), np.load(second / f)) for f in files)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        if args.driver:
            driver(args)
            return 0
        run = Run("encode_scaling" if not args.synthetic else "encode_scaling_synthetic", argv)
        work = Path(tempfile.mkdtemp(prefix="encode-scaling-"))
        try:
            results = {setup: run_setup(setup, args, work / setup) for setup in SETUPS}
            identical = same_bits(work / "one-node", work / "two-nodes")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    one, two = results["one-node"], results["two-nodes"]
    speedup = one["encode_seconds"] / two["encode_seconds"]
    print_table([{"setup": s, "nodes": r["nodes"], "CPUs": f"{r['cluster_cpus']:g}",
                  "clips": r["clips"], "encode s": f"{r['encode_seconds']:.1f}",
                  "clips/s": f"{r['clips'] / r['encode_seconds']:.1f}",
                  "with encoder load s": f"{r['call_seconds']:.1f}",
                  "tasks": r["cache"].get("ray", {}).get("tasks", "-")} for s, r in results.items()],
                ["setup", "nodes", "CPUs", "clips", "encode s", "clips/s", "with encoder load s", "tasks"])
    verdict = "met" if speedup >= TARGET_SPEEDUP else "NOT met"
    print(f"two nodes vs one: {speedup:.2f}x faster (target {TARGET_SPEEDUP}x: {verdict}); "
          f"caches bit-identical: {identical}")
    run.finish({"pinned": args.pin, "corpus": args.corpus, "encoder": args.encoder, "max_length": args.max_length,
                "unfreeze_top": args.unfreeze_top, "setups": results, "speedup": round(speedup, 3),
                "speedup_with_encoder_load": round(one["call_seconds"] / two["call_seconds"], 3),
                "target_speedup": TARGET_SPEEDUP, "target_met": speedup >= TARGET_SPEEDUP,
                "caches_bit_identical": identical}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
