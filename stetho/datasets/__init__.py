"""Datasets: clip records, every layout's file-name parser and scanner, ground truth, synthetic data."""

from stetho.datasets.base import Scan, resolve_root
from stetho.datasets.clip import ANOMALY, DOMAINS, NORMAL, SOURCE, TARGET, Clip
from stetho.datasets.dcase import list_machines, parse_filename, scan_dcase
from stetho.datasets.ground_truth import GroundTruth, label_clips, read_ground_truth
from stetho.datasets.layouts import (
    DATASETS, LAYOUTS, Layout, detect, get_layout, is_dcase_data, official_formula, scan_dataset,
)
from stetho.datasets.manifest import read_manifest, write_manifest
from stetho.datasets.names import MAX_NAME_LENGTH, check_name, is_safe_name

__all__ = [
    "ANOMALY", "DATASETS", "DOMAINS", "LAYOUTS", "MAX_NAME_LENGTH", "NORMAL", "SOURCE", "TARGET", "Clip",
    "GroundTruth", "Layout", "Scan", "check_name", "detect", "get_layout", "is_dcase_data", "is_safe_name", "label_clips",
    "list_machines", "official_formula", "parse_filename", "read_ground_truth", "read_manifest", "resolve_root",
    "scan_dataset", "scan_dcase", "write_manifest",
]
