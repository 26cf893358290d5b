"""ShuffleNet v1 and v2, exact to both papers: models, analysis, training and deployment."""

from __future__ import annotations

from shufflenet.models import create_model, list_models, model_info
from shufflenet.training import train
from shufflenet.weights import load_model

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "load_model", "model_info", "train"]
