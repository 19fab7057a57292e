"""BERT's masked-language-model objective as data: a packed row of next-token targets becomes a row of
corrupted inputs whose targets are the original tokens at the chosen positions.

    tokens   = the row with chosen positions replaced (mask token / random token / unchanged)
    targets  = the original tokens (read where weights are 1)
    weights  = 1 on chosen positions only

Chosen positions are text tokens of a document (segment id > 0) that are not special (BOS, EOS, mask,
padding...), each chosen with probability `rate`. Every random choice of a row is keyed by (seed, shard, row
index in the shard's stream): the stream's cursor fixes it, so a resumed run masks exactly as the first did,
whatever the batch shape around the row.
"""

from __future__ import annotations

import numpy as np

from ctxjax.data.tokenizer import check_mask_token

_SALT = 0x3A5C  # keeps these draws apart from the stream's other seeded choices


class Masker:
    def __init__(self, mask_id: int, special_ids, vocab_size: int, rate: float = 0.15,
                 replace: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0):
        self.mask_id, self.rate, self.seed = int(mask_id), float(rate), seed
        self.special = np.asarray(sorted(set(special_ids) | {int(mask_id)}), np.int64)
        # Random replacements are ordinary tokens only: a model should never read a stray BOS mid-text.
        self.ordinary = np.setdiff1d(np.arange(vocab_size), self.special).astype(np.int32)
        p_mask, p_random, _ = replace
        self.thresholds = (p_mask, p_mask + p_random)

    def maskable(self, tokens: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
        return (segment_ids > 0) & ~np.isin(tokens, self.special)

    def apply(self, batch: dict[str, np.ndarray], row: int, key: tuple) -> None:
        """Mask batch[...][row] in place (see the module doc); `key` makes the draws."""
        rng = np.random.default_rng((*key, _SALT))
        tokens = batch["tokens"][row]
        length = tokens.shape[0]
        chosen = self.maskable(tokens, batch["segment_ids"][row]) & (rng.random(length) < self.rate)
        how = rng.random(length)
        randoms = self.ordinary[rng.integers(0, len(self.ordinary), length)]
        batch["targets"][row] = np.where(chosen, tokens, 0)
        batch["weights"][row] = chosen.astype(np.float32)
        low, high = self.thresholds
        corrupted = np.where(how < low, self.mask_id, np.where(how < high, randoms, tokens))
        batch["tokens"][row] = np.where(chosen, corrupted, tokens)


def make_masker(config, tokenizer) -> Masker | None:
    """The Masker that data config `config` asks for (None for the next-token objective)."""
    if config.objective != "mlm":
        return None
    return Masker(check_mask_token(tokenizer), tokenizer.special_ids, tokenizer.vocab_size,
                  config.mask_rate, config.mask_replace, config.seed)
