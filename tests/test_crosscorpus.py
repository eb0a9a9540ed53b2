"""Cross-corpus zero-shot evaluation: a model tuned on one synthetic corpus, evaluated on another
(other speakers, shifted prosody) written as a CSV manifest in another label vocabulary and as a
RAVDESS-named folder; label mapping, missing classes, exclusions, baselines, outputs, CLI errors."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly
from sklearn.metrics import balanced_accuracy_score, confusion_matrix

from ser_tune import crosscorpus
from ser_tune.crosscorpus import CrossCorpusError, evaluate_cross_corpus, run_for_study
from ser_tune.crosscorpus.__main__ import main as crosscorpus_main
from ser_tune.data import generate_synthetic, load_corpus, speaker_split
from ser_tune.data.labels import EMOTIONS
from ser_tune.training.export import WEIGHTS_FILE, read_weights, write_weights
from ser_tune.training.finetune import FineTuner, TrialData
from ser_tune.training.settings import TrialSettings

# The target's vocabulary (label_maps.yaml aliases), boredom left out so that it is a missing class.
CSV_WORDS = {"anger": "angry", "disgust": "disgusted", "fear": "fearful", "happiness": "happy",
             "neutral": "neutral", "sadness": "sad"}
RAVDESS_CODE = {"neutral": "01", "boredom": "02", "happiness": "03", "sadness": "04", "anger": "05",
                "fear": "06", "disgust": "07"}   # boredom clips stand in for RAVDESS "calm"
PITCH = (23, 20)   # resample by 20/23 and keep the rate: 15 % higher pitch, 15 % faster speech
N_SURPRISED = 3


def _shifted(path: Path) -> tuple[np.ndarray, int]:
    wave, sr = sf.read(str(path), dtype="float32")
    return resample_poly(wave, PITCH[1], PITCH[0]).astype(np.float32), sr


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("crosscorpus")
    source = generate_synthetic(base / "source", seed=1, n_speakers=4, clips_per_cell=2, duration_range=(0.8, 1.0))
    raw = generate_synthetic(base / "target_raw", seed=7, n_speakers=2, clips_per_cell=2, duration_range=(0.8, 1.0))
    raw_table = load_corpus("synthetic", raw).table

    # CSV target: other speakers (other seed, own ids), pitch-shifted, labels in another vocabulary;
    # no boredom; a few clips labelled "surprised" (no counterpart among EmoDB's seven).
    csv_dir = base / "target_csv"
    csv_dir.mkdir()
    rows = []
    for _, r in raw_table.iterrows():
        word = CSV_WORDS.get(r["label"])
        if word is None:
            if sum(x["label"] == "surprised" for x in rows) >= N_SURPRISED:
                continue
            word = "surprised"
        wave, sr = _shifted(Path(r["path"]))
        name = f"t{Path(r['path']).name}"
        sf.write(str(csv_dir / name), wave, sr)
        rows.append({"path": name, "label": word, "speaker": f"T{r['speaker']}"})
    pd.DataFrame(rows).to_csv(csv_dir / "manifest.csv", index=False)

    # RAVDESS-named target: the same shifted clips, every class (calm -> boredom), plus one "surprised".
    rav_dir = base / "target_ravdess"
    seen: dict[tuple, int] = {}
    for _, r in raw_table.iterrows():
        actor = 10 + int(r["speaker"]) - 20
        n = seen.setdefault((actor, r["label"]), 0)
        seen[(actor, r["label"])] += 1
        wave, sr = _shifted(Path(r["path"]))
        name = f"03-01-{RAVDESS_CODE[r['label']]}-01-0{n % 2 + 1}-0{n // 2 + 1}-{actor:02d}.wav"
        (rav_dir / f"Actor_{actor:02d}").mkdir(parents=True, exist_ok=True)
        sf.write(str(rav_dir / f"Actor_{actor:02d}" / name), resample_poly(wave, 441, 160), 44100)
    sf.write(str(rav_dir / "Actor_11" / "03-01-08-01-01-01-11.wav"), _shifted(Path(raw_table["path"][0]))[0], 16000)

    # A quick head-only model on the source corpus. Its feature cache is the one a study under
    # `storage` shares, so every later evaluation finds the source's frozen features there.
    cache = base / "storage" / "_feature_cache"
    table = load_corpus("synthetic", source).table
    split = speaker_split(table, val_speakers=1, test_speakers=1, seed=0)
    data = TrialData.from_table(table, split.assignment)
    settings = TrialSettings(lr=1e-2, num_epochs=6, unfreeze="none", max_length=2.0)
    tuner = FineTuner(settings, data, encoder_spec="tiny-whisper", cache_root=cache)
    model_dir = tuner.export(tuner.run(), base / "model")
    return {"base": base, "source": source, "csv": csv_dir, "ravdess": rav_dir, "model": model_dir,
            "table": table, "split": split, "n_csv": len(rows), "cache": cache}


@pytest.fixture(scope="module")
def result(world):
    targets = [{"name": "csv", "root": str(world["csv"]), "label_map": "emodb7"},
               {"name": "ravdess", "root": str(world["ravdess"])},
               {"name": "csv", "root": str(world["csv"]), "label_map": "iemocap4"}]
    return evaluate_cross_corpus(world["model"], targets, out_dir=world["base"] / "out", seed=3, random_seeds=3,
                                 cache_root=world["cache"],
                                 source={"name": "synthetic", "root": str(world["source"])})


def _recompute(labels, truth, predicted) -> dict:
    y = [labels.index(l) for l in truth]
    p = [labels.index(l) for l in predicted]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "y_pred contains classes not in y_true": expected here
        bca = balanced_accuracy_score(y, p)
    return {"bca": bca, "accuracy": float(np.mean(np.array(y) == np.array(p))),
            "confusion": confusion_matrix(y, p, labels=range(len(labels))).tolist()}


def test_bca_is_mean_recall_over_the_classes_present_and_predicting_a_missing_class_is_an_error():
    # Classes 0, 1 present, class 2 missing: one clip of class 0 predicted as 2.
    s = crosscorpus.scores([0, 0, 1, 1], [0, 2, 1, 1], 3)
    assert s["bca"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["accuracy"] == pytest.approx(0.75)
    assert s["confusion"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]


def test_labels_in_another_vocabulary_map_into_the_models_classes(result, world):
    labels = result["labels"]
    assert labels == sorted(EMOTIONS)
    csv = result["targets"]["csv"]
    assert csv["excluded"] == N_SURPRISED and csv["excluded_labels"] == {"surprise": N_SURPRISED}
    assert csv["files"] == world["n_csv"] - N_SURPRISED
    assert csv["missing_classes"] == ["boredom"]
    assert csv["classes_present"] == [l for l in labels if l != "boredom"]
    rows = pd.DataFrame(csv["predictions"])
    # "angry" / "sad" / ... became the model's "anger" / "sadness" / ...
    assert set(rows["label"]) == set(csv["classes_present"])
    assert (rows["native_label"] == rows["label"]).all()
    # Through the IEMOCAP view only its four classes survive; disgust and fear are excluded too.
    four = result["targets"]["csv_2"]
    assert four["classes_present"] == ["anger", "happiness", "neutral", "sadness"]
    assert four["missing_classes"] == ["boredom", "disgust", "fear"]
    assert four["files"] + four["excluded"] == csv["files"] + csv["excluded"]
    assert set(four["excluded_labels"]) == {"disgust", "fear", "surprise"}


def test_ravdess_codes_map_calm_to_boredom_and_drop_surprise(result):
    rav = result["targets"]["ravdess"]
    assert rav["label_map"] == "emodb7"
    assert rav["missing_classes"] == []
    assert rav["excluded_labels"] == {"surprise": 1}
    rows = pd.DataFrame(rav["predictions"])
    assert set(rows.loc[rows["label"] == "boredom", "native_label"]) == {"calm"}
    assert rav["class_counts"]["boredom"] == 4


def test_table_numbers_are_recomputed_from_the_stored_predictions(result, world):
    labels = result["labels"]
    written = json.loads((world["base"] / "out" / "crosscorpus.json").read_text())
    for key, entry in result["targets"].items():
        rows = pd.read_csv(world["base"] / "out" / entry["predictions_csv"])
        assert len(rows) == entry["files"]
        tuned = _recompute(labels, rows["label"], rows["predicted"])
        assert entry["bca"] == pytest.approx(tuned["bca"])
        assert entry["accuracy"] == pytest.approx(tuned["accuracy"])
        assert entry["confusion"] == tuned["confusion"]
        # Rows of classes the target lacks are empty; predictions into them still cost recall.
        for cls in entry["missing_classes"]:
            assert sum(entry["confusion"][labels.index(cls)]) == 0
        seeds = entry["baseline_details"]["random_head"]["seeds"]
        assert seeds == [3, 4, 5]
        per_seed = [_recompute(labels, rows["label"], rows[f"random_head_s{s}"])["bca"] for s in seeds]
        assert entry["baselines"]["random_head"] == pytest.approx(np.mean(per_seed))
        frozen = _recompute(labels, rows["label"], rows["frozen_head"])
        assert entry["baselines"]["frozen_head"] == pytest.approx(frozen["bca"])
        assert entry["baseline_details"]["frozen_head"]["confusion"] == frozen["confusion"]
        assert written["targets"][key]["bca"] == pytest.approx(entry["bca"])
        assert "predictions" not in written["targets"][key]
        assert (world["base"] / "out" / entry["confusion_png"]).stat().st_size > 1000


def test_random_heads_differ_by_seed_and_are_reproducible(result, world):
    rows = pd.DataFrame(result["targets"]["ravdess"]["predictions"])
    assert not (rows["random_head_s3"] == rows["random_head_s4"]).all()
    again = evaluate_cross_corpus(world["model"], [{"name": "ravdess", "root": str(world["ravdess"])}],
                                  seed=4, random_seeds=1)
    rows_again = pd.DataFrame(again["targets"]["ravdess"]["predictions"])
    assert (rows_again["random_head_s4"] == rows["random_head_s4"]).all()
    assert (rows_again["predicted"] == rows["predicted"]).all()
    # No source given and none in model.json: the frozen baseline is skipped, and says so.
    assert again["targets"]["ravdess"]["baselines"]["frozen_head"] is None
    assert any("frozen-feature baseline skipped" in n for n in again["notes"])


def test_markdown_table_lists_every_target_with_its_baselines(result, world):
    text = (world["base"] / "out" / "crosscorpus.md").read_text()
    for key, entry in result["targets"].items():
        line = next(l for l in text.splitlines() if l.startswith(f"| {key} "))
        assert f"{entry['bca']:.3f}" in line and f"{entry['baselines']['frozen_head']:.3f}" in line
        assert f"| {entry['files']} | {entry['excluded']} |" in line
    assert "balanced_accuracy_score" in text


def test_frozen_baseline_uses_the_original_encoder_weights(result, world, tmp_path):
    """A model whose encoder layer was changed by fine-tuning: the tuned head sees the changed
    encoder, the frozen-feature baseline the original one (so its predictions do not move)."""
    folder = tmp_path / "tuned_encoder"
    shutil.copytree(world["model"], folder)
    weights = read_weights(folder / WEIGHTS_FILE)
    from ser_tune.encoders import load_encoder

    encoder = load_encoder("tiny-whisper")
    generator = torch.Generator().manual_seed(0)
    weights["encoder"] = {n: p.detach() + 0.5 * torch.randn(p.shape, generator=generator)
                          for n, p in encoder.named_parameters() if n.startswith("encoder.layers.2.")}
    write_weights(folder / WEIGHTS_FILE, weights)
    target = [{"name": "ravdess", "root": str(world["ravdess"])}]
    source = {"name": "synthetic", "root": str(world["source"])}
    changed = evaluate_cross_corpus(folder, target, source=source, seed=3, random_seeds=1, cache_root=world["cache"])
    assert changed["encoder_fine_tuned"] is True and result["encoder_fine_tuned"] is False
    before = pd.DataFrame(result["targets"]["ravdess"]["predictions"])
    after = pd.DataFrame(changed["targets"]["ravdess"]["predictions"])
    assert (after["frozen_head"] == before["frozen_head"]).all()
    assert (after["predicted"] != before["predicted"]).any()


def test_run_for_study_reads_the_source_from_the_study(world):
    study = world["base"] / "study"
    study.mkdir()
    storage = world["base"] / "storage"
    world["split"].save(study / "split.json", world["table"])
    (study / "study.json").write_text(json.dumps({
        "corpus": {"name": "synthetic", "root": str(world["source"])},
        "experiment": {"corpus": {"name": "synthetic", "label_map": None, "options": {}}, "storage": str(storage)}}))
    shutil.copytree(world["model"], study / "best_model")
    meta = json.loads((study / "best_model" / "model.json").read_text())
    (study / "best_model" / "model.json").write_text(json.dumps({**meta, "study": str(study)}))

    assert run_for_study(study, []) == {}
    entries = sorted(p.name for p in world["cache"].iterdir())
    out = run_for_study(study, [{"name": "csv", "root": str(world["csv"]), "label_map": "emodb7"}])
    src = out["source"]
    train_clips = int((world["split"].assignment == "train").sum())
    assert src["part"] == "the study's train split" and src["clips"] == train_clips
    entry = out["targets"]["csv"]
    assert entry["baselines"]["frozen_head"] is not None
    for name in ("crosscorpus.json", "crosscorpus.md", entry["confusion_png"], entry["predictions_csv"]):
        assert (study / name).is_file()
    # The source's original-encoder features came from the study's feature cache (no new entry).
    assert storage / "_feature_cache" == world["cache"]
    assert sorted(p.name for p in world["cache"].iterdir()) == entries
    with pytest.raises(CrossCorpusError, match=r"crosscorpus\[0\]\.root"):
        run_for_study(study, [{"name": "synthetic", "root": None}])


def test_cli_json(world, capsys):
    code = crosscorpus_main([str(world["model"]), "--corpus", "csv", "--root", str(world["csv"]),
                             "--label-map", "emodb7", "--source-corpus", "synthetic",
                             "--source-root", str(world["source"]), "--random-seeds", "2",
                             "--cache", str(world["cache"]), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    entry = out["targets"]["csv"]
    assert {"files", "bca", "baselines", "accuracy", "missing_classes", "excluded"} <= set(entry)
    assert set(entry["baselines"]) == {"random_head", "frozen_head"}
    assert entry["missing_classes"] == ["boredom"] and entry["excluded"] == N_SURPRISED


@pytest.mark.parametrize("args, named", [
    (["MISSING_MODEL", "--corpus", "csv", "--root", "ROOT_CSV"], "MISSING_MODEL"),
    (["MODEL", "--corpus", "timit", "--root", "ROOT_CSV"], "timit"),
    (["MODEL", "--corpus", "emodb", "--root", "NO_SUCH_ROOT"], "NO_SUCH_ROOT"),
    (["MODEL", "--corpus", "emodb"], "--root"),
    (["MODEL", "--corpus", "csv", "--root", "ROOT_CSV", "--label-map", "emodb9"], "emodb9"),
    (["MODEL", "--corpus", "csv", "--root", "ROOT_CSV", "--source-corpus", "emodb",
      "--source-root", "NO_SUCH_ROOT"], "NO_SUCH_ROOT"),
])
def test_cli_bad_input_is_one_error_line_and_exit_2(world, capsys, args, named):
    swap = {"MODEL": str(world["model"]), "ROOT_CSV": str(world["csv"]),
            "MISSING_MODEL": str(world["base"] / "MISSING_MODEL"), "NO_SUCH_ROOT": str(world["base"] / "NO_SUCH_ROOT")}
    code = crosscorpus_main([swap.get(a, a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0]


def test_a_target_is_encoded_whole_so_a_study_of_that_corpus_reads_the_same_entry(result, world):
    """Clips the model's labels leave out (RAVDESS "surprised") are encoded too: the entry is the whole corpus
    in its table order, the one a study of that corpus (or the other way of a cross-corpus pair) reads."""
    from ser_tune.encoders import spec_fingerprint
    from ser_tune.encoders.cache import FeatureCache, effective_max_length

    assert result["targets"]["ravdess"]["excluded"] >= 1
    table = load_corpus("ravdess", world["ravdess"]).table   # as a study loads it
    cache = FeatureCache(world["cache"], "tiny-whisper", spec_fingerprint("tiny-whisper"), lambda: None)
    assert cache.has([str(p) for p in table["path"]], effective_max_length(2.0, table["duration"].to_numpy(float)))
