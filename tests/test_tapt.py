"""Task-adaptive pre-training (ser_tune.active.tapt) on the tiny wav2vec2 and synthetic audio."""
from __future__ import annotations

import json
from pathlib import Path
import threading

import numpy as np
import pytest
import torch

from ser_tune.active import tapt as tapt_mod
from ser_tune.active.tapt import (
    TaptError,
    TaptSettings,
    check_tapt_supported,
    pretrain,
    tapt_encoder,
)
from ser_tune.encoders import load_encoder
from ser_tune.encoders.tiny import build_tiny_model, tiny_config

torch.set_num_threads(1)

FAST = dict(steps=40, lr=1e-3, batch_size=4, max_length=1.0)


def _waves(seed: int = 0, n: int = 8) -> list[np.ndarray]:
    """Harmonic tones with a slow amplitude wobble and a little noise, 1.0 .. 1.9 s."""
    rng = np.random.default_rng(seed)
    t = np.arange(32000) / 16000
    out = []
    for i in range(n):
        tone = np.sin(2 * np.pi * (150 + 50 * i) * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
        out.append((tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)[: 16000 + 2000 * i])
    return out


@pytest.fixture(scope="module")
def tapt_run(tmp_path_factory):
    """One TAPT run on tiny-wav2vec2 (a few seconds), shared by the tests that inspect its output."""
    out = tmp_path_factory.mktemp("tapt") / "adapted"
    return pretrain("tiny-wav2vec2", _waves(), TaptSettings(**FAST), out)


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    """Tiny models saved as Hugging Face folders: wav2vec2, HuBERT and a plain WhisperModel."""
    import transformers

    root = tmp_path_factory.mktemp("models")
    folders = {}
    for family in ("wav2vec2", "hubert"):
        folders[family] = root / family
        build_tiny_model(family).save_pretrained(folders[family])
    folders["whisper"] = root / "whisper"
    torch.manual_seed(0)
    config = tiny_config("whisper")
    config.pad_token_id, config.bos_token_id, config.eos_token_id, config.decoder_start_token_id = 0, 1, 2, 1
    transformers.WhisperModel(config).save_pretrained(folders["whisper"])
    return folders


# ---------------------------------------------------------------------------------------------- settings

def test_settings_round_trip_and_defaults():
    s = TaptSettings.from_dict({"steps": 7, "lr": "1e-4", "mask_prob": 0.5, "freeze_feature_encoder": False})
    assert (s.steps, s.lr, s.mask_prob, s.freeze_feature_encoder) == (7, 1e-4, 0.5, False)
    assert TaptSettings.from_dict(s.to_dict()) == s
    assert TaptSettings.from_dict({}) == TaptSettings()
    assert TaptSettings.from_dict(None) == TaptSettings()


@pytest.mark.parametrize("values, field", [
    ({"steps": 0}, "steps"),
    ({"steps": 2.5}, "steps"),
    ({"steps": True}, "steps"),
    ({"mask_prob": 1.5}, "mask_prob"),
    ({"mask_prob": 0}, "mask_prob"),
    ({"lr": -1}, "lr"),
    ({"lr": "fast"}, "lr"),
    ({"max_length": float("nan")}, "max_length"),
    ({"warmup_fraction": 1.0}, "warmup_fraction"),
    ({"mask_length": 0}, "mask_length"),
    ({"num_negatives": 0}, "num_negatives"),
    ({"freeze_feature_encoder": "yes"}, "freeze_feature_encoder"),
    ({"gumbel_start": 0.5, "gumbel_end": 2.0}, "gumbel_end"),
    ({"stepz": 10}, "stepz"),
])
def test_bad_settings_name_the_field(values, field):
    with pytest.raises(TaptError, match=rf"active\.tapt_settings\.{field}\b"):
        TaptSettings.from_dict(values, where="active.tapt_settings")


def test_bad_settings_set_directly_are_refused_by_pretrain(tmp_path):
    with pytest.raises(TaptError, match=r"tapt\.steps"):
        pretrain("tiny-wav2vec2", _waves(n=2), TaptSettings(steps=0), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- support

def test_supported_encoders(model_folders):
    check_tapt_supported("tiny-wav2vec2")
    check_tapt_supported(f"hf:{model_folders['wav2vec2']}")


@pytest.mark.parametrize("kind, why", [
    ("tiny-whisper", "self-supervised objective"),
    ("tiny-hubert", "no pre-training head for HuBERT"),
    ("tiny-wavlm", "no pre-training head for WavLM"),
    ("hf-whisper", "self-supervised objective"),
    ("hf-hubert", "no pre-training head for HuBERT"),
    ("speechbrain:speechbrain/emotion-recognition-wav2vec2-IEMOCAP", "SpeechBrain"),
    ("hf-missing", "does not exist"),
    ("wav2vec2-base", "unknown encoder"),
])
def test_unsupported_encoders_name_the_spec(kind, why, model_folders, tmp_path):
    folders = {"hf-whisper": model_folders["whisper"], "hf-hubert": model_folders["hubert"],
               "hf-missing": tmp_path / "nowhere"}
    spec = f"hf:{folders[kind]}" if kind in folders else kind
    with pytest.raises(TaptError, match=why) as err:
        check_tapt_supported(spec)
    assert spec in str(err.value)
    # pretrain refuses before loading anything or writing its output
    with pytest.raises(TaptError):
        pretrain(spec, _waves(n=2), TaptSettings(steps=1), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- pretrain

def test_tapt_lowers_its_loss_on_a_fixed_batch(tapt_run):
    # the fixed evaluation batch (same crops, masks and negatives, eval mode) before vs after training
    assert tapt_run.eval_loss_after < tapt_run.eval_loss_before - 0.05, (tapt_run.eval_loss_before,
                                                                         tapt_run.eval_loss_after)
    assert len(tapt_run.losses) == FAST["steps"] and all(np.isfinite(tapt_run.losses))
    assert np.mean(tapt_run.losses[-8:]) < np.mean(tapt_run.losses[:8])
    assert not tapt_run.reused and tapt_run.seconds > 0


def test_fixed_batch_is_fixed():
    model, *_ = tapt_mod._load_pretraining_model("tiny-wav2vec2", TaptSettings(**FAST))
    a = tapt_mod._Batches(model, _waves(), TaptSettings(**FAST), True, seed=1).next()
    b = tapt_mod._Batches(model, _waves(), TaptSettings(**FAST), True, seed=1).next()
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    x, mask, neg = a
    assert x.shape[0] == FAST["batch_size"] and mask.shape == neg.shape[:2]
    assert (mask.sum(1) > TaptSettings().mask_length).all()   # at least two spans per clip
    # negatives lie among the clip's own masked frames and never are the positive itself
    t = mask.shape[1]
    for i in range(mask.shape[0]):
        rows = neg[i][mask[i]] - i * t
        assert mask[i][rows].all()
        assert not (rows == torch.nonzero(mask[i]).flatten()[:, None]).any()
    model.eval()
    with torch.no_grad():
        assert float(tapt_mod._batch_loss(model, a)) == float(tapt_mod._batch_loss(model, b))


def test_saved_encoder_loads_as_hf_folder_and_differs(tapt_run):
    assert tapt_run.spec == f"hf:{tapt_run.folder}" and tapt_run.folder.is_absolute()
    names = {p.name for p in tapt_run.folder.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tapt.json"} <= names
    assert [p.name for p in tapt_run.folder.parent.iterdir()] == ["adapted"]   # no temporary folder left
    adapted, source = load_encoder(tapt_run.spec), load_encoder("tiny-wav2vec2")
    assert adapted.family == "wav2vec2" and adapted.num_layers == source.num_layers
    a, s = adapted.state_dict(), source.state_dict()
    assert a.keys() == s.keys()
    assert all(a[k].shape == s[k].shape for k in a)
    changed = [k for k in a if not torch.equal(a[k], s[k])]
    assert any(".layers." in k for k in changed)
    assert not any("feature_extractor" in k for k in changed)     # frozen by default
    config = json.loads((tapt_run.folder / "config.json").read_text())
    assert config["mask_time_prob"] == 0.0 and config["architectures"] == ["Wav2Vec2Model"]
    wave = torch.from_numpy(_waves(seed=3, n=1)[0])[None]
    with torch.no_grad():
        hidden, mask = adapted(wave, torch.tensor([wave.shape[1]]))
    assert len(hidden) == adapted.num_layers + 1 and hidden[-1].shape[-1] == adapted.hidden_size
    assert mask.all() and all(torch.isfinite(h).all() for h in hidden)


def test_tapt_json_records_the_run(tapt_run):
    info = json.loads((tapt_run.folder / "tapt.json").read_text())
    assert info["source_spec"] == "tiny-wav2vec2" and info["n_clips"] == 8
    assert info["settings"] == TaptSettings(**FAST).to_dict()
    assert info["losses"] == tapt_run.losses and info["seconds"] == tapt_run.seconds
    assert any(k.startswith("quantizer.") for k in info["fresh_parameters"])
    assert any("initialised fresh" in n for n in info["notes"])


def test_tapt_from_hf_folder_and_output_folder_rules(model_folders, tmp_path):
    spec = f"hf:{model_folders['wav2vec2']}"
    r = pretrain(spec, _waves(n=3), TaptSettings(steps=2, batch_size=2, max_length=0.5), tmp_path / "a")
    assert r.info["source_spec"] == spec and "quantizer.codevectors" in r.info["fresh_parameters"]
    load_encoder(r.spec)
    # TAPT again from the adapted folder (a plain Wav2Vec2Model folder too)
    r2 = pretrain(r.spec, _waves(n=3), TaptSettings(steps=1, batch_size=2, max_length=0.5), tmp_path / "b")
    load_encoder(r2.spec)
    with pytest.raises(TaptError, match="not empty"):
        pretrain(spec, _waves(n=3), TaptSettings(steps=1), tmp_path / "a")


def test_clips_too_short_are_refused(tmp_path):
    short = [np.random.default_rng(0).standard_normal(1600).astype(np.float32)]   # 0.1 s: 4 frames
    with pytest.raises(TaptError, match="too short for mask_length 10"):
        pretrain("tiny-wav2vec2", short, TaptSettings(steps=1), tmp_path / "out")
    with pytest.raises(TaptError, match="no audio"):
        pretrain("tiny-wav2vec2", [], TaptSettings(steps=1), tmp_path / "out")
    # a short clip (4 frames < 2 x 3) among usable ones is left out, and said so
    r = pretrain("tiny-wav2vec2", _waves(n=2) + short, TaptSettings(steps=2, batch_size=3, mask_length=3),
                 tmp_path / "mixed")
    assert r.info["n_clips"] == 3 and r.info["n_clips_used"] == 2
    assert any("left out" in n for n in r.info["notes"])


# ---------------------------------------------------------------------------------------------- tapt_encoder

@pytest.fixture(scope="module")
def corpus_paths(synthetic_root):
    return sorted(str(p) for p in synthetic_root.rglob("*.wav"))[:6]


def test_tapt_encoder_trains_once_then_reuses(corpus_paths, tmp_path, monkeypatch):
    settings = TaptSettings(steps=2, batch_size=2, max_length=0.5)
    first = tapt_encoder("tiny-wav2vec2", corpus_paths, settings, tmp_path)
    assert not first.reused and first.folder.parent == tmp_path.resolve() / "_tapt"
    assert json.loads((first.folder / "tapt.json").read_text())["paths"] == sorted(corpus_paths)

    def boom(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(tapt_mod, "pretrain", boom)
    again = tapt_encoder("tiny-wav2vec2", list(reversed(corpus_paths)), settings, tmp_path)
    assert again.reused and again.spec == first.spec and again.losses == first.losses
    assert again.eval_loss_after == first.eval_loss_after
    # other settings, clips or encoder: another entry
    with pytest.raises(AssertionError, match="trained again"):
        tapt_encoder("tiny-wav2vec2", corpus_paths, TaptSettings(steps=3, batch_size=2, max_length=0.5), tmp_path)
    with pytest.raises(AssertionError, match="trained again"):
        tapt_encoder("tiny-wav2vec2", corpus_paths[:-1], settings, tmp_path)


def test_concurrent_callers_train_once(corpus_paths, tmp_path, monkeypatch):
    calls = []
    real = tapt_mod.pretrain

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tapt_mod, "pretrain", counting)
    settings = TaptSettings(steps=2, batch_size=2, max_length=0.5)
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        tapt_encoder("tiny-wav2vec2", corpus_paths, settings, tmp_path))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2
    assert sorted(r.reused for r in results) == [False, True]
    assert results[0].spec == results[1].spec


def test_tapt_encoder_errors(corpus_paths, tmp_path):
    with pytest.raises(TaptError, match="tiny-hubert"):
        tapt_encoder("tiny-hubert", corpus_paths, TaptSettings(steps=1), tmp_path)
    missing = str(tmp_path / "gone.wav")
    with pytest.raises(TaptError, match="gone.wav: file not found"):
        tapt_encoder("tiny-wav2vec2", [missing], TaptSettings(steps=1), tmp_path)
    with pytest.raises(TaptError, match="no audio"):
        tapt_encoder("tiny-wav2vec2", [], TaptSettings(steps=1), tmp_path)


def test_cli_json(synthetic_root, tmp_path, capsys):
    rc = tapt_mod.main(["--encoder", "tiny-wav2vec2", "--corpus", "synthetic", "--root", str(synthetic_root),
                        "--out", str(tmp_path), "--steps", "1", "--batch-size", "2", "--max-length", "0.5",
                        "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["steps"] == 1 and out["spec"].startswith(f"hf:{tmp_path.resolve()}/_tapt/")
    assert tapt_mod.main(["--encoder", "tiny-whisper", "--corpus", "synthetic", "--root", str(synthetic_root),
                          "--out", str(tmp_path)]) == 2
    assert "tiny-whisper" in capsys.readouterr().err


def test_cli_leaves_excluded_speakers_audio_out(synthetic_root, tmp_path, capsys):
    from ser_tune.data import load_corpus

    table = load_corpus("synthetic", synthetic_root).table
    speakers = sorted(table["speaker"].astype(str).unique())
    rc = tapt_mod.main(["--encoder", "tiny-wav2vec2", "--corpus", "synthetic", "--root", str(synthetic_root),
                        "--out", str(tmp_path), "--steps", "1", "--batch-size", "2", "--max-length", "0.5",
                        "--exclude-speakers", *speakers[:2], "--json"])
    assert rc == 0
    folder = Path(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["spec"][len("hf:"):])
    info = json.loads((folder / "tapt.json").read_text())
    assert info["n_clips"] == int((~table["speaker"].astype(str).isin(speakers[:2])).sum()) < len(table)
    assert tapt_mod.main(["--encoder", "tiny-wav2vec2", "--corpus", "synthetic", "--root", str(synthetic_root),
                          "--out", str(tmp_path), "--exclude-speakers", "nobody"]) == 2
    assert "nobody" in capsys.readouterr().err
