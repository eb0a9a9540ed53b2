"""Results of a ser_tune study: strategy comparison, time to threshold, plots and report.

Works from the study folder's files alone (study.json, trials.csv, epochs.csv), without Ray.
"""
from .report import write_report
from ..study.folder import StudyFolder, StudyFormatError, load_study
from .tables import compare, summary_json

__all__ = ["StudyFolder", "StudyFormatError", "load_study", "compare", "summary_json", "write_report"]
