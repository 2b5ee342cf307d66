"""stetho: unsupervised anomalous sound detection for machine condition monitoring."""

__version__ = "0.2.0"
