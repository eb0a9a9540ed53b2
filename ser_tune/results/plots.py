"""PNG plots of one or several studies.

Figures are drawn on matplotlib's ``Figure`` with the Agg canvas directly, never through
pyplot, so making a report does not change the backend of the process that calls it.
Each function returns ``PlotResult``: the file written, or why the plot was skipped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from ..study.folder import StudyFolder
from . import fronts, profiles, repeats, timing
from .ert import run_reports, run_tables, target_ladder

LOG_SCALE_SETTINGS = ("cfg_lr", "cfg_head_lr", "cfg_learning_rate", "cfg_weight_decay")


@dataclass(frozen=True)
class PlotResult:
    title: str
    path: Path | None = None       # None when skipped
    skipped: str = ""              # why it was skipped


def _series_label(study: StudyFolder, strategy: str, several: bool) -> str:
    return f"{study.name}: {strategy}" if several else strategy


def _metric_label(studies: list[StudyFolder]) -> str:
    metrics = {s.metric for s in studies}
    return metrics.pop() if len(metrics) == 1 else "validation metric"


def _draw_thresholds(ax, thresholds) -> None:
    """A dashed line per threshold, labelled inside the axes (a label past its edge is cut off)."""
    for threshold in thresholds:
        ax.axhline(threshold, linestyle="--", color="grey", linewidth=1)
        ax.annotate(f"threshold {threshold:g}", xy=(0.01, threshold), xycoords=("axes fraction", "data"),
                    xytext=(0, 2), textcoords="offset points", ha="left", va="bottom", fontsize=8, color="grey")


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _finish(fig: Figure, ax, title: str, xlabel: str, ylabel: str, path: Path,
            heading: str = "") -> PlotResult:
    """Label, title (``heading`` or ``title``), legend and grid the one-panel plot on ``ax``; save it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(heading or title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return PlotResult(title, _save(fig, path))


def _step_to_end(ax, x, fraction, end: float, label: str) -> None:
    """A fraction-reached step line from 0 at time 0, flat after its last step to ``end``."""
    x = np.concatenate([[0.0], np.asarray(x, float), [end]])
    fraction = np.asarray(fraction, float)
    ax.step(x, np.concatenate([[0.0], fraction, fraction[-1:] if len(fraction) else [0.0]]), where="post",
            label=label)


def plot_best_so_far(studies: list[StudyFolder], thresholds: list[float], out_dir: Path) -> list[PlotResult]:
    """Running best validation metric against wall-clock and against trial index."""
    several = len(studies) > 1
    title = "Best-so-far validation metric against"
    trials = "trial (in start order within the strategy's run, from 1, as the launcher's lines say)"
    return [_plot_best(studies, thresholds, out_dir / "best_vs_time.png", several, "seconds",
                       f"{title} wall-clock", "seconds since the strategy (each run) started"),
            _plot_best(studies, thresholds, out_dir / "best_vs_trials.png", several, "trials",
                       f"{title} trial index", trials)]


def _plot_best(studies, thresholds, path, several, clock: str, title: str, xlabel: str) -> PlotResult:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    if not draw_best_so_far(ax, studies, thresholds, clock, several):
        return PlotResult(title, skipped="no epoch reports with a validation metric (epochs.csv empty)"
                          if clock == "seconds" else "no trial has a validation metric")
    return _finish(fig, ax, title, xlabel, f"best {_metric_label(studies)} so far", path)


def draw_best_so_far(ax, studies, thresholds, clock: str, several: bool) -> int:
    """On ``ax``: a step line per strategy with one run; with several runs, their mean with a ± SE band;
    against ``clock`` "seconds" (from 0, the run's start) or "trials" (start order, from 1). Returns how
    many strategies it drew."""
    drawn = 0
    for study in studies:
        for strategy in study.strategies:
            curves = [c for c in (_run_curve(study, unit, clock) for unit in study.runs(strategy)) if len(c)]
            if not curves:
                continue
            label = _series_label(study, strategy, several)
            if len(curves) == 1:
                ax.step(curves[0].index, curves[0].to_numpy(), where="post", marker=".", label=label)
            else:
                grid = np.linspace(0, max(float(c.index.max()) for c in curves), 200)
                band = repeats.mean_se_curve(curves, grid)
                se = band["se"].fillna(0)
                ax.plot(band["x"], band["mean"], label=f"{label} (mean ± SE of {len(curves)} runs)")
                ax.fill_between(band["x"], band["mean"] - se, band["mean"] + se, alpha=0.2)
            drawn += 1
    if not drawn:
        return 0
    _draw_thresholds(ax, thresholds)
    if clock == "trials":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:   # seconds since the run started: the axis starts with the run
        ax.set_xlim(left=0)
    return drawn


def _run_curve(study: StudyFolder, unit: str, clock: str) -> pd.Series:
    """One run's best-so-far: against seconds from its epoch reports; against trials from each trial's
    best value (trials.csv: ERROR trials take a place in the order but add no value)."""
    if clock == "seconds":
        frame, _ = timing.run_reports(study, unit)
        return repeats.best_so_far(frame, "seconds", study.mode)
    trials = study.unit_trials(unit)
    values = trials[study.metric].where(trials["status"] != "ERROR")
    values = values.reset_index(drop=True)
    best = (values.cummin() if study.mode == "min" else values.cummax()).ffill()
    keep = best.notna().to_numpy()
    return pd.Series(best.to_numpy()[keep], index=trials["trial_index"].to_numpy(float)[keep] + 1)


def plot_runtime_ecdf(studies: list[StudyFolder], thresholds: list[float], out_dir: Path) -> PlotResult | None:
    """Fraction of each strategy's runs that reached the highest threshold, against wall-clock seconds;
    None (no plot) when every strategy ran once."""
    title = "Runs that reached the threshold against wall-clock (runtime ECDF)"
    if not thresholds or not any(len(s.runs(st)) > 1 for s in studies for st in s.strategies):
        return None
    top, several = max(thresholds), len(studies) > 1
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for study in studies:
        runs = run_tables(study, [top])[float(top)]
        ecdf = repeats.runtime_ecdf(runs, "seconds")
        end = float(runs["seconds_total"].max())
        for strategy in study.strategies:
            own = ecdf[ecdf["strategy"] == strategy]
            _step_to_end(ax, own["seconds"], own["fraction"], end, _series_label(study, strategy, several))
    ax.set_ylim(-0.02, 1.02)
    ylabel = f"fraction of runs with best {_metric_label(studies)} >= {top:g}"
    return _finish(fig, ax, title, "seconds since the run started", ylabel, out_dir / "runtime_ecdf.png")


def plot_data_profile(studies: list[StudyFolder], out_dir: Path) -> PlotResult | None:
    """Data profiles: per strategy, the fraction of (run, target) pairs over the study's ladder of targets
    reached against wall-clock seconds and against trials; None when every strategy ran once."""
    title = "Data profiles: (run, target) pairs reached over the ladder of targets"
    if not any(len(s.runs(st)) > 1 for s in studies for st in s.strategies):
        return None
    fig, several = Figure(figsize=(11, 4.5)), len(studies) > 1
    axes = fig.subplots(1, 2, sharey=True)
    for study in studies:
        streams, totals = run_reports(study)
        ladder = target_ladder(study, streams)
        tables = list(run_tables(study, ladder, streams, totals).values())
        for ax, clock in zip(axes, ("seconds", "trials")):
            profile = profiles.data_profile(tables, clock)
            end = float(tables[0][f"{clock}_total"].max()) if tables else 0.0   # flat to the last run's end
            for strategy in study.strategies:
                own = profile[profile["strategy"] == strategy]
                _step_to_end(ax, own[clock], own["fraction"], end, _series_label(study, strategy, several))
    for ax, label in zip(axes, ("seconds since the run started", "trials")):
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("fraction of (run, target) pairs reached")
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    return PlotResult(title, _save(fig, out_dir / "data_profile.png"))


def plot_hyperparameters(studies: list[StudyFolder], out_dir: Path) -> PlotResult:
    """One panel per cfg_ setting: each trial's value against its validation metric."""
    title = "Hyper-parameters against validation metric"
    columns = list(dict.fromkeys(c for s in studies for c in s.config_columns))
    if not columns:
        return PlotResult(title, skipped="trials.csv has no cfg_ columns (nothing was searched)")
    if not any(s.trials[s.metric].notna().any() for s in studies):
        return PlotResult(title, skipped="no trial has a validation metric")
    return PlotResult(title, _save(hyperparameter_figure(studies, columns, title), out_dir / "hyperparameters.png"))


def hyperparameter_figure(studies: list[StudyFolder], columns: list[str], title: str) -> Figure:
    """A panel per setting (trials of every strategy, the best trial ringed); a free cell holds the legend."""
    several = len(studies) > 1
    nrows, ncols = panel_grid(len(columns))
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows))
    best = overall_best(studies)
    for panel, column in enumerate(columns):
        ax = fig.add_subplot(nrows, ncols, panel + 1)
        categories = _categories(studies, column)
        for study in studies:
            if column not in study.trials.columns:
                continue
            for strategy in study.strategies:
                trials = study.strategy_trials(strategy)
                # ERROR trials left no usable model: left out, as everywhere else.
                trials = trials[(trials["status"] != "ERROR") & trials[study.metric].notna()
                                & trials[column].notna()]
                if trials.empty:
                    continue
                x = _positions(trials[column], categories)
                ax.scatter(x, trials[study.metric], s=22, alpha=0.8,
                           label=_series_label(study, strategy, several))
        _mark_best(ax, best, column, categories, several)
        if categories:
            ax.set_xticks(range(len(categories)), categories, fontsize=8)
        elif column in LOG_SCALE_SETTINGS and _all_values(studies, column, lambda v: v > 0):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap
        elif _all_values(studies, column, lambda v: v == v.round()):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(column[len("cfg_"):])
        ax.set_ylabel(_metric_label(studies))
        ax.grid(alpha=0.3)
    legend = {}
    for panel_axes in fig.axes:   # every series once, whichever panels it appears in
        for handle, label in zip(*panel_axes.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    if nrows * ncols > len(columns):   # the one free cell holds the legend, so no panel is left empty
        spare = fig.add_subplot(nrows, ncols, len(columns) + 1)
        spare.axis("off")
        spare.legend(handles, labels, loc="center", fontsize=8)
    else:
        fig.axes[0].legend(handles, labels, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def panel_grid(panels: int) -> tuple[int, int]:
    """Rows and columns for ``panels`` panels, at most 3 a row, with at most one cell free (for the legend)."""
    if panels <= 3:
        return 1, panels
    ncols = min((3, 2), key=lambda c: (-(-panels // c) * c - panels, -c))
    return -(-panels // ncols), ncols


def _mark_best(ax, best, column: str, categories: list[str], several: bool) -> None:
    """The study's best trial (by the validation metric), ringed in every panel."""
    if best is None:
        return
    study, trial = best
    value = trial.get(column)
    if value is None or pd.isna(value):
        return
    x = _positions(pd.Series([value]), categories)
    where = f"{study.name}: " if several else ""
    ax.scatter(x, [trial[study.metric]], s=160, facecolors="none", edgecolors="black", linewidths=1.5,
               label=f"best trial ({where}{trial['strategy']}, trial {int(trial['trial_index']) + 1})", zorder=3)


def _categories(studies, column) -> list[str]:
    """Text settings (e.g. unfreeze="top:2") become categories; numbers stay numeric."""
    values = pd.concat([s.trials[column] for s in studies if column in s.trials.columns]).dropna()
    return [] if pd.to_numeric(values, errors="coerce").notna().all() else sorted({str(v) for v in values})


def _positions(values: pd.Series, categories: list[str]):
    if categories:
        return [categories.index(str(v)) for v in values]
    return pd.to_numeric(values).to_numpy(dtype=float)


def _all_values(studies, column, test) -> bool:
    """Whether the setting has numeric values and ``test`` holds for every one of them."""
    values = pd.concat([pd.to_numeric(s.trials[column], errors="coerce")
                        for s in studies if column in s.trials.columns]).dropna()
    return bool(len(values)) and bool(test(values).all())


def overall_best(studies: list[StudyFolder]) -> tuple[StudyFolder, pd.Series] | None:
    """Best non-ERROR trial across all strategies (and studies; first study's mode decides)."""
    found = [(s, t) for s in studies if (t := s.best_trial()) is not None]
    sign = 1.0 if studies[0].mode == "min" else -1.0
    return min(found, key=lambda pair: sign * float(pair[1][pair[0].metric]), default=None)


def parse_confusion(study: StudyFolder, trial: pd.Series) -> tuple[np.ndarray | None, str]:
    """The trial's test confusion matrix, or None and why it cannot be used."""
    text = trial.get("test_confusion")
    if text is None or pd.isna(text) or not str(text).strip():
        return None, "the best trial has no test_confusion in trials.csv"
    try:
        matrix = np.array(json.loads(text), dtype=float)
    except (json.JSONDecodeError, ValueError, TypeError):
        return None, f"test_confusion of trial {trial['trial_id']} is not a JSON matrix"
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        return None, f"test_confusion of trial {trial['trial_id']} is not a square matrix"
    if study.labels and len(study.labels) != matrix.shape[0]:
        return None, (f"test_confusion of trial {trial['trial_id']} has {matrix.shape[0]} classes "
                      f"but study.json labels has {len(study.labels)}")
    return matrix, ""


def plot_confusion(studies: list[StudyFolder], out_dir: Path) -> PlotResult:
    """Test-speaker confusion matrix of the overall best trial, rows normalised for colour."""
    title = "Confusion matrix of the best model on the test speakers"
    best = overall_best(studies)
    if best is None:
        return PlotResult(title, skipped="no completed trial has a validation metric")
    study, trial = best
    matrix, why = parse_confusion(study, trial)
    if matrix is None:
        return PlotResult(title, skipped=why)
    labels = study.labels or [str(i) for i in range(matrix.shape[0])]
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    size = 1.6 + 0.75 * len(labels)
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true class")
    for row in range(matrix.shape[0]):
        for col in range(matrix.shape[1]):
            ax.text(col, row, f"{int(matrix[row, col])}", ha="center", va="center", fontsize=8,
                    color="white" if shares[row, col] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\n({study.name}: {trial['strategy']} trial {trial['trial_id']})", fontsize=9)
    return PlotResult(title, _save(fig, out_dir / "confusion.png"))


def plot_fronts(studies: list[StudyFolder], out_dir: Path) -> PlotResult | None:
    """Each strategy's trials (dots) and Pareto front (a step line) in the first two front objectives;
    None when no study has a front."""
    title = "Pareto front of each strategy"
    with_front = [s for s in studies if s.front_objectives and not s.feasible_trials().empty]
    if not with_front:
        return None
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for study in with_front:
        (y_name, _), (x_name, _) = list(study.front_objectives.items())[:2]
        for strategy in study.strategies:
            trials, front = study.feasible_trials(strategy), study.front_trials(strategy)
            if trials.empty:
                continue
            front = front.sort_values(x_name, kind="mergesort")
            line = ax.step(front[x_name], front[y_name], where="post", marker="o",
                           label=_series_label(study, strategy, len(studies) > 1))[0]
            ax.scatter(trials[x_name], trials[y_name], s=12, alpha=0.35, color=line.get_color())
    return _finish(fig, ax, title, x_name, y_name, out_dir / "fronts.png", heading=title + (
        "" if len(with_front[0].front_objectives) == 2 else " (first two objectives)"))


def plot_hypervolume(studies: list[StudyFolder], out_dir: Path) -> PlotResult | None:
    """The hypervolume of each strategy's trials against wall-clock: one run as a step line, several as
    their mean with a ± SE band (study-wide reference point); None when no study has a front."""
    title = "Hypervolume against wall-clock"
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    drawn = 0
    for study in studies:
        reference = fronts.study_reference(study) if study.front_objectives else None
        for strategy in study.strategies if reference is not None else []:
            band = fronts.hypervolume_band(study, strategy, reference)
            if band.empty:
                continue
            runs = int(band["runs"].max())
            label = _series_label(study, strategy, len(studies) > 1) + (f" (mean ± SE of {runs} runs)" if runs > 1 else "")
            ax.step(band["x"], band["mean"], where="post", label=label)
            ax.fill_between(band["x"], band["mean"] - band["se"].fillna(0), band["mean"] + band["se"].fillna(0),
                            step="post", alpha=0.2)
            drawn += 1
    if not drawn:
        return None
    return _finish(fig, ax, title, "seconds since the strategy (each run) started",
                   "hypervolume of the trials ended", out_dir / "hypervolume_vs_time.png")


PLOT_FILES = ("best_vs_time.png", "best_vs_trials.png", "runtime_ecdf.png", "hyperparameters.png", "confusion.png",
              "fronts.png", "hypervolume_vs_time.png", "data_profile.png")


def make_plots(studies: list[StudyFolder], thresholds: list[float], out_dir: Path) -> list[PlotResult]:
    out_dir = Path(out_dir)
    for name in PLOT_FILES:  # a plot skipped now must not leave an earlier run's file behind
        (out_dir / name).unlink(missing_ok=True)
    plots = [*plot_best_so_far(studies, thresholds, out_dir), plot_runtime_ecdf(studies, thresholds, out_dir),
             plot_data_profile(studies, out_dir),
             plot_hyperparameters(studies, out_dir), plot_confusion(studies, out_dir),
             plot_fronts(studies, out_dir), plot_hypervolume(studies, out_dir)]
    return [plot for plot in plots if plot is not None]
