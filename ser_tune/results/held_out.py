"""How good the tuned models are on speakers the search never heard, beside the untuned baselines.

For each strategy and outer fold f (``evaluation.outer_folds``; one fold: the study's split): each
run's best configuration by the validation objective, and its test metric on fold f's test speakers
(when the trials trained on inner folds, that of its refit on all of the fold's search speakers, the
protocol the probe follows); the fold's value is the mean over the strategy's repeats. The headline is the mean ± sd over outer
folds, with each fold's value. Beside it, on the same folds: the untuned default configuration (unit
``default``) and the linear probe on the frozen features (study.json "baselines"), and each
strategy's paired per-fold gain over the probe.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..study.folder import StudyFolder
from ..training.probe import CHOSEN
from .repeats import paired_gain

DEFAULT = "default"


def outer_folds(study: StudyFolder) -> list[dict]:
    """Each outer fold's test speakers (a study without outer folds: its one split)."""
    folds = (study.meta.get("folds") or {}).get("outer")
    if folds:
        return [{"test_speakers": f.get("test_speakers", [])} for f in folds]
    return [{"test_speakers": (study.meta.get("split") or {}).get("test_speakers", [])}]


def fold_values(study: StudyFolder, strategy: str, *, single: bool = False) -> dict[int, float]:
    """Outer fold -> the strategy's test metric there: per run, its held-out trial's (``single``: its best
    configuration's alone, where the held-out model is an ensemble); mean over repeats."""
    by_fold: dict[int, list[float]] = {}
    for unit in study.runs(strategy):
        best = study.single_held_out_trial(unit) if single else study.held_out_trial(unit)
        value = best.get(study.test_metric) if best is not None else None
        if value is None or pd.isna(value):
            continue
        fold = int((study.unit_meta(unit).get("tags") or {}).get("outer_fold", 0))
        by_fold.setdefault(fold, []).append(float(value))
    return {fold: float(np.mean(values)) for fold, values in sorted(by_fold.items())}


def spread(values: dict[int, float], folds: int) -> dict:
    """{mean, sd, folds: [value per outer fold, None where missing]} (sd with ddof=1; 0 for one fold)."""
    present = [v for v in values.values() if v is not None]
    return {"mean": float(np.mean(present)) if present else None,
            "sd": float(np.std(present, ddof=1)) if len(present) > 1 else (0.0 if present else None),
            "folds": [values.get(f) for f in range(folds)]}


def probe_values(study: StudyFolder, normalize: str = "none") -> dict[int, float]:
    probe = ((study.meta.get("baselines") or {}).get("probe") or {}).get(normalize) or {}
    return {f: row["test_bca"] for f, row in enumerate(probe.get("folds", [])) if row.get("test_bca") is not None}


def trials_normalization(study: StudyFolder) -> str:
    """The probe the trials are paired with: of the normalisation they use when it is fixed, the one whose
    normalisation the inner folds chose (``chosen``) when they search it, else none."""
    experiment = study.meta.get("experiment") or {}
    if "normalize" in (experiment.get("space") or {}):
        return CHOSEN
    return str((experiment.get("trial") or {}).get("normalize", "none"))


def held_out_summary(study: StudyFolder, strategies: dict) -> dict:
    """The --json keys of held-out evaluation: each strategy's ``nested_test_bca`` and
    ``gain_over_probe`` (added to ``strategies``), and the study's ``baselines`` and ``outer_folds``."""
    n = len(outer_folds(study))
    probes = (study.meta.get("baselines") or {}).get("probe") or {}
    paired = trials_normalization(study)
    for name, entry in strategies.items():
        values = fold_values(study, name)
        entry["nested_test_bca"] = spread(values, n)
        entry["gain_over_probe"] = gain(values, probe_values(study, paired if paired in probes else "none"))
        if study.meta.get("ensembles"):   # the ensemble's best member alone, beside it
            alone = fold_values(study, name, single=True)
            entry["single_model_test_bca"] = spread(alone, n)
            entry["single_model_gain_over_probe"] = gain(alone, probe_values(study, paired if paired in probes
                                                                             else "none"))
    baselines = {"default": spread(fold_values(study, DEFAULT), n) if study.runs(DEFAULT) else None,
                 "probe": spread(probe_values(study), n) if probes else None}
    baselines.update({f"probe_{kind}": spread(probe_values(study, kind), n) for kind in probes
                      if kind != "none"})
    return {"outer_folds": outer_folds(study), "baselines": baselines}


def gain(model: dict[int, float], probe: dict[int, float]) -> dict | None:
    """The paired per-fold gain over the probe on the folds both have: mean, sd, per fold, p."""
    shared = sorted(set(model) & set(probe))
    if not shared:
        return None
    result = paired_gain({f: model[f] for f in shared}, {f: probe[f] for f in shared})
    return {"mean": result.mean, "sd": None if math.isnan(result.sd) else result.sd,
            "folds": list(result.gains), "p": result.p, "min_p": result.min_p}


def held_out_table(study: StudyFolder, summary: dict) -> pd.DataFrame:
    """The report's table: one row per strategy and baseline, each outer fold's test metric, their
    mean ± sd, and for strategies the paired gain over the probe."""
    rows = []
    for name, entry in summary["strategies"].items():
        if entry.get("single_model_test_bca"):
            members = int((study.meta.get("experiment") or {}).get("evaluation", {}).get("ensemble", 1))
            rows.append({"model": f"{name}, ensemble of its {members} best configurations",
                         **row_cells(entry["nested_test_bca"]), "gain": entry.get("gain_over_probe")})
            rows.append({"model": f"{name}, its best configuration alone", **row_cells(entry["single_model_test_bca"]),
                         "gain": entry.get("single_model_gain_over_probe")})
        else:
            rows.append({"model": name, **row_cells(entry["nested_test_bca"]), "gain": entry.get("gain_over_probe")})
    for name, values in summary["baselines"].items():
        if values is not None:
            label = {"default": "untuned default configuration", "probe": "linear probe (frozen features)"}.get(
                name, f"linear probe, {name[6:]}-normalised features")
            rows.append({"model": label, **row_cells(values), "gain": None})
    return pd.DataFrame(rows)


def row_cells(values: dict) -> dict:
    return {"mean": values["mean"], "sd": values["sd"], **{f"fold {i}": v for i, v in enumerate(values["folds"])}}
