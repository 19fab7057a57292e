"""How training adapts a model without changing what it is: LoRA adapters and LongLoRA's shifted sparse
attention. Owned by training and given to the model explicitly (`Transformer(cfg, adaptation=...)`); an export
never writes it (adapters are merged into the weights, or written apart as a PEFT adapter).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ctxjax.errors import InputError
from ctxjax.dataclass_config import replace_fields


@dataclasses.dataclass(frozen=True)
class AdaptationConfig:
    # LoRA adapters (Hu et al. 2021; LongLoRA trains them with embeddings and norms): each projection named
    # in lora_targets gets x @ A @ B * lora_alpha / lora_rank added, B starting at zero. 0 = no adapters.
    # Only adapters (and optimizer.trainable groups) train; export merges them into the weights.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q", "k", "v", "o")
    # LongLoRA's shifted sparse attention (S²-Attn) in training: tokens attend within groups of this many
    # positions, half the heads in groups shifted by half a group (ctxjax.attention.shifted). 0 = full
    # attention. Training only: evaluation, generation and export always attend to the whole context.
    shifted_sparse_group: int = 0

    def __post_init__(self):
        if isinstance(self.lora_targets, list):  # from JSON (checkpoint metadata) or a recipe: hashable
            object.__setattr__(self, "lora_targets", tuple(self.lora_targets))

        def fail(message: str):
            raise InputError(f"AdaptationConfig: {message}")

        if not isinstance(self.lora_rank, int) or isinstance(self.lora_rank, bool) or self.lora_rank < 0:
            fail(f"lora_rank={self.lora_rank!r} must be an int >= 0 (0: no adapters; LongLoRA uses 8)")
        if self.lora_rank and not (isinstance(self.lora_alpha, (int, float)) and self.lora_alpha > 0):
            fail(f"lora_alpha={self.lora_alpha!r} must be > 0 (adapters are scaled by lora_alpha / "
                 "lora_rank)")
        if not isinstance(self.lora_targets, tuple) or (self.lora_rank and not self.lora_targets):
            fail(f"lora_targets={self.lora_targets!r} must name projections, e.g. ('q', 'v')")
        group = self.shifted_sparse_group
        if not isinstance(group, int) or isinstance(group, bool) or group < 0 or group % 2:
            fail(f"shifted_sparse_group={group!r} must be an even int >= 0 (0: full attention; LongLoRA uses "
                 "1/4 of the training length)")

    @property
    def adapted(self) -> tuple[str, ...]:
        """The projections that carry adapters (none without a rank)."""
        return self.lora_targets if self.lora_rank else ()

    def check(self, cfg) -> None:
        """Refuse (one line) what `cfg`'s model cannot take: unknown projections, S²-Attn with odd head
        counts."""
        unknown = [t for t in self.lora_targets if t not in cfg.projections]
        if unknown:
            raise InputError(f"lora_targets={self.lora_targets!r} names {unknown}; choose from the "
                             f"projections of a {cfg.family} model: {cfg.projections}")
        if self.shifted_sparse_group and (cfg.n_heads % 2 or (cfg.kv_heads % 2 and cfg.kv_heads > 1)):
            raise InputError(f"shifted_sparse_group splits the heads in two halves; n_heads={cfg.n_heads} "
                             f"and n_kv_heads={cfg.kv_heads} must be even (or n_kv_heads 1): this model "
                             "cannot use S²-Attn, set shifted_sparse_group=0")

    def replace(self, **changes: Any) -> "AdaptationConfig":
        return replace_fields(self, changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["lora_targets"] = list(out["lora_targets"])  # as JSON gives it back
        return out
