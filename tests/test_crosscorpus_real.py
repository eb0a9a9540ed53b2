"""Cross-corpus zero-shot on real speech: EmoDB -> the RAVDESS half and back. The frozen-feature baseline
(a linear probe chosen by source speaker CV) must beat a random head and must not collapse to one class,
for a model exported outside any study (``train --export``) as for a study's."""
from __future__ import annotations

from pathlib import Path

import pytest

from ser_tune.crosscorpus import evaluate_cross_corpus
from ser_tune.data import load_corpus, make_split
from ser_tune.training.finetune import FineTuner, TrialData
from ser_tune.training.settings import TrialSettings

pytestmark = [pytest.mark.slow, pytest.mark.real_data]

SHARED = Path(__file__).resolve().parents[2] / "shared"
ROOTS = {"emodb": SHARED / "data" / "emodb", "ravdess": SHARED / "data" / "ravdess"}
ENCODER = SHARED / "models" / "whisper-base-encoder"


@pytest.fixture(scope="module")
def real():
    if not all(r.is_dir() for r in ROOTS.values()) or not (ENCODER / "config.json").is_file():
        pytest.skip(f"real EmoDB, RAVDESS or Whisper-base not found under {SHARED}")
    return f"hf:{ENCODER}"


@pytest.mark.parametrize("source, target", [("emodb", "ravdess"), ("ravdess", "emodb")])
def test_the_frozen_feature_baseline_beats_a_random_head_both_ways(real, source, target, tmp_path,
                                                                   feature_cache_root):
    corpus = load_corpus(source, ROOTS[source])
    split = make_split(corpus.table, {"kind": "speaker", "val_speakers": 2, "test_speakers": 2, "seed": 0})
    settings = TrialSettings(unfreeze="none", head_lr_scale=30, lr=3e-4, num_epochs=15, layer=3)
    tuner = FineTuner(settings, TrialData.from_table(corpus.table, split.assignment), encoder_spec=real,
                      cache_root=feature_cache_root)
    model = tuner.export(tuner.run(), tmp_path / "model",   # as `python -m ser_tune.train --export` writes it
                         source={"name": source, "root": str(ROOTS[source]), "label_map": None, "options": {},
                                 "train_speakers": split.speakers(corpus.table, "train")})
    result = evaluate_cross_corpus(model, [{"name": target, "root": str(ROOTS[target]), "label_map": None}],
                                   cache_root=feature_cache_root)
    entry = next(iter(result["targets"].values()))
    frozen, random_head = entry["baselines"]["frozen_head"], entry["baselines"]["random_head"]
    assert frozen is not None and frozen > random_head + 0.05, (frozen, random_head)
    predicted = {row["frozen_head"] for row in entry["predictions"]}
    assert len(predicted) >= 3, predicted        # not one class for every clip
    assert result["source"]["part"] == "the model's training speakers"
