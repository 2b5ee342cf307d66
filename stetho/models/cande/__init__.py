"""CANDE-CP: contextual novelty detection with context prediction (seed 000)."""

from stetho.models.cande.detector import CONTEXT_MODES, VARIANTS, CANDEDetector
from stetho.models.cande.torch_model import ContextPredictor, FiLMAE, FiLMBlock, PlainAE

__all__ = ["CONTEXT_MODES", "VARIANTS", "CANDEDetector", "ContextPredictor", "FiLMAE", "FiLMBlock", "PlainAE"]
