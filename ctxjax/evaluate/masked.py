"""What an encoder (a masked-language model, ModelConfig.causal=False) is evaluated on: it predicts hidden
tokens from both sides, so perplexity and generated answers do not apply.

- `mlm` (masked-token loss and accuracy by length, fixed targets): in each held-out document long enough for
  the longest length, a fixed set of tokens in its middle (each text token of the central `target_tokens`
  chosen at `mask_rate`, seeded by the document) is replaced by the mask token and scored by windows of
  growing length centred on it. The targets are identical at every length; only the context on both sides
  grows, so a falling loss says that the model uses it (the encoder analogue of fixed-target perplexity).

- `mlm_recall` (long-range key-value probe, accuracy by length x distance): a fact early in the text, a later
  mention of it with the value masked, filler in between,

      The code of amber-falcon is 48213. The grass is green. ... The code of amber-falcon is
      <mask><mask><mask><mask><mask>. The sky is blue. ...

  The filler says nothing about the value: only attention across the distance can fill the masks. A trial is
  correct when every masked token's top prediction is right. The mention sits at `depth` of the filler after
  the fact (0: right after it, 1: at the end), so the distance grows with the length; each cell records the
  mean distance in tokens.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ctxjax.data.retrieval_text import FILLER, NAMES, random_key
from ctxjax.evaluate.progress import Progress
from ctxjax.evaluate.retrieval import Completer, Trial, build_prompt
from ctxjax.evaluate.scoring import MaskedScorer

RECALL_FACT = "The code of {name} is {key}."
RECALL_MENTION = "The code of {name} is"


# ---- mlm: masked-token loss and accuracy by length, fixed targets ----

def fixed_masked_positions(doc: np.ndarray, width: int, rate: float, special_ids: Sequence[int],
                           rng: np.random.Generator) -> np.ndarray:
    """Indices into `doc` of its fixed targets: text tokens of the central `width` tokens, each chosen with
    probability `rate` (at least one)."""
    first = len(doc) // 2 - width // 2
    region = np.arange(first, first + width)
    text = region[~np.isin(doc[region], special_ids)]
    chosen = text[rng.random(len(text)) < rate]
    return chosen if len(chosen) or not len(text) else text[:1]


def centred_window(n_tokens: int, centre: int, length: int) -> int:
    """The start of the window of `length` tokens centred on `centre`, moved inside the document."""
    return int(min(max(centre - length // 2, 0), n_tokens - length))


def masked_by_length(docs: list[np.ndarray], lengths, scorer: MaskedScorer, *, mask_id: int,
                     special_ids: Sequence[int], mask_rate: float, target_tokens: int, max_windows: int,
                     seed: int = 0, too_long: dict[int, str] | None = None,
                     progress: Progress | None = None) -> dict:
    """{"by_length": {"<L>": {nll, ppl, accuracy, tokens, documents}}, "target_tokens", "mask_rate",
    "skipped": [...]} (see the module doc). At most `max_windows` documents are scored; a document must hold
    the longest usable length, so the targets are the same at every length."""
    progress = progress or Progress.off()
    too_long = dict(too_long or {})
    longest_doc = max((len(d) for d in docs), default=0)
    skipped, usable = [], []
    for length in sorted(lengths):
        if length in too_long:
            skipped.append({"length": length, "reason": too_long[length]})
        elif length > longest_doc:
            skipped.append({"length": length, "reason": f"longer than every held-out document (longest: "
                                                        f"{longest_doc} tokens)"})
        else:
            usable.append(length)
    results = {"by_length": {}, "skipped": skipped, "mask_rate": mask_rate}
    if not usable:
        return results
    width = min(target_tokens, usable[0])
    results["target_tokens"] = width
    chosen_docs = [d for d in docs if len(d) >= usable[-1]][:max_windows]
    targets = [fixed_masked_positions(d, width, mask_rate, special_ids,
                                      np.random.default_rng((seed, i, 0x4D4C)))
               for i, d in enumerate(chosen_docs)]
    for length in usable:
        rows, masked = [], []
        for doc, positions in zip(chosen_docs, targets):
            start = centred_window(len(doc), len(doc) // 2, length)
            rows.append(doc[start:start + length])
            masked.append(positions - start)
        originals = np.stack(rows)
        is_masked = np.zeros(originals.shape, bool)
        for row, positions in enumerate(masked):
            is_masked[row, positions] = True
        inputs = np.where(is_masked, mask_id, originals)
        bar = progress.bar(f"mlm {length}", total=len(rows), unit="window")
        nll, top = scorer(inputs, np.ones_like(inputs), originals)
        hit = top == originals
        bar.update(len(rows))
        bar.close()
        mean = float(nll[is_masked].mean())
        results["by_length"][str(length)] = {
            "nll": mean, "ppl": math.exp(min(mean, 700.0)), "accuracy": float(hit[is_masked].mean()),
            "tokens": int(is_masked.sum()), "documents": len(rows)}
    return results


# ---- mlm_recall: a key-value pair early, its value masked at a later mention ----

class RecallTask:
    def __init__(self, tokenizer, mask_id: int, key_digits: int = 5, add_bos: bool = True):
        self.tokenizer, self.mask_id, self.key_digits = tokenizer, mask_id, key_digits
        bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
        self.bos = bos
        self.filler = [tokenizer.encode(" " + s) for s in FILLER]
        self.distances: dict[tuple[int, float], list[int]] = {}  # (length, depth) -> filler tokens between

    def make_trial(self, length: int, depth: float, rng: np.random.RandomState) -> Trial:
        name, key = NAMES[rng.randint(len(NAMES))], random_key(rng, self.key_digits)
        encode = self.tokenizer.encode
        fact = encode(RECALL_FACT.format(name=name, key=key))
        # The value as it follows "is" in the fact; a token of only whitespace (its leading space) stays
        # shown.
        masked = [self.mask_id if self.tokenizer.decode([t]).strip() else t for t in encode(" " + key)]
        mention = encode(" " + RECALL_MENTION.format(name=name)) + masked + encode(".")
        prompt = build_prompt(self.bos + fact, self.filler, mention, [], length, depth)
        self.distances.setdefault((length, depth), []).append(prompt.filler_before)
        return Trial(prompt, key)

    def with_distances(self, grid: dict) -> dict:
        """run_grid's results with each cell's mean distance (filler tokens between fact and mention)."""
        for cell in grid["cells"]:
            cell["distance"] = float(np.mean(self.distances[(cell["length"], cell["depth"])]))
        return grid


def encoder_completer(scorer: MaskedScorer, tokenizer, mask_id: int, lengths: Sequence[int]) -> Completer:
    """A `Completer` for run_grid from an encoder: each prompt's masked tokens filled with the top prediction,
    decoded. Prompts are padded (segment 0, unseen by the text) to the smallest grid length that holds them:
    one shape per length."""
    sizes = sorted(lengths)

    def complete(prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        longest = max(map(len, prompts))
        width = next((n for n in sizes if n >= longest), longest)
        tokens = np.zeros((len(prompts), width), np.int32)
        segments = np.zeros_like(tokens)
        for row, prompt in enumerate(prompts):
            tokens[row, :len(prompt)], segments[row, :len(prompt)] = prompt, 1
        _, predicted = scorer(tokens, segments, tokens)
        return [tokenizer.decode(predicted[row][tokens[row] == mask_id]) for row in range(len(prompts))]

    return complete


def recall_correct(output: str, key: str) -> bool:
    """Every masked token right: the filled-in value is the key."""
    return output.strip() == key
