"""The fourteen predictions of reference/papers.md §10.5, each judged from the study's numbers by an explicit
rule (orderings and ratios, as the protocol asks, not absolute values): reproduced, partly, not reproduced,
or not measured when an arm it needs is missing. Every verdict carries the numbers it was decided on."""

from __future__ import annotations

import dataclasses
import json
import math
import os

# Differences within this relative margin count as "about equal" (a tiny model, a few hundred steps).
CLOSE = 0.05


@dataclasses.dataclass
class Verdict:
    number: int
    claim: str
    verdict: str
    evidence: str


class Numbers:
    """Read access to the study's results: `done` is run_study's {arm: {"arm", "cost", "results"}}."""

    def __init__(self, done: dict, base_len: int, out: str):
        self.done, self.L, self.out = done, base_len, out

    def has(self, *arms: str) -> bool:
        return all(a in self.done for a in arms)

    def _results(self, arm: str, length: int | None = None) -> dict:
        results = self.done[arm]["results"]
        return results["all"] if "all" in results else results.get(length, {})  # {}: not evaluated there

    def ppl(self, arm: str, n: int, method: str = "fixed_target", scaled_for: int | None = None) -> float:
        """Perplexity at context n (zero-shot arms: the model scaled for `scaled_for`, default n)."""
        entry = self._results(arm, scaled_for or n).get("ppl", {}).get(method, {}).get(str(n))
        return entry["ppl"] if entry else math.nan

    def passkey(self, arm: str, n: int, task: str = "passkey", depths=None) -> float:
        cells = [c for c in self._results(arm, n).get(task, {}).get("cells", [])
                 if c["length"] == n and (depths is None or c["depth"] in depths)]
        return sum(c["accuracy"] for c in cells) / len(cells) if cells else math.nan

    def position_jump(self, arm: str, n: int) -> float:
        """Mean loss of positions past L minus before it, in a window of n (the per-position curve)."""
        curve = self._results(arm, n).get("ppl", {}).get("per_position", {}).get(str(n))
        if not curve:
            return math.nan
        inside = [v for s, v in zip(curve["starts"], curve["nll"]) if s < self.L]
        beyond = [v for s, v in zip(curve["starts"], curve["nll"]) if s >= self.L]
        return sum(beyond) / len(beyond) - sum(inside) / len(inside) if inside and beyond else math.nan

    def cost(self, arm: str, key: str) -> float:
        return self.done[arm]["cost"].get(key, math.nan)

    def training_log(self, arm: str) -> list[dict]:
        path = os.path.join(self.out, arm, "metrics.jsonl")
        if not os.path.exists(path):
            return []
        return [r for r in map(json.loads, open(path)) if "loss" in r]

    def spikes(self, arm: str) -> int:
        """Logged intervals whose loss rose over the previous one by more than 0.1 nats."""
        losses = [r["loss"] for r in self.training_log(arm)]
        return sum(b - a > 0.1 for a, b in zip(losses, losses[1:]))


def _judge(conditions: list[bool | None]) -> str:
    """reproduced / partly / not reproduced from the conditions that could be checked (None: a number is
    missing, said in the verdict)."""
    held = [c for c in conditions if c is not None]
    if not held:
        return "not measured"
    verdict = "reproduced" if all(held) else "partly" if any(held) else "not reproduced"
    return verdict + (" (some numbers missing)" if len(held) < len(conditions) else "")


def fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def si(x: float) -> str:
    """A count with an SI prefix: 3.8T, 120G, 4.9M."""
    if x is None or math.isnan(x):
        return "n/a"
    for value, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= value:
            return f"{x / value:.3g}{prefix}"
    return f"{x:.3g}"


def pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.0f}%"


def _lt(a: float, b: float) -> bool | None:
    return None if math.isnan(a) or math.isnan(b) else a < b


def _close(a: float, b: float, margin: float = CLOSE) -> bool | None:
    return None if math.isnan(a) or math.isnan(b) else abs(a - b) <= margin * b


def verdicts(n: Numbers) -> list[Verdict]:
    L, X = n.L, 4 * n.L
    out = []

    def add(number, claim, needs, judge):
        if not n.has(*needs):
            out.append(Verdict(number, claim, "not measured", f"needs arms {', '.join(needs)}"))
            return
        conditions, evidence = judge()
        out.append(Verdict(number, claim, _judge(conditions), evidence))

    def p1():
        ratio = n.ppl("rope", 2 * L) / n.ppl("rope", L)
        jump = n.position_jump("rope", 2 * L)
        return ([ratio > 1.5 or jump > 0.5], f"fixed-target ppl {fmt(n.ppl('rope', L))} at L -> "
                f"{fmt(n.ppl('rope', 2 * L))} at 2L (x{fmt(ratio, 2)}); loss past position L {fmt(jump, 2)} "
                "nats above the loss before it (window 2L)")
    add(1, "RoPE direct extrapolation breaks just past L", ["rope"], p1)

    def p2():
        zs, base = n.ppl("zs-pi", X), n.ppl("rope", L)
        ft_long, ft_short = n.ppl("ft-pi", X), n.ppl("ft-pi", L)
        return ([math.isfinite(zs) and zs > base, _lt(ft_long, ft_short)],
                f"PI zero-shot at 4L {fmt(zs)} vs base at L {fmt(base)}; after PI-FT {fmt(ft_long)} at 4L vs "
                f"{fmt(ft_short)} at L")
    add(2, "PI zero-shot degrades moderately; PI fine-tuning fixes it and uses the longer context",
        ["rope", "zs-pi", "ft-pi"], p2)

    def p3():
        direct, pi = n.ppl("ft-direct", X), n.ppl("ft-pi", X)
        key_direct = [n.passkey("ft-direct", m) for m in (2 * L, X)]
        key_pi = [n.passkey("ft-pi", m) for m in (2 * L, X)]
        return ([_lt(pi, direct), _lt(sum(key_direct), sum(key_pi))],
                f"fixed-target ppl at 4L: no scaling {fmt(direct)}, PI {fmt(pi)}; passkey at 2L/4L: no "
                f"scaling {'/'.join(map(pct, key_direct))}, PI {'/'.join(map(pct, key_pi))}")
    add(3, "Fine-tuning without scaling adapts slowly; its effective context barely grows",
        ["ft-direct", "ft-pi"], p3)

    def p4():
        rows, conditions = [], []
        for m in (2 * L, X):
            pi, ntk, dyn = (n.ppl(a, m) for a in ("zs-pi", "zs-ntk", "zs-dynamic"))
            conditions += [_lt(ntk, pi), _lt(dyn, pi)]
            rows.append(f"{m // L}x: PI {fmt(pi)}, NTK {fmt(ntk)}, dynamic {fmt(dyn)}")
        return conditions, "zero-shot fixed-target ppl " + "; ".join(rows)
    add(4, "NTK and dynamic NTK beat PI without fine-tuning", ["zs-pi", "zs-ntk", "zs-dynamic"], p4)

    def p5():
        pi, yarn, ntk, short = (n.ppl(a, X) for a in ("ft-pi", "ft-yarn", "ft-ntk", "ft-yarn-40"))
        return ([_close(yarn, pi), _lt(max(pi, yarn), ntk), _close(short, pi)],
                f"fixed-target ppl at 4L after fine-tuning: PI {fmt(pi)}, YaRN {fmt(yarn)}, NTK {fmt(ntk)}, "
                f"YaRN with 40% of the steps {fmt(short)} (about equal: within {CLOSE:.0%})")
    add(5, "After fine-tuning YaRN ~ PI < NTK, and YaRN is sample-efficient",
        ["ft-pi", "ft-yarn", "ft-ntk", "ft-yarn-40"], p5)

    def p6():
        pi, yarn, ntk = (n.ppl(a, 2 * X) for a in ("ft-pi", "ft-yarn", "ft-ntk"))
        return ([_lt(yarn, pi), _lt(ntk, pi)],
                f"fixed-target ppl at 8L (past the fine-tuned 4L): PI {fmt(pi)}, YaRN {fmt(yarn)}, "
                f"NTK {fmt(ntk)}")
    add(6, "YaRN and NTK degrade more slowly than PI past the fine-tuned length",
        ["ft-pi", "ft-yarn", "ft-ntk"], p6)

    def p7():
        lengths = [L * 2 ** k for k in range(1, 5)]
        pairs = [(n.ppl("zs-yarn", m), n.ppl("zs-yarn-notemp", m)) for m in lengths]
        wins = [_lt(a, b) for a, b in pairs]
        verdict = [sum(w for w in wins if w) > len(lengths) / 2] if None not in wins else [None]
        return (verdict if not all(wins) else [True],
                "zero-shot fixed-target ppl with / without the temperature: "
                + ", ".join(f"{m // L}x {fmt(a)}/{fmt(b)}" for m, (a, b) in zip(lengths, pairs)))
    add(7, "YaRN's temperature 0.1 ln s + 1 helps", ["zs-yarn", "zs-yarn-notemp"], p7)

    def p8():
        non = [n.ppl("alibi", m, "nonoverlapping") for m in (L, X)]
        fixed = [n.ppl("alibi", m) for m in (L, X)]
        key = n.passkey("alibi", X)
        return ([non[1] <= non[0] * (1 + CLOSE), _close(fixed[1], fixed[0]), key < 0.2],
                f"non-overlapping ppl L -> 4L {fmt(non[0])} -> {fmt(non[1])}; fixed-target {fmt(fixed[0])} "
                f"-> {fmt(fixed[1])}; passkey at 4L {pct(key)} (at L {pct(n.passkey('alibi', L))})")
    add(8, "ALiBi: flat perplexity past L, but no use of the extra context", ["alibi"], p8)

    def p9():
        def breaks(arm):
            base = n.ppl(arm, L)
            return next((m for m in (L * 2 ** k for k in range(1, 5)) if n.ppl(arm, m) > 1.5 * base), None)
        rope, nope = breaks("rope"), breaks("nope")
        later = None if rope is None else (nope is None or nope > rope)
        return ([later, nope is not None],
                f"first length where fixed-target ppl exceeds 1.5x its value at L: RoPE {rope or 'none'}, "
                f"NoPE {nope or 'none'}")
    add(9, "NoPE generalizes a little further than RoPE, then fails", ["rope", "nope"], p9)

    def p10():
        pose, pi = n.ppl("ft-pose", X), n.ppl("ft-pi", X)
        flops = n.cost("ft-pose", "flops"), n.cost("ft-pi", "flops")
        return ([_close(pose, pi), _lt(*flops)],
                f"fixed-target ppl at 4L: PoSE {fmt(pose)}, PI {fmt(pi)}; training FLOPs PoSE "
                f"{si(flops[0])} vs PI {si(flops[1])}")
    add(10, "PoSE (short-window training) ~ full-length fine-tuning, for less compute",
        ["ft-pose", "ft-pi"], p10)

    def p11():
        abf, pi = n.ppl("ft-abf", X), n.ppl("ft-pi", X)
        far = [(n.passkey("ft-abf", m), n.passkey("ft-pi", m)) for m in (2 * L, X)]
        return ([abf <= pi * (1 + CLOSE), sum(a for a, _ in far) >= sum(b for _, b in far)],
                f"fixed-target ppl at 4L: ABF {fmt(abf)}, PI {fmt(pi)}; passkey at 2L/4L: ABF "
                f"{'/'.join(pct(a) for a, _ in far)}, PI {'/'.join(pct(b) for _, b in far)}")
    add(11, "ABF is as good as PI in continued pretraining, with better long-distance retrieval",
        ["ft-abf", "ft-pi"], p11)

    def p12():
        scratch = n.ppl("scratch-4x", X)
        rows, conditions = [], []
        for arm in ("staged-20", "staged-40"):
            staged = n.ppl(arm, X)
            cheaper = _lt(n.cost(arm, "flops"), n.cost("scratch-4x", "flops"))
            conditions.append(None if cheaper is None else bool(staged <= scratch * (1 + CLOSE) and cheaper))
            rows.append(f"{arm} {fmt(staged)} at {si(n.cost(arm, 'flops'))} FLOPs")
        return conditions, (f"fixed-target ppl at 4L: scratch {fmt(scratch)} at "
                            f"{si(n.cost('scratch-4x', 'flops'))} FLOPs; " + "; ".join(rows))
    add(12, "Staged growth saves compute at no loss", ["scratch-4x", "staged-20", "staged-40"], p12)

    def p13():
        spikes = n.spikes("lr4x"), n.spikes("lr4x-slw")
        final = n.cost("lr4x", "final_loss"), n.cost("lr4x-slw", "final_loss")
        return ([spikes[1] < spikes[0], final[1] <= final[0]],
                f"loss spikes (> 0.1 nats between logs): without SLW {spikes[0]}, with {spikes[1]}; final "
                f"loss {fmt(final[0], 3)} vs {fmt(final[1], 3)}")
    add(13, "Sequence-length warm-up stabilizes an aggressive learning rate", ["lr4x", "lr4x-slw"], p13)

    def p14():
        at_l, at_x = n.passkey("ft-yarn", L), n.passkey("ft-yarn", X)
        early = n.passkey("ft-yarn", X, depths=(0.0, 0.25))
        late = n.passkey("ft-yarn", X, depths=(0.75, 1.0))
        return ([_lt(at_x, at_l), _lt(early, late)],
                f"YaRN-fine-tuned model (trained at 4L) passkey at L {pct(at_l)}, at 4L {pct(at_x)}; at 4L "
                f"with the key early (depth 0-25%) {pct(early)}, late (75-100%) {pct(late)}")
    add(14, "The effective context is shorter than the trained context", ["ft-yarn"], p14)
    return out
