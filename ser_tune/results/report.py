"""report.md + summary.json + plots/*.png for one study or several compared together."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from .plots import PlotResult, make_plots, overall_best
from ..study.folder import REFIT_EXPORT, REFIT_UNIT, StudyFolder, test_column
from . import fronts
from .held_out import held_out_table
from .tables import as_studies, compare, summary_json

TIMING_DEFINITIONS = """\
- **Shared encode**: the frozen encoder layers' features are extracted once for the whole study,
  before any strategy starts (`encode_seconds` in study.json). It is *not* inside any strategy's
  wall-clock; the "incl. shared encode" column adds it.
- **Wall-clock to reach** a threshold: timestamp of the first epoch report (epochs.csv, in time
  order) of a non-ERROR trial of the strategy whose validation metric reaches the threshold, minus
  the strategy's start (study.json `strategies.*.started_at`). It includes everything the strategy
  did: model loading, per-trial encoder passes, training, validation and Ray scheduling overhead.
  A run its study stopped and resumed does not count the stop (study.json `units.*.pauses`: from the
  interrupt, or Ray Tune's last snapshot after a kill, to `--resume`); trials cut off by it count.
- **Cumulative trial time to reach** (the reference paper's measure: trial time summed, model
  loading excluded): at that crossing time t*, the sum over the strategy's trials that had started
  by t* of Ray's `time_total_s` at each trial's last report at or before t* (a trial that had not
  reported yet counts t* minus its start), minus the trial's `load_seconds` once it had finished
  loading (a trial still loading at t* counts 0). It includes each trial's own encoder passes
  (layers it fine-tunes, `encode_seconds` in trials.csv), training and validation; it excludes
  model loading, the shared encode, and time between a trial's last report and t*.
- **Trials to reach**: start order (`trial_index` + 1) of the trial whose report first reached it.
- **Censored**: a threshold never reached is shown as "not reached in N trials / T min" (N trials
  started, T the strategy's wall-clock); in summary.json and the tables its values are null.
- **ERROR trials** count as time spent but never as reaching a threshold or as the best model.
- **Trial time (sum)**: `time_total_s` summed over the strategy's trials (model loading included);
  **load** and **per-trial encode** are the sums of `load_seconds` and `encode_seconds`.
- **Ray overhead** = wall-clock - trial time (sum) / concurrency, where concurrency is the most
  trials seen running at once (from `started_at`/`finished_at`); it is the time trial slots stood
  idle: Ray scheduling, search-algorithm suggestions, trial start-up and shut-down.
- **{metric} per minute** = best validation {metric} / strategy wall-clock in minutes.
- A strategy not `done` (running or interrupted) has partial figures; its wall-clock ends at its
  last observed event.
"""

PLOT_WORDS = {"best_vs_time.png": "best so far against wall-clock", "fronts.png": "Pareto fronts",
              "data_profile.png": "data profiles against wall-clock and trials",
              "hypervolume_vs_time.png": "hypervolume against wall-clock",
              "best_vs_trials.png": "best so far against trial index",
              "hyperparameters.png": "hyper-parameters", "confusion.png": "confusion matrix"}


def write_report(study_dir, *, thresholds=None, others: list = (), out_dir=None) -> Path:
    """Write report.md, summary.json and plots/*.png into out_dir (default: study_dir).

    ``others`` are further study folders compared in the same report.
    """
    studies = as_studies([study_dir, *others])
    out = Path(out_dir) if out_dir is not None else studies[0].dir
    out.mkdir(parents=True, exist_ok=True)
    tables = compare(studies, thresholds)
    drawn_thresholds = sorted(set(tables["thresholds"]["threshold"])) or (thresholds or [])
    plots = make_plots(studies, drawn_thresholds, out / "plots")
    summary = summary_json(studies, thresholds)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if (tables["strategies"]["runs"] > 1).any():
        tables["runs"].to_csv(out / "runs.csv", index=False)
    path = out / "report.md"
    path.write_text(render_report(studies, tables, plots, out, summary))
    return path


def render_report(studies: list[StudyFolder], tables: dict, plots: list[PlotResult], out: Path,
                  summary: dict | None = None) -> str:
    several = len(studies) > 1
    metric = studies[0].metric
    title = (f"ser_tune comparison: {', '.join(s.name for s in studies)}" if several
             else f"ser_tune study: {studies[0].name}")
    parts = [f"# {title}\n", *(_setup_section(study, several) for study in studies)]
    complete, incomplete = split_complete(tables)
    parts.append("## Strategy comparison\n")
    parts.append(_comparison_table(complete["strategies"], several))
    parts.append(f"\nThe test column is the test-speaker score of the trial with the best {metric}; "
                 f"the test speakers were never seen by the search.\n")
    parts.append("## Time to threshold\n")
    single = set(complete["strategies"].loc[complete["strategies"]["runs"] == 1, "strategy"])
    once = complete["thresholds"][complete["thresholds"]["strategy"].isin(single)]
    parts.append(_threshold_table(once, several) if len(once) or not len(complete["thresholds"]) else
                 "Every strategy ran several times: see *Repeated runs* below (each run's times are in runs.csv "
                 "and epochs.csv).\n")
    if not incomplete["strategies"].empty:
        parts.append("\n## Incomplete strategies (not ranked beside the complete ones)\n")
        parts.append("Their budget was not spent (the study was interrupted or is still running): "
                     "`python -m ser_tune.launch CONFIG --resume` finishes them. Partial figures:\n")
        parts.append(_comparison_table(incomplete["strategies"], several))
        parts.append(_threshold_table(incomplete["thresholds"], several))
    summary = summary if summary is not None else summary_json(studies)
    for study, entry in zip(studies, summary["studies"]):
        parts.append(held_out_section(study, entry, several))
        parts.append(repeated_section(entry, several))
        parts.append(deployment_section(study, entry, several))
    parts.append("\n## What the times include\n")
    parts.append(TIMING_DEFINITIONS.format(metric=_short(metric)))
    parts.append("\n## Plots\n")
    for plot in plots:
        if plot.path is not None:
            link = plot.path.relative_to(out).as_posix()
            parts.append(f"### {plot.title}\n\n![{PLOT_WORDS.get(plot.path.name, plot.title)}]({link})\n")
        else:
            parts.append(f"### {plot.title}\n\nPlot skipped: {plot.skipped}.\n")
    parts.append("## Best configuration\n")
    parts.append(_best_section(studies))
    for study in studies:
        modes = _modes_section(study)
        if modes:
            parts.append(f"## Fine-tuning modes{': ' + study.name if several else ''}\n")
            parts.append(modes)
    for study in studies:  # written by ser_tune.crosscorpus when the experiment lists target corpora
        cross = study.dir / "crosscorpus.md"
        if cross.exists():
            parts.append(f"## Cross-corpus evaluation{': ' + study.name if several else ''}\n")
            prefix = "" if cross.parent.resolve() == out.resolve() else os.path.relpath(cross.parent, out) + "/"
            body = cross.read_text().split("\n", 1)[-1]   # drop its own title
            parts.append(body.replace("](crosscorpus_", f"]({prefix}crosscorpus_"))
    return "\n".join(parts)


def split_complete(tables: dict) -> tuple[dict, dict]:
    """The comparison tables of the strategies that spent their budget, and of the others."""
    done = {(r["study_dir"], r["strategy"]) for r in tables["strategies"].to_dict("records")
            if r["status"] in ("done", "unknown")}

    def part(frame: pd.DataFrame, keep: bool) -> pd.DataFrame:
        mask = [((d, s) in done) == keep for d, s in zip(frame["study_dir"], frame["strategy"])]
        return frame[mask] if len(frame) else frame

    return ({k: part(v, True) for k, v in tables.items()}, {k: part(v, False) for k, v in tables.items()})


def held_out_section(study: StudyFolder, entry: dict, several: bool) -> str:
    """Test metric on held-out speakers per outer fold, beside the untuned baselines on the same folds."""
    table = held_out_table(study, entry)
    if table.empty:
        return ""
    folds = [c for c in table.columns if c.startswith("fold ")]
    speakers = [", ".join(map(str, f["test_speakers"])) for f in entry["outer_folds"]]
    one = len(folds) == 1   # one test fold: its value, no spread and no test
    rows = [[r["model"], *([] if one else [_spread(r["mean"], r["sd"])]), *(_number(r[c]) for c in folds),
             _gain(r["gain"])] for r in table.to_dict("records")]
    header = ["Model", *([] if one else [f"{study.test_metric} mean ± sd"]),
              *(f"{study.test_metric if one else c} ({s})" for c, s in zip(folds, speakers)),
              "Gain over the probe" + ("" if one else " (paired, one-sided Wilcoxon p)")]
    title = f"## Speakers the search never heard{': ' + study.name if several else ''}\n"
    note = ("\nEach strategy's value on a fold is that of its best configuration by the validation objective, "
            "the mean over repeats; when trials trained on inner folds, that configuration was refit on all of "
            "the fold's training and validation speakers for its best epoch count and scored once on the test "
            "speakers (in the column head), as the probe is. The linear probe is logistic regression on the "
            "frozen features, its layer and C chosen on the same inner folds as the trials; the default is the "
            "untuned settings, refit the same way. "
            + ("With an ensemble (`evaluation.ensemble`), a strategy's model on a fold is the mean of the class "
               "probabilities of its run's best configurations (the best of each structure first: head, layer, "
               "pooling, normalisation), each refit so; the best alone is in the row below it. " if study.meta.get("ensembles") else "")
            + ("The gain is the strategy's value minus the probe's on the one test fold: one fold has no spread "
               "and allows no test (`evaluation.outer_folds: 5` tests every speaker once and gives a paired "
               "Wilcoxon p).\n" if one else
               "The gain is the strategy's value minus the probe's on each fold, with a one-sided Wilcoxon p "
               "(few folds cannot give a small p).\n"))
    note += exported_note(study)
    return title + markdown_table(header, rows) + note


def exported_note(study: StudyFolder) -> str:
    """Which configuration the exported model is, when it is a refit, and on which speakers."""
    exported = study.meta.get("best_model") or {}
    if exported.get("unit") != REFIT_UNIT:
        return ""
    rows = study.trials[study.trials["trial_id"].astype(str) == str(exported.get("trial_id"))]
    if rows.empty or "refit_trial" not in rows:
        return f"\nExported model: {study.unit_meta(REFIT_UNIT).get('notes', 'a refit')}.\n"
    row = rows.iloc[0]
    speakers = "every speaker" if row.get("refit_of") == REFIT_EXPORT else "the training and validation speakers"
    if exported.get("ensemble"):
        return (f"\nExported model: the ensemble of the {exported['ensemble']} best configurations by the validation "
                f"objective (the mean of their class probabilities), each refit on {speakers}; the best is trial "
                f"{row['refit_trial']} ({row['refit_unit']}).\n")
    return (f"\nExported model: trial {row['refit_trial']} ({row['refit_unit']}), the best configuration by the "
            f"validation objective, refit on {speakers} for {int(row['best_epoch'])} epochs.\n")


def repeated_section(entry: dict, several: bool) -> str:
    """ERT to each threshold with its interval, success rate and the verdict against random search."""
    strategies = {n: e for n, e in entry["strategies"].items() if e.get("ert")}
    if not strategies:
        return ""
    user = {f"{t:g}" for t in entry.get("thresholds", [])}
    rows = [[name, threshold, f"{ert['reached']}/{ert['runs']}", _interval(ert, "seconds"),
             _interval(ert, "cpu_seconds"), _interval(ert, "trials", digits=1)]
            for name, e in strategies.items() for threshold, ert in e["ert"].items() if threshold in user]
    header = ["Strategy", "Threshold", "Runs that reached it", "ERT wall-clock s [95 % CI]",
              "ERT trial CPU-s [95 % CI]", "ERT trials [95 % CI]"]
    verdicts = "\n".join(f"- {e['verdict']}" for e in strategies.values() if e.get("verdict"))
    return (f"\n## Repeated runs{': ' + entry['name'] if several else ''}\n"
            "ERT (expected running time, COCO/BBOB): all time every run spent (until it reached the threshold, "
            "else all of it) over the runs that reached it; infinite when none did. The interval is a bootstrap "
            "over runs. A run is one repeat of a strategy on one outer fold.\n\n"
            + markdown_table(header, rows) + "\nAgainst random search (one-sided Mann-Whitney over runs, Holm-"
            "corrected over strategies; unreached runs rank last):\n\n" + verdicts + "\n"
            + comparison_section(entry, strategies))


def comparison_section(entry: dict, strategies: dict) -> str:
    """The ladder of targets with each strategy's ERT there, and per strategy against random search its
    verdict, Holm p, A12 with its interval and the A12 its test could detect (``results.power``)."""
    parts = []
    targets = [f"{t:g}" for t in entry.get("targets") or []]
    if targets:
        rows = [[name] + [_ladder_cell(e["ert"].get(t)) for t in targets] for name, e in strategies.items()]
        parts.append("\nTargets spread from the untuned default's value (else the worst first trial) to the best "
                     "value any run reached: ERT wall-clock s [95 % CI] (runs that reached it). The data profile "
                     "plot pools them: the fraction of (run, target) pairs reached against time.\n\n"
                     + markdown_table(["Strategy", *targets], rows))
    compared = {n: e["comparison"] for n, e in strategies.items() if e.get("comparison")}
    if compared:
        rows = [[name, "faster" if c["significant"] else "no evidence of a difference",
                 "—" if c["p_holm"] is None else f"{c['p_holm']:.2g}", _a12(c),
                 "none detectable" if c["power"]["min_detectable_a12"] is None
                 else f"{c['power']['min_detectable_a12']:.2f}"] for name, c in compared.items()]
        top = next(iter(compared.values()))
        parts.append(f"\nAgainst random search, time to {top['threshold']:g} (A12: chance a run is faster than a "
                     "random-search run; 0.5 is no difference). The last column is the smallest A12 the test "
                     f"finds with {top['power']['power']:.0%} power at these runs (Holm-adjusted alpha "
                     f"{top['power']['alpha']:g}; simulated normal shifts): a true effect below it is likely to "
                     "go unseen.\n\n" + markdown_table(
                         ["Strategy", "Verdict", "Holm p", "A12 [95 % CI]", "Detectable A12 (80 % power)"], rows))
    return "".join(parts)


def _ladder_cell(ert: dict | None) -> str:
    return "—" if ert is None else f"{_interval(ert, 'seconds')} ({ert['reached']}/{ert['runs']})"


def _a12(comparison: dict) -> str:
    if comparison["a12"] is None:
        return "—"
    low, high = comparison["a12_low"], comparison["a12_high"]
    return f"{comparison['a12']:.2f}" + ("" if low is None else f" [{low:.2f}, {high:.2f}]")


def deployment_section(study: StudyFolder, entry: dict, several: bool) -> str:
    """Accuracy against deployment cost: how latency was measured and how noisy it was, each strategy's
    Pareto front (with the front trials' test metric) and hypervolume, and the exported front models."""
    if not study.front_objectives:
        return ""
    objectives = study.front_objectives
    lines = [f"\n## Deployment: {' against '.join(objectives)}{': ' + study.name if several else ''}\n",
             _latency_words(study), ""]
    if study.constraints:
        lines.append(f"Constraints: {', '.join(f'`{c}`' for c in study.constraints)}; a trial that breaks one "
                     "ranks after every trial that does not, is on no front and is never exported as the best.\n")
    outer = (study.experiment.get("evaluation") or {}).get("outer_folds", 1) > 1
    speakers = "its outer fold's test speakers" if outer else "the test speakers"
    header = ["Strategy", "Trial", "Settings", *objectives, "Model MB", f"{study.test_metric} ({speakers})"]
    rows = [[name, point["trial_id"], _config_text(point["config"]),
             *(_cost(k, point.get(k)) for k in objectives), _cost("model_bytes", point.get("model_bytes")),
             _number(point.get(study.test_metric))]
            for name, strategy in entry["strategies"].items() for point in strategy.get("pareto") or []]
    lines += ["Each strategy's Pareto front (its finished trials no other of its trials beats in every objective):",
              "", markdown_table(header, rows) if rows else "No trial measured every objective.\n"]
    volumes = [[name, str(len(s["hypervolume"]["runs"])), _spread(s["hypervolume"]["mean"], s["hypervolume"]["se"])]
               for name, s in entry["strategies"].items() if (s.get("hypervolume") or {}).get("runs")]
    if volumes:
        lines += ["Hypervolume of each strategy's trials once all ended (mean ± SE over its runs), against one "
                  "study-wide reference point (the worst value of each objective over every strategy's trials); "
                  "over wall-clock in the plot *Hypervolume against wall-clock*:", "",
                  markdown_table(["Strategy", "Runs", "Hypervolume"], volumes)]
    front = study.meta.get("front") or {}
    if front.get("path"):
        lines.append(f"The study-wide front's models are exported to `{front['path']}` (front.json lists them); "
                     f"`python -m ser_tune.predict {front['path']} --max-latency MS_PER_S FILE.wav` picks the most "
                     "accurate within a latency.\n")
    return "\n".join(lines)


def _latency_words(study: StudyFolder) -> str:
    spread = fronts.latency_spread(study)
    if spread is None:
        return "No trial measured its latency."
    latency = study.objective.latency
    return (f"Latency is measured on each trial's exported model as it would ship (the encoder cut at the layer "
            f"its head reads), loaded and run one clip at a time on one CPU thread, encoder included: the median "
            f"of {latency.repeats} timed passes over the same {latency.clips} clips "
            f"({spread['audio_seconds']:.1f} s of audio) after {latency.warmup} untimed, in ms per "
            f"second of audio. How noisy it is on this machine: a trial's passes varied by a coefficient of "
            f"variation of {spread['cv_median']:.1%} (median over {spread['trials']} trials; "
            f"{spread['cv_min']:.1%} to {spread['cv_max']:.1%}), an interquartile range of "
            f"{spread['iqr_median_ms_per_s']:.2f} ms/s ({spread['iqr_share_median']:.1%} of its latency; medians)"
            + (f"; the timing thread's CPU time per second of audio (`latency_cpu_ms_per_s`), which other processes "
               f"do not inflate, by {spread['cpu_iqr_share_median']:.1%}" if "cpu_iqr_share_median" in spread else "")
            + ". Model MB: the model folder and the cut encoder's "
            "weights it loads from its spec. `train_cpu_seconds`: the trial process's CPU-seconds (all threads) "
            "until its last epoch.")


def _cost(column: str, value) -> str:
    if value is None or pd.isna(value):
        return "—"
    if column == "model_bytes":
        return f"{value / 1e6:.2f}"
    return _number(value) if column.startswith("val_") else f"{value:.4g}"


def _interval(ert: dict, clock: str, digits: int = 0) -> str:
    value, low, high = ert.get(clock), ert.get(f"{clock}_low"), ert.get(f"{clock}_high")
    if value is None:
        return "not reached (∞)"
    fmt = lambda v: "∞" if v is None else f"{v:.{digits}f}"   # noqa: E731 - JSON null is infinity here
    return f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def _spread(mean, sd) -> str:
    return "—" if mean is None else f"{mean:.3f} ± {sd:.3f}" if sd is not None else f"{mean:.3f}"


def _gain(gain: dict | None) -> str:
    if not gain:
        return "—"
    p = "" if gain.get("p") is None else f", p = {gain['p']:.2g}"
    sd = "" if gain.get("sd") is None else f" ± {gain['sd']:.3f}"
    return f"{gain['mean']:+.3f}{sd}{p}"


def _modes_section(study: StudyFolder) -> str:
    """BCA against trainable parameters and seconds per trial, per fine-tuning mode (frozen, top-k,
    full, LoRA, adapters), when the trials recorded their parameter counts."""
    if study.trials.empty or "trainable_params" not in study.trials or study.metric != "val_bca":
        return ""
    from ..training.peft import peft_summary

    table = peft_summary(study.trials, fixed=(study.meta.get("experiment") or {}).get("trial"))
    if table.empty:
        return ""
    header = ["Mode", "Trials", "Mean val BCA", "Best val BCA", "Mean test BCA", "Trainable params", "Share",
              "s / trial"]
    rows = [[r["mode"], r["trials"], f"{r['val_bca_mean']:.3f}", f"{r['val_bca_best']:.3f}",
             f"{r['test_bca_mean']:.3f}", f"{r['trainable_params']:,.0f}", f"{r['trainable_share']:.2%}",
             f"{r['seconds_per_trial']:.1f}"] for r in table.to_dict("records")]
    return (markdown_table(header, rows)
            + "\nHead-only trials never load the encoder, so their share is of the head alone.\n")


def _setup_section(study: StudyFolder, several: bool) -> str:
    lines = [f"## Setup{': ' + study.name if several else ''}\n", *_corpus_lines(study.meta),
             *_split_lines(study.meta), *_machine_lines(study.meta), *_protocol_lines(study), *_strategy_lines(study)]
    if (study.dir / "best_model").is_dir():
        lines.append(f"- Best model exported to `{study.dir / 'best_model'}`")
    return "\n".join(lines) + "\n"


def _corpus_lines(meta: dict) -> list[str]:
    corpus = meta.get("corpus") or {}
    if not corpus:
        return ["- Corpus: not recorded in study.json"]
    counts = ", ".join(f"{k} {v}" for k, v in (corpus.get("labels") or {}).items())
    lines = [f"- Corpus: **{corpus.get('name', '?')}** ({corpus.get('files', '?')} files, "
             f"{corpus.get('speakers', '?')} speakers, root `{corpus.get('root', '?')}`)"
             + (f"; labels: {counts}" if counts else "")]
    if corpus.get("synthetic"):
        lines.append("- **SYNTHETIC stand-in corpus: figures are not comparable to real corpora.**")
        lines.append(f"- {smoke_test_words(meta)}")
    dims = corpus.get("dimensions_labelled")
    if dims and uses_dimensions(meta):
        lines.append("- Dimensional labels (arousal/valence/dominance): "
                     + ", ".join(f"{part} {d['labelled']} of {d['files']} clips" for part, d in dims.items())
                     + "; clips without them are excluded from CCC and its loss")
    return lines


def smoke_test_words(meta: dict) -> str:
    """What a study on the synthetic stand-in is for, in words (the report's and the launcher's)."""
    spec = str((meta.get("encoder") or {}).get("spec") or (meta.get("experiment") or {}).get("encoder") or "")
    encoder = (" with a tiny randomly initialised encoder" if spec.startswith("tiny-") else "")
    return (f"This is a smoke test: a generated stand-in corpus (synthesised voices, not recorded speech){encoder} "
            "checks that every step runs. Its scores mean nothing about emotion recognition, and its tuned models need not beat "
            "the linear probe (a few epochs of a random encoder against a probe on all its layers). For a real "
            "answer: `python -m ser_tune.launch experiments/emodb.yaml` (EmoDB, Whisper-base).")


def uses_dimensions(meta: dict) -> bool:
    """Whether the study predicts or scores arousal/valence/dominance (else their labels do not matter)."""
    experiment = meta.get("experiment") or {}
    objective = experiment.get("objective") or {}
    metrics = [objective.get("metric") or "", *(objective.get("metrics") or {})]
    task = (experiment.get("trial") or {}).get("task", "categories")
    return any("ccc" in m for m in metrics) or task != "categories" or "task" in (experiment.get("space") or {})


def _split_lines(meta: dict) -> list[str]:
    split = meta.get("split") or {}
    folds = meta.get("folds") or {}
    if len(folds.get("outer") or []) > 1:
        tested = "; ".join(", ".join(map(str, f["test_speakers"])) for f in folds["outer"])
        return [f"- Split: {len(folds['outer'])} outer folds of test speakers, every speaker tested once ({tested}); "
                f"each trial trains and validates on {folds.get('cv_folds', 1)} fold(s) of the other speakers"]
    if not split:
        return []
    counts = split.get("counts") or {}
    lines = [f"- Split: {split.get('kind', '?')} (train {counts.get('train', '?')} / "
             f"val {counts.get('val', '?')} / test {counts.get('test', '?')} files)"]
    for part in ("train", "val", "test"):
        speakers = split.get(f"{part}_speakers")
        if speakers:
            lines.append(f"  - {part} speakers: {', '.join(map(str, speakers))}")
    if split.get("speaker_dependent"):
        lines.append("- **SPEAKER-DEPENDENT split (speakers appear in train and test, as in the "
                     "reference paper's code): test BCA is optimistic.**")
    return lines


def _machine_lines(meta: dict) -> list[str]:
    lines = []
    encoder = meta.get("encoder") or {}
    if encoder:
        lines.append(f"- Encoder: `{encoder.get('spec', '?')}` ({encoder.get('family', '?')}, "
                     f"{encoder.get('num_layers', '?')} layers, hidden size {encoder.get('hidden_size', '?')})")
    machine = meta.get("machine") or {}
    if machine:
        lines.append(f"- Machine: {machine.get('hostname', '?')}, {machine.get('cpus', '?')} CPUs, "
                     f"{machine.get('nodes', 1)} node(s); {machine.get('platform', '')}; "
                     f"Python {machine.get('python', '?')}, torch {machine.get('torch', '?')}, "
                     f"Ray {machine.get('ray', '?')}")
    return lines


def _protocol_lines(study: StudyFolder) -> list[str]:
    experiment = study.experiment
    budget, resources = experiment.get("budget") or {}, experiment.get("resources") or {}
    lines = [f"- Objective: {study.metric} ({study.mode}); thresholds: {', '.join(f'{t:g}' for t in study.thresholds)}"]
    cv = study.cv_folds
    outer = (experiment.get("evaluation") or {}).get("outer_folds", 1)
    if cv > 1:
        lines.append(f"- Cross-validated objective: every trial is scored by the mean over {cv} speaker folds of "
                     f"the non-test speakers{'' if outer > 1 else ' (the test speakers stay out)'}; trained "
                     "encoder layers cost that many times more")
    if budget:
        lines.append(f"- Budget per strategy and run: {budget.get('trials', 'no limit on')} trials, "
                     f"{budget.get('minutes') or 'no limit on'} minutes; {budget.get('repeats', 1)} repeat(s); "
                     f"{resources.get('cpus_per_trial', '?')} CPU(s) per trial")
    normalize = (experiment.get("trial") or {}).get("normalize", "none")
    if normalize == "speaker" or "normalize" in (experiment.get("space") or {}):
        lines.append("- **Speaker-normalised features: transductive** (each test speaker's own unlabelled clips "
                     "set its statistics), and it assumes each speaker's clips span the emotions, as in acted corpora.")
    lines.append(f"- Shared frozen-feature extraction (once, before all strategies): {_seconds(study.encode_seconds)}")
    return lines


def _strategy_lines(study: StudyFolder) -> list[str]:
    lines = ["- Strategies:"]
    for strategy in study.strategies:
        info = study.strategy_meta(strategy)
        warmup = info.get("warmup")
        detail = [f"budget {info['budget']} trials" if info.get("budget") is not None else None,
                  f"{warmup} random warm-up trial{'' if warmup == 1 else 's'}" if warmup is not None else None,
                  f"{info['runs']} runs" if info.get("runs", 1) > 1 else None,
                  f"status {info.get('status', 'unknown')}"]
        notes = f" — {info['notes']}" if info.get("notes") else ""
        partial = " (**partial results**)" if info.get("status") in ("running", "interrupted") else ""
        lines.append(f"  - `{strategy}`: {', '.join(d for d in detail if d)}{notes}{partial}")
    return lines


def _comparison_table(frame: pd.DataFrame, several: bool) -> str:
    if frame.empty:
        return "No strategy has run yet.\n"
    metrics = set(frame["metric"])
    metric = next(iter(metrics)) if len(metrics) == 1 else None   # None: the studies' metrics differ
    rows = []
    repeated = bool((frame["runs"] > 1).any())
    for row in frame.to_dict("records"):
        best_val = _mean_se(row, "best_val") + ("" if metric else f" ({row['metric']})")
        rows.append(([row["study"]] if several else []) + [
            row["strategy"] + (f" ({row['runs']} runs)" if row["runs"] > 1 else ""), row["status"],
            str(row["trials"]), str(row["errors"]), best_val, _config_text(row["best_config"]),
            _mean_se(row, "best_test"), _seconds(row["wall_clock_seconds"]), _seconds(row["trial_seconds"]),
            _seconds(row["load_seconds"]), _seconds(row["trial_encode_seconds"]), str(row["concurrency"]),
            _seconds(row["overhead_seconds"]), _number(row["per_minute"], 4)])
    header = (["Study"] if several else []) + [
        "Strategy", "Status", "Trials done", "Errors", f"Best {metric}" if metric else "Best val",
        "Best config", f"{test_column(metric)} of best trial" if metric else "Test of best trial",
        "Wall-clock",
        "Trial time (sum)", "Load (sum)", "Per-trial encode (sum)", "Concurrency", "Ray overhead",
        f"{_short(metric)} per minute" if metric else "Best val per minute"]
    note = ("\nA strategy with several runs (repeats x outer folds): best values are the mean ± SE over its runs "
            "(each run's best trial), wall-clock the mean per run, times and counts summed; the best config "
            "is its best trial over all runs.\n") if repeated else ""
    return markdown_table(header, rows) + note


def _mean_se(row: dict, key: str) -> str:
    se = row.get(f"{key}_se")
    if row.get("runs", 1) > 1 and se is not None and not pd.isna(se) and not pd.isna(row[key]):
        return f"{row[key]:.3f} ± {se:.3f}"
    return _number(row[key])


def _threshold_table(frame: pd.DataFrame, several: bool) -> str:
    if frame.empty:
        return "No thresholds to report.\n"
    rows = []
    for row in frame.to_dict("records"):
        if row["reached"]:
            cells = [_seconds(row["seconds_to"]), _seconds(row["seconds_to_incl_encode"]),
                     _seconds(row["trial_seconds_to"]), str(int(row["trials_to"])),
                     f"trial {row['crossing_trial_id']} epoch {int(row['crossing_epoch'])}: "
                     f"{_number(row['crossing_value'])}"]
        else:
            censored = (f"not reached in {row['trials_started']} trials / "
                        f"{_minutes(row['wall_clock_seconds'])} min")
            cells = [censored, "censored", "censored", "censored", "—"]
        rows.append(([row["study"]] if several else []) + [row["strategy"], f"{row['threshold']:g}"] + cells)
    header = (["Study"] if several else []) + [
        "Strategy", "Threshold", "Wall-clock to reach", "incl. shared encode",
        "Cumulative trial time to reach", "Trials to reach", "Reached by"]
    return markdown_table(header, rows)


def _best_section(studies: list[StudyFolder]) -> str:
    best = overall_best(studies)
    if best is None:
        return "No completed trial has a validation metric yet.\n"
    study, trial = best
    test_value = trial.get(study.test_metric)
    where = f"study {study.name}, " if len(studies) > 1 else ""
    lines = [f"- Best trial overall: {where}strategy `{trial['strategy']}`, trial `{trial['trial_id']}` "
             f"(trial {int(trial['trial_index']) + 1} of its run in start order, as in the plots and the launcher's "
             f"lines; best epoch {_number(trial.get('best_epoch'), 0)})",
             f"- Validation metric ({study.metric}): {_number(trial[study.metric])}",
             f"- Test metric ({study.test_metric}) on the test speakers: {_number(test_value)}"
             + (f"; test accuracy {_number(trial.get('test_accuracy'))}"
                if not pd.isna(trial.get("test_accuracy")) else ""),
             f"- Config: {_config_text(study.trial_config(trial)) or '(nothing searched)'}"]
    if not pd.isna(trial.get("trainable_params")):
        total = trial.get("total_params")
        lines.append(f"- Trainable parameters: {int(trial['trainable_params']):,}"
                     + (f" of {int(total):,}" if not pd.isna(total) else ""))
    return "\n".join(lines) + "\n"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)]) + "\n"


def _config_text(config: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


def _number(value, digits: int = 3) -> str:
    return "—" if value is None or pd.isna(value) else f"{float(value):.{digits}f}"


def _minutes(seconds) -> str:
    return "?" if seconds is None or pd.isna(seconds) else f"{float(seconds) / 60:.1f}"


def _seconds(value) -> str:
    return "—" if value is None or pd.isna(value) else f"{float(value):.1f} s ({_minutes(value)} min)"


def _short(metric: str) -> str:
    return metric[4:] if metric.startswith("val_") else metric
