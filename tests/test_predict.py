"""python -m ser_tune.predict refuses what the corpus loader would skip and predicts the other files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from ser_tune.data import generate_synthetic, load_corpus, speaker_split
from ser_tune.predict import main
from ser_tune.training.finetune import FineTuner, TrialData
from ser_tune.training.settings import TrialSettings
from fixtures_corpora import truncate, write_bad_files, write_wav


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A one-epoch head on a tiny random encoder: enough to predict, fast to make."""
    base = tmp_path_factory.mktemp("predict")
    root = generate_synthetic(base / "corpus", seed=1, n_speakers=3, clips_per_cell=1, duration_range=(0.5, 0.6))
    table = load_corpus("synthetic", root).table
    data = TrialData.from_table(table, speaker_split(table, val_speakers=1, test_speakers=1, seed=0).assignment)
    tuner = FineTuner(TrialSettings(lr=1e-2, num_epochs=1, unfreeze="none", max_length=1.0), data,
                      encoder_spec="tiny-whisper", cache_root=base / "cache")
    return tuner.export(tuner.run(), base / "model")


def test_files_the_loader_would_skip_get_an_error_line_the_others_a_prediction(model_dir, tmp_path, capsys):
    good = write_wav(tmp_path / "good.wav", sr=22050, seconds=0.6, channels=2)
    bad = {
        "truncated: the header declares 32000 bytes of audio, the file holds 956":
            truncate(write_wav(tmp_path / "cut.wav", seconds=1.0)),
        "too short: 0.100 s, the minimum is 0.25 s": write_wav(tmp_path / "short.wav", seconds=0.1),
        "silent audio": write_bad_files(tmp_path, {"silent": "silent.wav"})["silent"],
        "unreadable audio": write_bad_files(tmp_path, {"garbage": "garbage.wav"})["garbage"],
        "audio format .flac is not read; convert to 16-bit .wav": tmp_path / "tone.flac",
        "file not found": tmp_path / "absent.wav",
    }
    sf.write(str(tmp_path / "tone.flac"), 0.3 * np.sin(np.arange(16000) / 4.0), 16000, format="FLAC")
    files = [str(bad_path) for bad_path in bad.values()]
    assert main([str(model_dir), files[0], str(good), *files[1:]]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{good}: ") and captured.out.count("\n") == 1
    errors = captured.err.splitlines()
    assert len(errors) == len(bad)
    for line, (reason, path) in zip(errors, bad.items()):
        assert line.startswith(f"{path}: error: {path}: ") and reason in line, line

    assert main([str(model_dir), str(good), files[1], "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert "emotion" in rows[0] and "too short" in rows[1]["error"]
    assert main([str(model_dir), str(good)]) == 0


def _copy_with(model_dir, tmp_path, **meta_changes):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta.update(meta_changes)
    (copy / "model.json").write_text(json.dumps(meta))
    return copy


def test_a_model_of_the_synthetic_stand_in_is_said_to_be_one(model_dir, tmp_path, capsys):
    good = write_wav(tmp_path / "good.wav", seconds=0.6)
    assert main([str(model_dir), str(good)]) == 0
    assert "warning" not in capsys.readouterr().err       # nothing to say of an unmarked model
    synthetic = _copy_with(model_dir, tmp_path, source={"name": "synthetic", "root": "/x", "label_map": None})
    assert main([str(synthetic), str(good), "--json"]) == 0
    captured = capsys.readouterr()
    warning = next(line for line in captured.err.splitlines() if line.startswith("warning: "))
    assert "synthetic stand-in corpus" in warning and "tiny random encoder tiny-whisper" in warning
    assert "experiments/emodb.yaml" in warning
    assert json.loads(captured.out)["warnings"] == [warning[len("warning: "):]]


def test_emotions_asked_about_that_the_model_cannot_name_are_warned_of(model_dir, tmp_path, capsys):
    good = write_wav(tmp_path / "good.wav", seconds=0.6)
    labels = json.loads((model_dir / "model.json").read_text())["labels"]
    assert main([str(model_dir), str(good), "--labels", *labels]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main([str(model_dir), str(good), "--labels", labels[0], "calm"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert warnings[0] == f"warning: the model was trained on {', '.join(labels)}; it can never answer calm"
    assert warnings[1] == f"warning: the model also names {', '.join(labels[1:])}, which were not asked about"
