"""Export a trained run for scoring without PyTorch (ONNX) or without stetho (TorchScript).

:func:`export_run` writes, per machine type, one file that maps raw mono samples to the clip's
score in every score mode (log-mel front end, network and backend statistics inside the graph:
``Detector.export_module``), for ONNX a second graph from the spectrum on (``<machine>.spectrum.onnx``,
fed by the edge scorer's numpy front end, which onnxruntime's slow ``STFT`` makes the faster
one), a JSON file beside them with what scoring needs (thresholds, score
modes, sections, sample rate, fewest samples, the run's id and versions), an ``export.json``
index and the edge scorer ``stetho_edge.py`` (:mod:`stetho.edge`: numpy, soundfile and
onnxruntime only). Layer: above the models, below the pipeline and the CLI.
"""

from stetho.export.exporter import EXPORT_FORMATS, EXPORT_INDEX, ONNX_OPSET, ExportedModel, export_run, run_id

__all__ = ["EXPORT_FORMATS", "EXPORT_INDEX", "ONNX_OPSET", "ExportedModel", "export_run", "run_id"]
