"""The vocabulary every metrics module shares: metric keys, result-table columns, summary-row names."""

from __future__ import annotations

#: Result-table columns, in the DCASE baseline's vocabulary and order.
TABLE_COLUMNS: tuple[str, ...] = (
    "section",
    "AUC (source)",
    "AUC (target)",
    "pAUC",
    "pAUC (source)",
    "pAUC (target)",
    "precision (source)",
    "precision (target)",
    "recall (source)",
    "recall (target)",
    "F1 score (source)",
    "F1 score (target)",
)
#: Result-table columns for machine types whose data has no domains.
NO_DOMAIN_COLUMNS: tuple[str, ...] = ("section", "AUC", "pAUC")
#: Result-table columns of the 2021 evaluator: one row per (section, domain), within-domain values.
TABLE_COLUMNS_2021: tuple[str, ...] = ("section", "domain", "AUC", "pAUC", "precision", "recall", "F1 score")
#: Result-table columns of the 2020 evaluator: one row per machine ID.
TABLE_COLUMNS_2020: tuple[str, ...] = ("id", "AUC", "pAUC")
#: Precision, recall and F1 over all files of a section without domains (from decisions).
ALL_FILES_PRF_KEYS: tuple[str, ...] = ("precision", "recall", "F1 score")
#: Keys of :func:`section_metrics`: the 2022 table columns (without ``section``), ``AUC`` over
#: all files, the within-domain AUCs of 2021, ``PR-AUC`` over all files, and the precision,
#: recall and F1 over all files of a section without domains.
METRIC_KEYS: tuple[str, ...] = (TABLE_COLUMNS[1:] + ("AUC", "AUC (source only)", "AUC (target only)", "PR-AUC")
                                + ALL_FILES_PRF_KEYS)
#: Names of the two summary rows of :meth:`EvaluationResult.table`.
ARITHMETIC_MEAN = "arithmetic mean"
HARMONIC_MEAN = "harmonic mean"
#: Every column :meth:`EvaluationResult.machine_summary` may hold that is worth printing in a
#: one-screen table (the remaining precision/recall columns are in the CSVs); a printer keeps
#: the keys of the summary rows that are in this set, in the rows' order.
SUMMARY_PRINT_COLUMNS: tuple[str, ...] = (
    "machine",
    "AUC (source)",
    "pAUC (source)",
    "AUC (target)",
    "pAUC (target)",
    "pAUC",
    "AUC",
    "hmean",
    "score",
    "precision (source)",
    "recall (source)",
    "F1 score (source)",
    "F1 score (target)",
    *ALL_FILES_PRF_KEYS,
)
#: The precision/recall/F1 keys of :func:`section_metrics` (per domain).
_PRF_KEYS: tuple[str, ...] = TABLE_COLUMNS[6:]
