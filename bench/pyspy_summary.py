"""Summarise a py-spy ``--format raw`` profile: samples per process kind and the hottest functions.

    .venv/bin/py-spy record --format raw -o PROFILE.txt --subprocesses --rate 50 --nonblocking -- CMD ...
    python bench/pyspy_summary.py PROFILE.txt [--rate 50] [--top 25] [--process KIND] [--match TEXT ...] [--json OUT]

py-spy's raw format is one line per distinct stack, "frame;frame;...;frame COUNT", with one
"process PID:\"CMDLINE\"" frame per process level when --subprocesses is on. Samples are CPU
samples (py-spy leaves idle threads out unless --idle), so at --rate R a count of R is one
CPU-second. Processes are grouped by kind (the study driver, Ray trial workers, Ray's own
daemons); functions are counted inclusively (a function's samples include its callees), once
per stack.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import BenchError, print_table  # noqa: E402

PROCESS = re.compile(r'^process (\d+):"(.*)"$', re.S)


def process_kind(cmdline: str) -> str:
    if "default_worker.py" in cmdline or cmdline.startswith("ray::"):
        return "ray worker (trials)"
    if "dashboard" in cmdline or "agent" in cmdline or "log_monitor" in cmdline or "monitor.py" in cmdline:
        return "ray daemons (dashboard, agents, monitors)"
    if "ser_tune.launch" in cmdline or "bench/" in cmdline:
        return "driver (launch: Tune loop, searcher, encode)"
    return f"other ({cmdline[:40] or 'unnamed'})"


def parse(path: Path):
    """Yield (process kind, frames, count) for every stack of the profile."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise BenchError(f"{path}: cannot read the profile ({exc.strerror})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            raise BenchError(f"{path}:{number}: not a py-spy raw line (no trailing sample count)")
        kind, rest = "unknown", []
        for frame in _rejoin(stack.split(";")):
            match = PROCESS.match(frame)
            if match:
                if match.group(2):  # the innermost named process is the one sampled
                    kind = process_kind(match.group(2))
            else:
                rest.append(frame)
        yield kind, rest, int(count)


def _rejoin(parts: list[str]) -> list[str]:
    """Split on ';' breaks a process frame whose command line holds ';' (python -c "a; b"): glue it back."""
    frames, pending = [], None
    for part in parts:
        if pending is not None:
            pending += ";" + part
            if PROCESS.match(pending):
                frames.append(pending)
                pending = None
        elif part.startswith("process ") and not PROCESS.match(part):
            pending = part
        else:
            frames.append(part)
    if pending is not None:
        frames.append(pending)
    return frames


def short(frame: str) -> str:
    """'function (path/to/file.py:123)' -> 'function (file.py)' so one function's lines add up."""
    match = re.match(r"^(.*) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    return f"{match.group(1)} ({Path(match.group(2)).name})"


def summarise(path: Path, rate: float, top: int, only: str | None, matches: list[str] = ()) -> dict:
    by_kind: Counter = Counter()
    functions: dict[str, Counter] = {}
    matched: dict[str, Counter] = {m: Counter() for m in matches}
    for kind, frames, count in parse(path):
        by_kind[kind] += count
        joined = ";".join(frames)
        for m in matches:
            if m in joined:
                matched[m][kind] += count
        seen = set()
        for frame in frames:
            name = short(frame)
            if name not in seen:  # inclusive: once per stack, even under recursion
                functions.setdefault(kind, Counter())[name] += count
                seen.add(name)
    total = sum(by_kind.values())
    if not total:
        raise BenchError(f"{path}: no samples")
    kinds = [k for k in by_kind if only is None or only.lower() in k.lower()]
    return {
        "profile": str(path), "rate_hz": rate, "samples": total, "cpu_seconds": total / rate,
        "by_process_kind": {k: {"samples": v, "cpu_seconds": v / rate, "share": v / total}
                            for k, v in by_kind.most_common()},
        "top_functions": {k: [{"function": f, "cpu_seconds": c / rate, "share_of_kind": c / by_kind[k]}
                              for f, c in functions.get(k, Counter()).most_common(top)] for k in kinds},
        "matches": {m: {k: c / rate for k, c in per_kind.most_common()} for m, per_kind in matched.items()},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profile", help="py-spy --format raw output")
    p.add_argument("--rate", type=float, default=50, help="the --rate the profile was recorded at (default 50)")
    p.add_argument("--top", type=int, default=25, help="functions listed per process kind (default 25)")
    p.add_argument("--process", help="only process kinds containing this word (e.g. worker, driver)")
    p.add_argument("--match", action="append", default=[], metavar="TEXT",
                   help="also total the CPU-seconds of stacks containing TEXT, per process kind (repeatable)")
    p.add_argument("--json", help="also write the summary to this JSON file")
    args = p.parse_args(argv)
    try:
        summary = summarise(Path(args.profile), args.rate, args.top, args.process, args.match)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{summary['samples']} samples = {summary['cpu_seconds']:.1f} CPU-seconds at {args.rate:g} Hz")
    print_table([{"process kind": k, "CPU-s": f"{v['cpu_seconds']:.1f}", "share": f"{100 * v['share']:.0f}%"}
                 for k, v in summary["by_process_kind"].items()], ["process kind", "CPU-s", "share"])
    for kind, rows in summary["top_functions"].items():
        print(f"\n{kind}: top functions (inclusive)")
        print_table([{"CPU-s": f"{r['cpu_seconds']:.1f}", "share": f"{100 * r['share_of_kind']:.0f}%",
                      "function": r["function"]} for r in rows], ["CPU-s", "share", "function"])
    for text, per_kind in summary["matches"].items():
        print(f"\nstacks containing {text!r}: " + (", ".join(f"{k} {v:.1f} CPU-s" for k, v in per_kind.items()) or "none"))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
