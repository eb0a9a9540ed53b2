"""Results of an active-learning study: the fraction table, plots and active.md, all from rounds.csv.

Table cells are read from rounds.csv (mean over seeds): for a wanted labelled share (10 %, 20 %,
100 %) each acquisition's round at the nearest *scheduled* fraction at or above it; the fraction
used is stated. Seconds are a trial's own cumulative time (selection + training of every round up
to that one); the study's shared encode and the one-off TAPT are reported separately.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..study.folder import ROUNDS_FILE, StudyFolder
from .config import FULL

TARGETS = (0.1, 0.2, 1.0)
TABLE_FILE = "active_table.csv"
# active_table.csv's column prefixes and the table cell's field each one holds
CELL_COLUMNS = (("fraction_used", "fraction"), ("labelled_count", "labelled_count"), ("test_bca", "test_bca"),
                ("val_bca", "val_bca"), ("seconds", "cumulative_seconds"))


def _groups(rounds: pd.DataFrame, acquisitions: list[str]):
    ok = rounds[rounds["round"].notna()]
    order = {a: i for i, a in enumerate(acquisitions)}
    keys = sorted({(a, bool(t)) for a, t in zip(ok["acquisition"], ok["tapt"])},
                  key=lambda k: (order.get(k[0], len(order)), k[1]))
    for acquisition, tapt in keys:
        yield acquisition, tapt, ok[(ok["acquisition"] == acquisition) & (ok["tapt"].astype(bool) == tapt)]


def fraction_table(rounds: pd.DataFrame, acquisitions: list[str], targets=TARGETS) -> list[dict]:
    """One row per (acquisition, TAPT): test/val BCA and cumulative seconds at each target share."""
    rows = []
    for acquisition, tapt, g in _groups(rounds, acquisitions):
        row = {"acquisition": acquisition, "tapt": tapt, "seeds": int(g["seed"].nunique()), "at": {}}
        scheduled = sorted(g["target_fraction"].dropna().unique())
        for target in targets:
            above = [f for f in scheduled if f >= target - 1e-9]
            cell = None
            # the full-label reference trains on the whole pool only
            if above and not (acquisition == FULL and target < 1.0):
                at = g[np.isclose(g["target_fraction"], above[0])]
                cell = {"fraction": float(above[0]),
                        **{k: float(at[k].mean()) for k in ("labelled_count", "test_bca", "val_bca", "cumulative_seconds")},
                        "trials": int(len(at))}
            row["at"][f"{target:g}"] = cell
        rows.append(row)
    return rows


def _pct(f: float) -> str:
    return f"{100 * f:.0f} %"


def _num(v, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def table_text(table: list[dict], targets=TARGETS, markdown: bool = False) -> str:
    head = ["acquisition", "TAPT"]
    for t in targets:
        head += [f"test BCA @{_pct(t)}", f"s @{_pct(t)}"]
    lines = []
    for row in table:
        cells = [row["acquisition"], "on" if row["tapt"] else "off"]
        for t in targets:
            c = row["at"].get(f"{t:g}")
            if c is None:
                cells += ["-", "-"]
            else:
                used = "" if math.isclose(c["fraction"], t) else f" ({_pct(c['fraction'])})"
                cells += [_num(c["test_bca"], ".3f") + used, _num(c["cumulative_seconds"], ".1f")]
        lines.append(cells)
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(r) + " |" for r in lines]
        return "\n".join(out)
    widths = [max(len(str(x[i])) for x in [head] + lines) for i in range(len(head))]
    return "\n".join("  ".join(str(x[i]).ljust(widths[i]) for i in range(len(head))) for x in [head] + lines)


def table_frame(table: list[dict], targets=TARGETS) -> pd.DataFrame:
    rows = []
    for row in table:
        flat = {"acquisition": row["acquisition"], "tapt": row["tapt"], "seeds": row["seeds"]}
        for t in targets:
            c = row["at"].get(f"{t:g}") or {}
            flat.update({f"{column}_{100 * t:.0f}": c.get(field) for column, field in CELL_COLUMNS})
        rows.append(flat)
    return pd.DataFrame(rows)


def plot_curves(rounds: pd.DataFrame, acquisitions: list[str], out_dir: Path) -> list[Path]:
    """Test BCA against labelled fraction and against cumulative seconds; one line per acquisition
    (and TAPT), mean over seeds; the full-label reference as a horizontal line."""
    paths = []
    for x, xlabel, name in (("labelled_fraction", "labelled fraction of the pool", "active_bca_vs_fraction.png"),
                            ("cumulative_seconds", "cumulative trial seconds (selection + training)",
                             "active_bca_vs_seconds.png")):
        fig = Figure(figsize=(7, 4.5))
        ax = fig.add_subplot()
        styles = {}
        for acquisition, tapt, g in _groups(rounds, acquisitions):
            mean = g.groupby("round")[[x, "test_bca"]].mean()
            series = "full labels" if acquisition == FULL else acquisition
            label = f"{series} + TAPT" if tapt else series
            if acquisition == FULL:
                ax.axhline(float(mean["test_bca"].iloc[-1]), linestyle="--" if not tapt else ":", color="black",
                           linewidth=1.2, label=f"{label} (reference)")
                continue
            color = styles.setdefault(acquisition, f"C{len(styles)}")
            ax.plot(mean[x].to_numpy(), mean["test_bca"].to_numpy(), marker="o", color=color,
                    linestyle=":" if tapt else "-", label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test BCA (test speakers)")
        ax.set_title("Active learning: " + ("label efficiency" if x == "labelled_fraction" else "cost"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.savefig(out_dir / name, dpi=100, bbox_inches="tight")
        paths.append(out_dir / name)
    return paths


def write_results(folder: StudyFolder | Path, rounds: pd.DataFrame | None = None) -> dict:
    """Write active_table.csv, the plots and active.md from rounds.csv; returns the summary (--json)."""
    folder = folder if isinstance(folder, StudyFolder) else StudyFolder.open(folder)
    study_dir, meta = folder.dir, folder.meta
    rounds = pd.read_csv(study_dir / ROUNDS_FILE) if rounds is None else rounds
    active = meta.get("active", {})
    acquisitions = list(active.get("acquisitions", [])) + ([FULL] if active.get("full_reference", True) else [])
    table = fraction_table(rounds, acquisitions)
    table_frame(table).to_csv(study_dir / TABLE_FILE, index=False)
    plots = plot_curves(rounds, acquisitions, study_dir)
    report = study_dir / "active.md"
    report.write_text(_markdown(meta, rounds, table, plots))
    trials = rounds.drop_duplicates(["acquisition", "tapt", "seed"])
    return {"study_dir": str(study_dir), "rounds_csv": str(study_dir / ROUNDS_FILE),
            "table_csv": str(study_dir / TABLE_FILE), "report": str(report), "plots": [str(p) for p in plots],
            "trials": int(len(trials)), "errors": int((trials["status"] == "ERROR").sum()),
            "table": table, "tapt": meta.get("tapt"), "pool_clips": meta.get("pool", {}).get("clips")}


def _markdown(meta: dict, rounds: pd.DataFrame, table: list[dict], plots: list[Path]) -> str:
    active, corpus, split = meta.get("active", {}), meta.get("corpus", {}), meta.get("split", {})
    exp = meta.get("experiment", {})
    lines = [f"# Active learning: {meta.get('name')}", ""]
    if corpus.get("synthetic"):
        lines += ["**Synthetic corpus**: generated stand-in audio, NOT real emotional speech; the numbers test "
                  "the machinery only.", ""]
    if split.get("speaker_dependent"):
        lines += ["**SPEAKER-DEPENDENT split** (random clips): the same speakers are in the pool and the test set.", ""]
    pool = meta.get("pool", {})
    lines += [
        "## Setup", "",
        f"- corpus: {corpus.get('name')} ({corpus.get('files')} clips, {corpus.get('speakers')} speakers)",
        f"- pool = the train speakers' clips only: {pool.get('clips')} clips of {', '.join(pool.get('speakers', []))}; "
        f"validation speakers {', '.join(split.get('val_speakers', []))} pick each round's best epoch; test speakers "
        f"{', '.join(split.get('test_speakers', []))} only score it (neither is ever in the pool)",
        f"- encoder: `{exp.get('encoder')}`; trial settings of every round: "
        f"`{json.dumps(exp.get('trial', {}))}`",
        f"- cold start: {active.get('cold_start')}; schedule (labelled share of the pool after each round): "
        f"{', '.join(_pct(f) for f in active.get('fractions', []))}; "
        f"{'each round starts again from the (TAPT) encoder (reinit)' if active.get('reinit') else 'each round continues from the previous round’s model'}",
        f"- acquisitions: {', '.join(active.get('acquisitions', []))}"
        + ("; full-label reference: one round on 100 % of the pool" if active.get("full_reference") else ""),
        f"- seeds: {', '.join(map(str, active.get('seeds', [])))} (table and plots: mean over seeds)",
        f"- shared encode (frozen features, once per encoder, before any trial): {meta.get('encode_seconds', 0):.1f} s",
    ]
    tapt = meta.get("tapt")
    if tapt:
        audio = "pool + validation + TEST speakers (transductive)" if tapt.get("test_audio") else \
            "pool + validation speakers (not the test speakers)"
        loss = f", training loss {tapt['first_loss']:.3f} → {tapt['last_loss']:.3f}" \
            if tapt.get("first_loss") is not None else ""
        if tapt.get("eval_loss_before") is not None and tapt.get("eval_loss_after") is not None:
            loss += f", loss on a fixed evaluation batch {tapt['eval_loss_before']:.3f} → {tapt['eval_loss_after']:.3f}"
        lines.append(f"- TAPT: {tapt.get('steps')} steps on {tapt.get('clips')} clips of the {audio}, "
                     f"{tapt.get('seconds', 0):.1f} s once per study{' (reused from disk)' if tapt.get('reused') else ''}"
                     f"{loss}; encoder `{tapt.get('spec')}`")
    else:
        lines.append("- TAPT: off")
    targets = ", ".join(_pct(t) for t in TARGETS)
    lines += ["", "## Test BCA and time by labelled share", "",
              f"At {targets} of the pool: each row's round at the nearest scheduled fraction at or above it "
              "(shown in brackets when it differs). Seconds: the trial's cumulative selection + training time up "
              "to that round (the shared encode and TAPT not included). Full labels: one round on the whole pool.",
              "", table_text(table, markdown=True), ""]
    errors = rounds[rounds["status"] == "ERROR"].drop_duplicates(["acquisition", "tapt", "seed"])
    if len(errors):
        lines += ["## Failed trials", ""]
        lines += [f"- {r.acquisition} (TAPT {'on' if r.tapt else 'off'}, seed {r.seed}): {r.error}"
                  for r in errors.itertuples()]
        lines.append("")
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "Per round: `rounds.csv`; clips labelled in each round: `selections/`; table: "
              f"`{TABLE_FILE}`.", ""]
    return "\n".join(lines)
