"""ctxjax.checkpoint: Orbax checkpoints of a work directory (WORKDIR/checkpoints, tokenizer in
WORKDIR/tokenizer).

- `Checkpointer`: async, atomic saves of train state + data-iterator state + metadata; restores onto any mesh.
- `checkpoint_meta`, `check_compatible`: the metadata JSON and the refusal of another run's work directory.
- `write_params_checkpoint`, `load_for_inference`: params-only step-0 checkpoints (import-hf) and the loader
  of export / eval / generate.
"""

from ctxjax.checkpoint.manager import (Checkpointer, checkpoint_dir, is_params_only, tokenizer_dir,
                                      workdir_protected_paths)
from ctxjax.checkpoint.meta import (adaptation_of, check_compatible, checkpoint_meta, model_config_of,
                                   shape_differences)
from ctxjax.checkpoint.params import (ensure_no_checkpoints, load_for_inference, load_params,
                                      replace_tokenizer, write_params_checkpoint)

__all__ = [
    "Checkpointer", "adaptation_of", "check_compatible", "checkpoint_dir", "checkpoint_meta",
    "ensure_no_checkpoints", "is_params_only", "load_for_inference", "load_params", "model_config_of",
    "replace_tokenizer", "shape_differences", "tokenizer_dir", "workdir_protected_paths",
    "write_params_checkpoint",
]
