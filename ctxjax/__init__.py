"""ctxjax: extend the context window of decoder language models in JAX/Flax, export them to PyTorch."""

from ctxjax import xla_flags as _xla_flags

_xla_flags.apply()  # before JAX starts a backend: a notebook's own jitted step gets the CLI's XLA:CPU flags

from ctxjax.adaptation import AdaptationConfig  # noqa: E402
from ctxjax.config import ModelConfig  # noqa: E402
from ctxjax.execution import ExecutionConfig  # noqa: E402
from ctxjax.model import Transformer, init_params, param_logical_axes  # noqa: E402

__all__ = ["AdaptationConfig", "ExecutionConfig", "ModelConfig", "Transformer", "init_params",
           "param_logical_axes"]
__version__ = "0.1.0"
