"""Datasets: clip records, layouts and file-name parsers, synthetic data."""

from stetho.datasets.clip import ANOMALY, DOMAINS, NORMAL, SOURCE, TARGET, Clip
from stetho.datasets.dcase import Scan, list_machines, parse_filename, scan_dcase

__all__ = [
    "ANOMALY", "DOMAINS", "NORMAL", "SOURCE", "TARGET", "Clip", "Scan",
    "list_machines", "parse_filename", "scan_dcase",
]
