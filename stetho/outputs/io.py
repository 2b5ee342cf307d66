"""Former home of the CSV writers, now in :mod:`stetho.fileio`; re-exported here for old imports.

New code imports from :mod:`stetho.fileio` (or :mod:`stetho.outputs`).
"""

from stetho.fileio import atomic_write_text, format_value, write_csv, write_dict_csv

__all__ = ["atomic_write_text", "format_value", "write_csv", "write_dict_csv"]
