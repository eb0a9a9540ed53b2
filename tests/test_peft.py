"""Parameter-efficient fine-tuning: LoRA, bottleneck adapters, their export, two-stage adaptation."""
from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from ser_tune.adapt import AdaptError, config_from_dict
from ser_tune.adapt import run as run_two_stage
from ser_tune.config import experiment_from_dict
from ser_tune.data import generate_synthetic, load_corpus, speaker_split
from ser_tune.encoders import load_encoder
from ser_tune.training.export import WEIGHTS_FILE, load_model, read_weights
from ser_tune.training.finetune import FineTuner, TrialData
from ser_tune.training.peft import (PeftError, PeftPlan, apply_peft, peft_group, peft_summary)
from ser_tune.training.settings import TrialSettings


def pretrained_name(name: str) -> str:
    """The name a wrapped pretrained parameter had before injection (to compare with a fresh encoder)."""
    return name.replace(".pretrained_linear.", ".").replace(".base_layer.", ".")


# A small corpus keeps every trial here to a few seconds: 6 speakers x 7 emotions x 1 clip.
SMALL = dict(n_speakers=6, clips_per_cell=1, duration_range=(0.6, 1.0))


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("peft_small"), seed=0, **SMALL)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One feature cache for the module: trials with the same clips and max_length share its entries."""
    return tmp_path_factory.mktemp("peft_cache")


@pytest.fixture(scope="module")
def data(small_root):
    corpus = load_corpus("synthetic", small_root)
    split = speaker_split(corpus.table, val_speakers=1, test_speakers=2, seed=0)
    return TrialData.from_table(corpus.table, split.assignment)


class KeepEncoder:
    """An encoder loader that remembers the encoder it built (to inspect it after the trial)."""

    def __init__(self):
        self.encoder = None

    def __call__(self, spec):
        self.encoder = load_encoder(spec)
        return self.encoder


def _settings(**kw):
    base = dict(lr=5e-3, num_epochs=2, unfreeze="top:2", max_length=1.0, batch_size=8)
    return TrialSettings(**{**base, **kw})


def _lora_count(encoder, first_layer, names, rank):
    """By hand: r * (in + out) per targeted Linear of the adapted layers."""
    total = 0
    for layer in encoder.transformer_layers()[first_layer:]:
        for name, m in layer.named_modules():
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in names:
                total += rank * (m.in_features + m.out_features)
    return total


@pytest.mark.parametrize("spec, targets, names", [
    ("tiny-whisper", "q,v", {"q_proj", "v_proj"}),
    ("tiny-whisper", "q,v,k,o,ffn", {"q_proj", "v_proj", "k_proj", "out_proj", "fc1", "fc2"}),
    ("tiny-wav2vec2", "q,v,ffn", {"q_proj", "v_proj", "intermediate_dense", "output_dense"}),
])
def test_lora_adds_r_times_in_plus_out_per_targeted_linear(spec, targets, names):
    encoder = load_encoder(spec)
    expected = _lora_count(encoder, 1, names, rank=4)
    assert expected > 0
    before = sum(p.numel() for p in encoder.parameters())
    new = apply_peft(encoder, PeftPlan(mode="lora", first_layer=1, lora_rank=4, lora_targets=tuple(targets.split(","))))
    assert sum(p.numel() for p in new.values()) == expected
    assert sum(p.numel() for p in encoder.parameters()) == before + expected
    assert all(peft_group(n) == "lora" for n in new)
    # Layer 0 lies below the adapted layers: untouched.
    assert not any(".layers.0." in n for n in new)
    assert [n for n, p in encoder.named_parameters() if p.requires_grad] == list(new)


def test_injected_modules_start_as_the_identity():
    """LoRA's B and the adapter's up-projection start at zero: the pretrained features are unchanged,
    so head-only epochs may keep reading the feature cache."""
    plain, adapted = load_encoder("tiny-whisper"), load_encoder("tiny-whisper")
    apply_peft(adapted, PeftPlan(mode="lora+adapter", first_layer=0, lora_rank=4, lora_targets=("q", "v", "ffn"),
                                 adapter_size=8))
    waves, lengths = torch.randn(2, 16000), torch.tensor([16000, 11000])
    with torch.no_grad():
        a, _ = plain(waves, lengths)
        b, _ = adapted(waves, lengths)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-6)


def test_peft_trial_trains_only_the_new_modules(data, cache, tmp_path):
    loader = KeepEncoder()
    settings = _settings(peft="lora+adapter", lora_rank=4, lora_targets="q,v,ffn", adapter_size=8, unfreeze="top:2")
    result = FineTuner(settings, data, encoder_spec="tiny-whisper", cache_root=cache,
                       encoder_loader=loader).run()
    encoder = loader.encoder
    original = dict(load_encoder("tiny-whisper").named_parameters())
    after = dict(encoder.named_parameters())
    pretrained = {n: p for n, p in after.items() if peft_group(n) is None}
    assert {pretrained_name(n) for n in pretrained} == set(original)
    for name, p in pretrained.items():   # bit-identical, not merely close
        assert torch.equal(p, original[pretrained_name(name)]), name
    # The new modules did train (they start at zero: any non-zero B / up-projection was learnt).
    lora_b = [p for n, p in after.items() if "lora_B" in n]
    ups = [p for n, p in after.items() if "adapter_up_proj.weight" in n]
    assert lora_b and ups
    assert all(p.abs().sum() > 0 for p in lora_b) and all(p.abs().sum() > 0 for p in ups)
    # Counts: the head plus the injected modules; total = the whole adapted encoder plus the head.
    peft_count = sum(p.numel() for n, p in after.items() if peft_group(n) is not None)
    head_count = result.trainable_params - peft_count
    d, ffn, r, a = 64, 128, 4, 8
    per_layer = r * (d + d) * 2 + r * (d + ffn) * 2 + (d * a + a + a * d + d)
    assert peft_count == 2 * per_layer                               # top two of three layers
    assert result.total_params == sum(original[n].numel() for n in original) + peft_count + head_count
    assert 0 < head_count < 2000
    assert set(result.state["encoder"]) == {n for n in after if peft_group(n) is not None}


def test_peft_model_round_trips_through_the_model_folder(data, cache, tmp_path):
    settings = _settings(peft="lora+adapter", lora_rank=4, lora_targets="q,v,ffn", adapter_size=8,
                         unfreeze="top:1", lr=1e-2, num_epochs=3)
    tuner = FineTuner(settings, data, encoder_spec="tiny-whisper", cache_root=cache)
    result = tuner.run()
    folder = tuner.export(result, tmp_path / "model")
    meta = json.loads((folder / "model.json").read_text())
    assert meta["peft"]["mode"] == "lora+adapter" and meta["peft"]["first_layer"] == 2
    weights = read_weights(folder / WEIGHTS_FILE)["encoder"]
    assert weights and all(peft_group(n) for n in weights)   # only the small PEFT tensors are stored
    model = load_model(folder)
    assert {n for n, _ in model.encoder.named_parameters() if peft_group(n)} == set(weights)
    clip = int(round(settings.max_length * 16000))
    preds = [int(model.predict_proba(data.audio.get(data.paths[i])[:clip]).argmax()) for i in data.parts["test"]]
    assert preds == result.test_predictions.tolist()


def test_wavlm_attention_lora_is_refused_and_ffn_works():
    with pytest.raises(PeftError, match="'lora_targets'.*wavlm"):
        apply_peft(load_encoder("tiny-wavlm"), PeftPlan(mode="lora", first_layer=2, lora_targets=("q", "v")))
    new = apply_peft(load_encoder("tiny-wavlm"), PeftPlan(mode="lora", first_layer=2, lora_rank=2,
                                                          lora_targets=("ffn",)))
    assert sum(p.numel() for p in new.values()) == 2 * (64 + 128) * 2


def test_bad_peft_settings_name_the_field(data, cache):
    with pytest.raises(PeftError, match="'lora_targets'"):
        FineTuner(_settings(peft="lora", lora_targets="q,z"), data, encoder_spec="tiny-whisper",
                  cache_root=cache).run()
    with pytest.raises(PeftError, match="'adapter_size'"):
        FineTuner(_settings(peft="adapter", adapter_size=0), data, encoder_spec="tiny-whisper",
                  cache_root=cache).run()


def test_peft_settings_join_the_search_space():
    exp = experiment_from_dict({"name": "peft", "trial": {"unfreeze": "top:2"},
                                "space": {"peft": {"choice": ["lora", "adapter"]},
                                          "lora_rank": {"choice": [4, 8, 16]}},
                                "strategies": ["random"]})
    assert set(exp.space) == {"peft", "lora_rank"}
    settings = TrialSettings.from_config({"unfreeze": "top:2", "peft": "lora", "lora_rank": 16.0})
    assert settings.lora_rank == 16


def test_stage_two_must_cover_stage_one_layers(data, cache):
    first = FineTuner(_settings(peft="lora", unfreeze="top:2", lora_rank=2), data, encoder_spec="tiny-whisper",
                      cache_root=cache).run()
    with pytest.raises(PeftError, match="adapt at least the layers"):
        FineTuner(_settings(peft="lora", unfreeze="top:1", lora_rank=2), data, encoder_spec="tiny-whisper",
                  cache_root=cache).run(init_state=first.state)


def _two_stage_config(tmp_path, source_root, **stage2):
    return config_from_dict({
        "name": "two", "encoder": "tiny-whisper", "storage": str(tmp_path),
        "source": {"corpus": {"name": "synthetic", "root": str(source_root), "options": {"seed": 0, **SMALL}},
                   "split": {"kind": "speaker", "val_speakers": 1, "test_speakers": 2, "seed": 0}},
        "target": {"corpus": {"name": "synthetic", "root": str(tmp_path / "tgt"), "options": {"seed": 1, **SMALL}},
                   "split": {"kind": "speaker", "val_speakers": 1, "test_speakers": 2, "seed": 0}},
        "stage1": {"trial": {"peft": "lora", "lora_rank": 4, "unfreeze": "top:1", "lr": 5e-3, "num_epochs": 2,
                             "max_length": 1.0, "batch_size": 8}},
        "stage2": stage2,
    })


@pytest.mark.slow  # ~40 s on a loaded 2-core machine: a local Ray, two corpora encoded, two trials, four scorings
def test_two_stage_adaptation_on_two_synthetic_corpora(small_root, tmp_path):
    cfg = _two_stage_config(tmp_path, small_root, trial={"peft": "lora+adapter", "adapter_size": 8}, freeze=["lora"])
    report = run_two_stage(cfg)
    first, second = report["stages"]
    for row in (first, second):
        assert 0 <= row["target_bca"] <= 1 and 0 <= row["source_bca"] <= 1
        assert row["target_clips"] > 0 and row["source_clips"] > 0
    # Stage one's source score is its own test score; stage two kept its LoRA and trained adapters + head.
    assert report["head_carried_over"] is True
    w1 = read_weights(f"{first['model']}/{WEIGHTS_FILE}")["encoder"]
    w2 = read_weights(f"{second['model']}/{WEIGHTS_FILE}")["encoder"]
    lora = [n for n in w1 if peft_group(n) == "lora"]
    assert lora and all(torch.equal(w1[n], w2[n]) for n in lora)
    assert any(peft_group(n) == "adapter" for n in w2)
    assert second["trainable_params"] < first["trainable_params"] + 2 * 64 * 8 + 8 + 64
    study = Path(report["study_dir"])   # a study folder on the driver, as every kind of study has
    assert study.parent == tmp_path and (study / "adapt.json").is_file()
    assert "| stage 2 |" in (study / "adapt.md").read_text()


def test_two_stage_config_errors_name_the_field(small_root, tmp_path):
    with pytest.raises(AdaptError, match="stage2.freeze"):
        _two_stage_config(tmp_path, small_root, freeze=["everything"])
    with pytest.raises(AdaptError, match="stage2.trial.*'peft'"):
        _two_stage_config(tmp_path, small_root, trial={"peft": "prefix"})
    with pytest.raises(AdaptError, match="source is required"):
        config_from_dict({"target": {}, "stage1": {}})


def test_peft_summary_one_row_per_mode():
    trials = pd.DataFrame({
        "cfg_peft": ["lora", "lora", "none", "adapter", "none"],
        "cfg_unfreeze": ["top:2", "top:2", "all", "top:2", "none"],
        "val_bca": [0.5, 0.7, 0.8, 0.6, 0.4], "test_bca": [0.4, 0.6, 0.7, 0.5, 0.3],
        "trainable_params": [5000, 5000, 900000, 20000, 500], "total_params": [1e6 + 5000] * 2 + [1e6, 1e6 + 20000, 500],
        "time_total_s": [10, 14, 60, 12, 2], "status": ["TERMINATED"] * 5})
    out = peft_summary(trials)
    assert list(out["mode"]) == ["frozen (head only)", "lora (top:2)", "adapter (top:2)", "full"]
    lora = out.set_index("mode").loc["lora (top:2)"]
    assert lora["trials"] == 2 and lora["val_bca_mean"] == pytest.approx(0.6) and lora["val_bca_best"] == 0.7
    assert lora["seconds_per_trial"] == pytest.approx(12) and lora["trainable_share"] == pytest.approx(5000 / 1005000)
    # Settings fixed in the experiment have no cfg_ column: taken from `fixed`.
    fixed = peft_summary(trials.drop(columns=["cfg_unfreeze"]), fixed={"unfreeze": "top:1"})
    assert "lora (top:1)" in set(fixed["mode"])
    assert np.isfinite(out["seconds_per_trial"]).all()
