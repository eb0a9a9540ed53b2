"""One line per finished trial, for every kind of study (Ray's own tables are long for short trials)."""
from __future__ import annotations

from ray.tune import Callback

ENDED = ("TERMINATED", "ERROR")


class TrialProgress(Callback):
    """``tpe   3/15  val_bca 0.912  best 0.935  4.1 s  lr=0.000216 num_epochs=30``.

    In a resumed unit the count goes on from the trials already ended (``catch_up``).
    Holds no stream (Ray pickles callbacks with the experiment): prints to the current stdout.
    """

    def __init__(self, label: str, budget: int, metric: str, mode: str, fields: tuple[str, ...] | None = None,
                 done: int = 0, best: float | None = None):
        self.label, self.budget, self.metric, self.mode = label, budget, metric, mode
        self.fields = fields        # result keys to show; None: the searched settings (cfg_*)
        self.done = done
        self.best = best
        self.started_before = 0     # trials of the unit started before this Ray run of it (a lost state)

    def going_on_from(self, results: list[dict]) -> "TrialProgress":
        """This progress for a unit started again after Ray's state of it was lost: the count, the trial
        numbers and the best go on from the ended trials' ``results`` (their metrics), which Ray's new run
        does not list."""
        again = TrialProgress(self.label, self.budget, self.metric, self.mode, self.fields, self.done, self.best)
        again.done = again.started_before = max(self.done, len(results))
        for result in results:
            again.note(result.get(self.metric))
        return again

    def line(self, result: dict, words: str, number: int | None = None) -> str:
        """``number``: the trial's place in start order (1-based), as trials.csv's ``trial_index`` + 1 and
        the report's plots count trials; the count before it is of trials ended."""
        self.done += 1
        if self.fields is None:
            shown = " ".join(f"{k[4:]}={short(v)}" for k, v in result.items() if k.startswith("cfg_"))
        else:
            shown = " ".join(f"{k}={short(result[k])}" for k in self.fields if k in result)
        seconds = result.get("time_total_s")
        took = f"  {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
        which = f"  trial {number}" if number is not None else ""
        return f"{self.label:6} {self.done:>3}/{self.budget}{which}  {words}{took}  {shown}".rstrip()

    def catch_up(self, trials, trial) -> None:
        """A resumed unit runs with the callback pickled in its experiment state, whose count may be behind:
        the count and the best go on from the trials already ended."""
        ended = [t for t in trials if t is not trial and getattr(t, "status", None) in ENDED]
        self.done = max(self.done, len(ended))
        for other in ended:
            self.note((getattr(other, "last_result", None) or {}).get(self.metric))

    def note(self, value) -> None:
        if isinstance(value, (int, float)):
            better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
            self.best = value if better else self.best

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.catch_up(trials, trial)
        result = getattr(trial, "last_result", None) or {}
        value = result.get(self.metric)
        self.note(value)
        words = f"{value:.3f}  best {self.best:.3f}" if isinstance(value, (int, float)) else "-"
        print(self.line(result, f"{self.metric} {words}", self.number(trials, trial)), flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.catch_up(trials, trial)
        result = getattr(trial, "last_result", None) or {}
        print(self.line(result, "ERROR (the error is in trials.csv once the unit ends)", self.number(trials, trial)),
              flush=True)

    def number(self, trials, trial) -> int | None:
        at = start_number(trials, trial)
        return None if at is None else self.started_before + at


def start_number(trials, trial) -> int | None:
    """The trial's place in start order, from 1: Ray Tune lists a run's trials in the order it created them
    (also after a restore)."""
    return next((at + 1 for at, other in enumerate(trials or []) if other is trial), None)


def short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
