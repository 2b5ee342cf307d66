"""BiGAN / EGBAD on log-mel patches (seed 001)."""

from stetho.models.bigan.detector import BiGANDetector, denormalise, generator_diversity, normalise, norm_stats
from stetho.models.bigan.torch_model import BiGAN, Discriminator, Encoder, Generator, anomaly_scores, ema_update

__all__ = ["BiGAN", "BiGANDetector", "Discriminator", "Encoder", "Generator", "anomaly_scores", "denormalise",
           "ema_update", "generator_diversity", "norm_stats", "normalise"]
