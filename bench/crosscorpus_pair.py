"""Cross-corpus zero-shot between two real corpora, both ways, with and without corpus normalisation.

    python bench/crosscorpus_pair.py [--corpora emodb ravdess] [--epochs 20] [--out FILE]

For each direction and each ``normalize`` (none, corpus): a head on the source's frozen Whisper-base
features (layer 3, 20 epochs, the source's speaker split, exported as ``train --export`` does), then
``evaluate_cross_corpus`` on the whole target: the tuned model, the random-head baseline and the
frozen-feature baseline (a linear probe whose layer and C are chosen by source speaker CV; with
``corpus`` every corpus is z-scored with its own statistics). The label view of each target is the one
that matches the model's labels (EmoDB's seven on RAVDESS; RAVDESS's native classes on EmoDB).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import RESULTS, SHARED, WHISPER_BASE, BenchError, Run, print_table  # noqa: E402

ROOTS = {"emodb": SHARED / "data" / "emodb", "ravdess": SHARED / "data" / "ravdess"}


def one_way(source: str, target: str, normalize: str, epochs: int, cache: Path, out: Path) -> dict:
    from ser_tune.crosscorpus import evaluate_cross_corpus
    from ser_tune.data import load_corpus, make_split
    from ser_tune.training.finetune import FineTuner, TrialData
    from ser_tune.training.settings import TrialSettings

    corpus = load_corpus(source, ROOTS[source])
    split = make_split(corpus.table, {"kind": "speaker", "val_speakers": 2, "test_speakers": 2, "seed": 0})
    settings = TrialSettings(unfreeze="none", head_lr_scale=30, lr=3e-4, num_epochs=epochs, layer=3,
                             normalize=normalize)
    tuner = FineTuner(settings, TrialData.from_table(corpus.table, split.assignment),
                      encoder_spec=f"hf:{WHISPER_BASE}", cache_root=cache)
    result = tuner.run()
    model = tuner.export(result, out / f"{source}_{normalize}",
                         source={"name": source, "root": str(ROOTS[source]), "label_map": None, "options": {},
                                 "train_speakers": split.speakers(corpus.table, "train")})
    start = time.perf_counter()
    found = evaluate_cross_corpus(model, [{"name": target, "root": str(ROOTS[target]), "label_map": None}],
                                  cache_root=cache)
    entry = next(iter(found["targets"].values()))
    return {"source": source, "target": target, "normalize": normalize, "view": entry["label_map"],
            "target_clips": entry["files"], "source_test_bca": result.test_bca, "tuned_bca": entry["bca"],
            "random_head_bca": entry["baselines"]["random_head"], "frozen_probe_bca": entry["baselines"]["frozen_head"],
            "probe_layer": found["source"].get("probe_layer"), "evaluation_seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpora", nargs=2, default=["emodb", "ravdess"], choices=sorted(ROOTS))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", help="JSON output (default bench/results/crosscorpus_pair.json)")
    args = p.parse_args(argv)
    if not all(r.is_dir() for r in ROOTS.values()) or not (WHISPER_BASE / "config.json").is_file():
        print(f"error: {BenchError('real EmoDB, RAVDESS and Whisper-base are needed under ' + str(SHARED))}",
              file=sys.stderr)
        return 2
    run = Run("crosscorpus_pair", argv)
    from ser_tune.training.trainable import set_threads

    set_threads(2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_crosscorpus_") as tmp:
        cache = Path(tmp) / "cache"
        a, b = args.corpora
        for source, target in ((a, b), (b, a)):
            for normalize in ("none", "corpus"):
                rows.append(one_way(source, target, normalize, args.epochs, cache, Path(tmp)))
                print(rows[-1], flush=True)
    print_table([{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
                ["source", "target", "normalize", "view", "target_clips", "tuned_bca", "random_head_bca",
                 "frozen_probe_bca", "probe_layer"])
    run.finish({"directions": rows}, args.out or RESULTS / "crosscorpus_pair.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
