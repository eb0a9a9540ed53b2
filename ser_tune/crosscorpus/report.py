"""What an evaluation leaves: crosscorpus.json, crosscorpus.md, a confusion PNG and a predictions CSV per
target."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..study.folder import write_atomic
from ..training.export import to_jsonable  # one JSON fallback for numpy values, shared with export
from .targets import file_stem

RESULT_FILE = "crosscorpus.json"
REPORT_FILE = "crosscorpus.md"


def without_predictions(result: dict) -> dict:
    return {**result, "targets": {k: {f: v for f, v in t.items() if f != "predictions"}
                                  for k, t in result["targets"].items()}}


def write_outputs(result: dict, out_dir) -> Path:
    """crosscorpus.json (no per-clip rows), crosscorpus.md, crosscorpus_<target>_confusion.png and
    crosscorpus_<target>_predictions.csv under out_dir; the file names are recorded in the result."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for key, entry in result["targets"].items():
        stem = f"crosscorpus_{file_stem(key)}"
        if entry.get("predictions"):
            pd.DataFrame(entry["predictions"]).to_csv(out / f"{stem}_predictions.csv", index=False)
            entry["predictions_csv"] = f"{stem}_predictions.csv"
        if entry.get("confusion") is not None:
            plot_confusion(entry, result["labels"], out / f"{stem}_confusion.png", title=key)
            entry["confusion_png"] = f"{stem}_confusion.png"
    write_atomic(out / RESULT_FILE, json.dumps(without_predictions(result), indent=2, default=to_jsonable))
    (out / REPORT_FILE).write_text(markdown(result))
    return out / RESULT_FILE


def plot_confusion(entry: dict, labels: list[str], path: Path, *, title: str) -> Path:
    """Rows: the classes present in the target; columns: every model class (errors into missing ones show)."""
    from matplotlib.figure import Figure   # no pyplot: no global backend or open-figure registry

    matrix = np.array(entry["confusion"])
    rows = [labels.index(l) for l in entry["classes_present"]]
    counts = matrix[rows]
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(1.0 + 0.8 * len(labels), 1.2 + 0.6 * len(rows)))
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for r in range(len(rows)):
        for c in range(len(labels)):
            ax.text(c, r, str(counts[r, c]), ha="center", va="center",
                    color="white" if share[r, c] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), entry["classes_present"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: BCA {entry['bca']:.3f} ({entry['files']} clips)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def fmt3(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(result: dict) -> str:
    lines = ["# Cross-corpus evaluation", "",
             f"Model: `{result['model']}` (encoder `{result['encoder']}`, "
             f"{'fine-tuned encoder layers' if result['encoder_fine_tuned'] else 'encoder unchanged, head only'}); "
             f"labels: {', '.join(result['labels'])}.", ""]
    src = result.get("source")
    if src:
        lines += [f"Source corpus (frozen-feature baseline): {src['corpus']} at `{src['root']}`, "
                  f"{src['clips']} clips ({src['part']})" + (" -- synthetic stand-in" if src.get("synthetic") else "")
                  + ".", ""]
    lines += ["BCA = balanced class accuracy: mean recall over the classes present in the target "
              "(sklearn `balanced_accuracy_score`); predictions of classes the target lacks count as errors. "
              f"Random head: untrained head on the tuned model's features, mean over seeds "
              f"{result['random_seeds']}. Frozen-feature head: logistic regression on the original encoder's "
              "features, trained on the source corpus.", "",
              "| target | files | excluded | classes present | missing classes | BCA | accuracy | "
              "random head BCA | frozen-feature head BCA |",
              "|---|---:|---:|---|---|---:|---:|---:|---:|"]
    for key, t in result["targets"].items():
        rnd = t.get("baseline_details", {}).get("random_head")
        rnd_text = f"{rnd['bca_mean']:.3f} ± {rnd['bca_std']:.3f}" if rnd else "-"
        flag = " (synthetic)" if t.get("synthetic") else ""
        lines.append(f"| {key}{flag} | {t['files']} | {t['excluded']} | {', '.join(t['classes_present']) or '-'} | "
                     f"{', '.join(t['missing_classes']) or '-'} | {fmt3(t['bca'])} | {fmt3(t['accuracy'])} | "
                     f"{rnd_text} | {fmt3(t['baselines'].get('frozen_head'))} |")
    for key, t in result["targets"].items():
        lines += ["", f"## {key}", "", f"Corpus {t['corpus']} at `{t['root']}`, label view "
                  f"`{t['label_map'] or 'as given'}`; {t['skipped']} files unusable."]
        if t["excluded_labels"]:
            lines.append("Excluded (no counterpart in the model's labels): "
                         + ", ".join(f"{k} {v}" for k, v in t["excluded_labels"].items()) + ".")
        if t.get("confusion_png"):
            lines += ["", f"![confusion matrix, {key}]({t['confusion_png']})"]
        if t.get("predictions_csv"):
            lines += ["", f"Per-clip predictions: `{t['predictions_csv']}`."]
    if result["notes"]:
        lines += ["", "Notes:", *[f"- {n}" for n in result["notes"]]]
    return "\n".join(lines) + "\n"
