"""Model folders and trial state files hold tensors and plain values only: reading one never runs code.

A pickle whose ``__reduce__`` touches a marker file stands for a malicious payload (issue "Hardening",
item 2): placed as a folder's weights or a trial's state, it must be refused with one line naming the
file, and the marker must not exist afterwards.
"""
from __future__ import annotations

import json
import os
import pathlib
import pickle
import shutil

import numpy as np
import pytest
import torch

from ser_tune import predict
from ser_tune.data import speaker_split
from ser_tune.training.export import (FORMAT, WEIGHTS_FILE, ModelFolderError, load_model, read_weights,
                                      write_weights)
from ser_tune.training.finetune import STATE_FILE, FineTuner, TrialData, TrialError
from ser_tune.training.settings import TrialSettings


class RunsCode:
    """Unpickling this calls ``pathlib.Path.touch(marker)``: what a malicious pickle does, harmlessly."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


SETTINGS = dict(lr=1e-2, num_epochs=2, unfreeze="top:1", unfreeze_epoch=1, max_length=1.0)


@pytest.fixture(scope="module")
def trained(synthetic_corpus, feature_cache_root, tmp_path_factory):
    split = speaker_split(synthetic_corpus.table, val_speakers=2, test_speakers=2, seed=0)
    data = TrialData.from_table(synthetic_corpus.table, split.assignment)
    tuner = FineTuner(TrialSettings(**SETTINGS), data, encoder_spec="tiny-whisper", cache_root=feature_cache_root)
    result = tuner.run()
    folder = tuner.export(result, tmp_path_factory.mktemp("export") / "model")
    return tuner, result, folder


def _tuner(trained, **changes) -> FineTuner:
    """A fresh tuner with the trained one's clips and cache (``changes`` to its settings)."""
    return FineTuner(TrialSettings(**{**SETTINGS, **changes}), trained[0].data, encoder_spec="tiny-whisper",
                     cache_root=trained[0].cache.root)


def _payloads(marker: pathlib.Path, tmp_path: pathlib.Path) -> dict[str, bytes]:
    """The same code-running object as a raw pickle and inside torch.save's zip, and random bytes."""
    torch.save({"head": RunsCode(marker)}, tmp_path / "payload.pt")
    return {"pickle": pickle.dumps(RunsCode(marker)), "torch.save": (tmp_path / "payload.pt").read_bytes(),
            "random bytes": np.random.default_rng(0).bytes(4096)}


def test_the_payload_would_run_if_unpickled(tmp_path):
    """The tests below can fail: unpickled the usual way, the payload does touch its marker."""
    marker = tmp_path / "ran"
    pickle.loads(_payloads(marker, tmp_path)["pickle"])
    assert marker.exists()


def test_exported_model_predicts_what_the_trained_model_did(trained, capsys):
    tuner, result, folder = trained
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", WEIGHTS_FILE]
    assert json.loads((folder / "model.json").read_text())["format"] == FORMAT
    weights = read_weights(folder / WEIGHTS_FILE)
    assert set(weights["head"]) == set(result.state["head"]) and weights["encoder"]   # top:1 trained a layer
    test = tuner.data.parts["test"]
    before = tuner.class_probabilities(result, test)
    model = load_model(folder)
    clip = int(round(SETTINGS["max_length"] * 16000))
    after = np.stack([model.predict_proba(tuner.data.audio.get(tuner.data.paths[i])[:clip]) for i in test])
    np.testing.assert_allclose(after, before, atol=1e-4)
    assert predict.main([str(folder), tuner.data.paths[test[0]], "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["predictions"][0]
    assert [row["probabilities"][label] for label in model.labels] == pytest.approx(after[0].tolist(), abs=1e-6)


def _predict_error(folder, wav, capsys) -> str:
    assert predict.main([str(folder), wav]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err   # one line, no traceback
    return err


def test_old_format_folder_is_refused_unread(trained, tmp_path, capsys):
    tuner, _, folder = trained
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    meta = json.loads((old / "model.json").read_text())
    (old / "model.json").write_text(json.dumps({**meta, "format": "ser_tune.model/1"}))
    (old / WEIGHTS_FILE).unlink()
    marker = tmp_path / "ran"
    (old / "weights.pt").write_bytes(_payloads(marker, tmp_path)["torch.save"])
    err = _predict_error(old, tuner.data.paths[0], capsys)
    assert str(old) in err and "weights.pt" in err and "--export" in err
    assert not marker.exists()


@pytest.mark.parametrize("payload", ["pickle", "torch.save", "random bytes"])
def test_weights_that_are_no_safetensors_file_are_refused_unread(trained, tmp_path, capsys, payload):
    tuner, _, folder = trained
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    marker = tmp_path / "ran"
    (bad / WEIGHTS_FILE).write_bytes(_payloads(marker, tmp_path)[payload])
    err = _predict_error(bad, tuner.data.paths[0], capsys)
    assert str(bad / WEIGHTS_FILE) in err
    assert not marker.exists()


def _rewrite(folder, change):
    weights = read_weights(folder / WEIGHTS_FILE)
    change(weights)
    os.remove(folder / WEIGHTS_FILE)
    write_weights(folder / WEIGHTS_FILE, weights)


@pytest.mark.parametrize("change, named", [
    (lambda w: w["head"].pop("classifier.weight"), "'classifier.weight' of the head model.json describes is missing"),
    (lambda w: w["head"].update({"classifier.weight": torch.zeros(3, 3)}), "'classifier.weight' has shape (3, 3)"),
    (lambda w: w["encoder"].update({"no.such.layer": torch.zeros(2)}), "'no.such.layer' does not fit encoder"),
    (lambda w: w["encoder"].update({k: torch.zeros(1) for k in list(w["encoder"])[:1]}), "has shape (1,)"),
])
def test_weights_that_do_not_fit_the_model_name_the_file_and_tensor(trained, tmp_path, capsys, change, named):
    tuner, _, folder = trained
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    _rewrite(bad, change)
    with pytest.raises(ModelFolderError, match="weights.safetensors") as err:
        load_model(bad)
    assert named in str(err.value)
    _predict_error(bad, tuner.data.paths[0], capsys)


def test_tensor_names_outside_head_and_encoder_are_refused(trained, tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad"
    shutil.copytree(trained[2], bad)
    save_file({"optimizer.step": torch.zeros(1)}, str(bad / WEIGHTS_FILE))
    with pytest.raises(ModelFolderError, match="'optimizer.step' is not head.<name>, encoder.<name> or norm"):
        load_model(bad)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")   # torch's note on the raw pickle's protocol
@pytest.mark.parametrize("payload", ["pickle", "torch.save", "random bytes"])
def test_a_state_file_that_could_run_code_is_refused_unread(trained, tmp_path, payload):
    tuner = _tuner(trained)
    marker = tmp_path / "ran"
    (tmp_path / STATE_FILE).write_bytes(_payloads(marker, tmp_path)[payload])
    with pytest.raises(TrialError, match=f"{tmp_path / STATE_FILE}: not a trial state"):
        tuner.start(resume_dir=tmp_path)
    assert not marker.exists()


def test_a_state_file_of_another_trial_is_refused(trained, tmp_path):
    """Tensors of other shapes (here: a head of another width) are named, not copied half-way."""
    other = _tuner(trained, head="mlp")
    state = other.start()
    other.fit_epoch(state)
    other.save_state(state, tmp_path)
    tuner = _tuner(trained)
    with pytest.raises(TrialError, match=f"{tmp_path / STATE_FILE}: does not fit this trial"):
        tuner.start(resume_dir=tmp_path)


def test_a_saved_state_holds_only_tensors_and_plain_values(trained, tmp_path):
    tuner = _tuner(trained)
    state = tuner.start()
    tuner.fit_epoch(state)
    tuner.keep_epoch(state)
    path = tuner.save_state(state, tmp_path)
    saved = torch.load(path, weights_only=True)   # raises on anything but tensors and plain containers/values
    assert saved["rng"]["bit_generator"] == "PCG64" and saved["epoch"] == 1
