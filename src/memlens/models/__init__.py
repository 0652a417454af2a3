"""Step 2a of the pipeline: the pre-trained model and its tokenizer."""

from memlens.models.builtin import BUILTIN_MODELS, BuiltinModel
from memlens.models.loading import LoadedModel, cache_dir, load_model, model_placement, prepare

__all__ = ["BUILTIN_MODELS", "BuiltinModel", "LoadedModel", "cache_dir", "load_model", "model_placement", "prepare"]
