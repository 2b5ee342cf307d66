"""Outputs: atomic CSV writing, DCASE submission files, result tables."""

from stetho.outputs.dcase import (
    SubmissionFiles, decision_filename, read_submission, score_filename, write_results, write_submission,
)
from stetho.outputs.io import atomic_write_text, write_csv, write_dict_csv

__all__ = [
    "SubmissionFiles", "atomic_write_text", "decision_filename", "read_submission",
    "score_filename", "write_csv", "write_dict_csv", "write_results", "write_submission",
]
