"""Outputs: DCASE submission files, result tables, multi-run summaries; the CSV writers (from ``stetho.fileio``)."""

from stetho.fileio import atomic_write_text, write_csv, write_dict_csv
from stetho.outputs.dcase import (
    NAMINGS, SECTION_COLUMNS, SubmissionFiles, SubmissionName, decision_filename, parse_submission_filename,
    read_submission, score_filename, submission_filenames, write_results, write_section_metrics, write_submission,
)
from stetho.outputs.summary import RunsSummary, format_mean_std, summarize_runs

__all__ = [
    "NAMINGS", "SECTION_COLUMNS", "RunsSummary", "SubmissionFiles", "SubmissionName", "atomic_write_text",
    "decision_filename", "format_mean_std", "parse_submission_filename", "read_submission", "score_filename",
    "submission_filenames", "summarize_runs", "write_csv", "write_dict_csv", "write_results",
    "write_section_metrics", "write_submission",
]
