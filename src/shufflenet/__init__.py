"""ShuffleNet v1 and v2, exact to both papers: models, analysis, training and deployment."""

from __future__ import annotations

from shufflenet.checkpoints import load_model
from shufflenet.models import create_model, list_models, model_info
from shufflenet.timm_compat import register_when_timm_imported
from shufflenet.training import train

__version__ = "0.1.0"

register_when_timm_imported()  # timm.create_model("shufflenet_v2_x1_0", ...) works once timm is imported

__all__ = ["__version__", "create_model", "list_models", "load_model", "model_info", "train"]
