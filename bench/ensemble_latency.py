"""What an exported ensemble costs to predict with, beside its best member alone, in one run.

    python bench/ensemble_latency.py STUDY/best_model [--clips 40] [--repeats 3] [--threads 1] [--out FILE]

``STUDY/best_model`` is an ensemble folder (a study with ``evaluation.ensemble`` > 1). The clips are the
first ``--clips`` of the study's corpus (model.json's source), predicted together (``predict_many``, as
``python -m ser_tune.predict`` does), alternately by the ensemble and by its first member alone, each
``--repeats`` times; the figures are the median seconds per second of audio and their ratio, and how many
distinct encoders the ensemble runs a clip through (frozen members of one encoder share the deepest's).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import Run, print_table  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="an ensemble's model folder (STUDY/best_model)")
    p.add_argument("--clips", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="JSON output (default bench/results/ensemble_latency.json)")
    return p.parse_args(argv)


def run(args) -> dict:
    import torch

    from ser_tune.data import load_audio, load_corpus
    from ser_tune.training.ensemble import best_member, is_ensemble
    from ser_tune.training.export import load_model

    folder = Path(args.model)
    if not is_ensemble(folder):
        raise SystemExit(f"{folder}: not an ensemble's folder (no ensemble.json)")
    torch.set_num_threads(args.threads)
    ensemble, alone = load_model(folder), load_model(folder / best_member(folder))
    source = alone.meta.get("source") or {}
    table = load_corpus(source["name"], source["root"], **(source.get("options") or {})).table.head(args.clips)
    waves = [load_audio(p, ensemble.sample_rate) for p in table["path"]]
    speakers = table["speaker"].astype(str).tolist()
    audio = sum(len(w) for w in waves) / ensemble.sample_rate
    seconds = {"ensemble": [], "best member alone": []}
    for _ in range(args.repeats):
        for name, model in (("best member alone", alone), ("ensemble", ensemble)):
            start = time.perf_counter()
            model.predict_many(waves, speakers)
            seconds[name].append(time.perf_counter() - start)
    per_audio = {name: statistics.median(s) / audio for name, s in seconds.items()}
    return {"model": str(folder), "members": len(ensemble.members), "clips": len(waves), "audio_seconds": audio,
            "threads": args.threads, "encoders": len({id(m.encoder) for m in ensemble.members}),
            "seconds": seconds, "seconds_per_audio_second": per_audio,
            "ratio": per_audio["ensemble"] / per_audio["best member alone"]}


def main(argv=None) -> None:
    args = parse_args(argv)
    record = Run("ensemble_latency", argv)
    figures = run(args)
    print_table([{"model": name, "ms per s of audio": f"{1000 * v:.1f}"}
                 for name, v in figures["seconds_per_audio_second"].items()], ["model", "ms per s of audio"])
    print(f"ensemble / best member: {figures['ratio']:.2f}x ({figures['members']} members, "
          f"{figures['encoders']} encoder(s) run, {figures['clips']} clips, {figures['threads']} thread(s))")
    record.finish(figures, args.out)


if __name__ == "__main__":
    main()
