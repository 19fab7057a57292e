"""ctxjax: extend the context window of decoder language models in JAX/Flax, export them to PyTorch."""

from ctxjax.adaptation import AdaptationConfig
from ctxjax.config import ModelConfig
from ctxjax.execution import ExecutionConfig
from ctxjax.model import Transformer, init_params, param_logical_axes

__all__ = ["AdaptationConfig", "ExecutionConfig", "ModelConfig", "Transformer", "init_params",
           "param_logical_axes"]
__version__ = "0.1.0"
