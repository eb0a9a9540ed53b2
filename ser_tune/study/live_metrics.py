"""A study's progress as Ray metrics, for Prometheus and the Ray dashboard's Metrics page.

Each unit of work (a strategy run, a baseline) reports, from the driver as its trials end:

- ``ser_tune_trials_ended`` (counter): trials ended (finished or failed);
- ``ser_tune_trial_budget`` (gauge): the trials the unit will run;
- ``ser_tune_best_value`` (gauge): the best value of the unit's metric so far (in its mode).

Tags: ``study`` (the study folder's name), ``strategy``, ``unit`` and ``metric``. Ray exports them
through each node's metrics agent with its own ``ray_`` prefix (``ray_ser_tune_trials_ended_total``,
``ray_ser_tune_best_value``), where Prometheus scrapes them (docker-compose.yml's ``prometheus``
service, or any Prometheus given Ray's ``session_latest/metrics/prometheus/prometheus.yml``).
"""
from __future__ import annotations

from ray.tune import Callback

TAG_KEYS = ("study", "strategy", "unit", "metric")


class StudyMetrics(Callback):
    """A Ray Tune callback (on the driver) that keeps a unit's progress metrics up to date.

    Ray pickles callbacks with the experiment state: the metric objects are made again after a restore,
    and the best value goes on from the trials already ended.
    """

    def __init__(self, study: str, strategy: str, unit: str, metric: str, mode: str, budget: int):
        self.tags = {"study": study, "strategy": strategy, "unit": unit, "metric": metric}
        self.metric, self.mode, self.budget = metric, mode, budget
        self.best: float | None = None
        self._made = None

    def __getstate__(self):
        return {**self.__dict__, "_made": None}

    def made(self):
        """(trials ended counter, budget gauge, best gauge), made once per process."""
        if self._made is None:
            from ray.util.metrics import Counter, Gauge

            ended = Counter("ser_tune_trials_ended", description="trials ended (finished or failed) in a ser_tune "
                                                                 "unit of work", tag_keys=TAG_KEYS)
            budget = Gauge("ser_tune_trial_budget", description="trials a ser_tune unit of work runs",
                           tag_keys=TAG_KEYS)
            best = Gauge("ser_tune_best_value", description="best value so far of a ser_tune unit's metric",
                         tag_keys=TAG_KEYS)
            budget.set(self.budget, tags=self.tags)
            self._made = (ended, budget, best)
        return self._made

    def setup(self, **info):
        """As the unit starts: its budget is known before any trial ends."""
        self.safely(self.made)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.safely(self.ended, (getattr(trial, "last_result", None) or {}).get(self.metric))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.safely(self.ended, None)

    def safely(self, action, *args) -> None:
        """Metrics are a view: one that cannot be recorded never stops the study."""
        try:
            action(*args)
        except Exception as exc:   # noqa: BLE001 - whatever the metrics client raises
            print(f"{self.tags['unit']}: progress metrics not recorded ({type(exc).__name__}: {exc})", flush=True)

    def ended(self, value) -> None:
        ended, _, best = self.made()
        ended.inc(1.0, tags=self.tags)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
                self.best = float(value)
        if self.best is not None:
            best.set(self.best, tags=self.tags)
