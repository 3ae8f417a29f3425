"""MIN and MAX: a rank-targeted exponential mechanism over the quantile histogram.

A DP minimum cannot be the minimum itself: one unit can move it anywhere. Released as
"quantile 0", every candidate below the minimum scores the same, so the answer is
uniform between the lower bound and the minimum. Instead MIN(x) estimates the t-th
smallest value for a small rank target t that depends only on the noise scale and the
number of candidates, never on the data:

- candidate j stands for its cell [c_j, c_{j+1}) and covers the ranks a_j + 1 .. b_j,
  where a_j = #(x < c_j) and b_j = #(x < c_{j+1}) (the last cell reaches the upper
  bound);
- its score is the distance from t to those ranks, max(0, a_j + 1 - t, t - b_j): zero
  exactly for the cell holding the t-th smallest value. One unit moves a_j and b_j by at
  most max_rows, so the score's sensitivity is max_rows (as for a quantile);
- OpenDP's report-noisy-max picks the candidate with the noisily smallest score.

A cell entirely below the minimum (b_j = 0) scores t, and so does every cell with at
least 2t values below it. With OpenDP's report-noisy-max at `scale`, a candidate whose
score exceeds the best one by t beats it with probability at most exp(-t / scale) (the
Gumbel noise of the exponential mechanism; half that with the exponential noise OpenDP
uses under pure DP). A union bound over K
candidates gives P(score of the pick >= t) <= K exp(-t / scale), so

    t = ceil(scale * ln(K / FAILURE))

makes the released MIN m satisfy x_(1) - stride < m <= x_(2t) with probability at least
1 - FAILURE whenever the group has at least t values (some cell then scores 0). A group
with fewer values gets an answer above most of them (a group with none: uniform over the
candidates, still within the bounds). MAX(x) is the same mechanism on -x: the rewriter
spaces its candidates down from the upper bound (rewriter/rewrite.py `_extreme_spec`).
"""

from __future__ import annotations

import math

from accounting.mechanisms import I64_SAFE, NoiseSpec
from rewriter.plan import AggFunc, AggregateSpec

# The probability that the released cell lies wholly below the minimum or has 2t or more
# values below it (the same 95% coverage as the NOTICE's noise bounds).
FAILURE = 0.05


def rank_target(candidates: int, scale: float) -> int:
    """The rank t a MIN/MAX release aims at: ceil(scale * ln(candidates / FAILURE))."""
    t = math.ceil(scale * math.log(max(candidates, 1) / FAILURE))
    return min(max(1, t), I64_SAFE)


def extreme_scores(spec: AggregateSpec, hist: dict[int, int], target: int) -> list[int]:
    """Integer scores max(0, a_j + 1 - t, t - b_j) of every candidate j (lower is better).

    Cell 2j of `hist` holds the values at candidate j, cell 2j + 1 those strictly between
    it and the next one (for MAX the candidates run down from the upper bound, so the
    ranks counted are ranks from the top).
    """
    n_cells = 2 * spec.candidates
    counts = [0] * n_cells
    for cell, n in hist.items():
        if 0 <= cell < n_cells:
            counts[cell] += n
    scores = []
    before = 0
    for j in range(spec.candidates):
        inside = counts[2 * j] + counts[2 * j + 1]
        scores.append(max(0, before + 1 - target, target - before - inside))
        before += inside
    return scores


def candidate_steps(spec: AggregateSpec, index: int) -> int:
    """The released value of candidate `index`, in fixed-point steps."""
    if spec.func == AggFunc.MAX:
        return max(spec.upper - index * spec.stride, spec.lower)
    return min(spec.lower + index * spec.stride, spec.upper)


def extreme_bound_text(spec: AggregateSpec, noise: NoiseSpec, stride: str) -> str:
    """What a released MIN/MAX estimates, and its 95% rank bound, for EXPLAIN and NOTICEs.

    `stride` is the candidate spacing in the value's units; with a spacing of one step
    the released value is never beyond the true extreme.
    """
    t = rank_target(spec.candidates, noise.scale)
    if spec.func == AggFunc.MAX:
        slack = "" if spec.stride == 1 else f" + {stride}"
        within = f"[{ordinal(2 * t)} largest, largest{slack}]"
        what = "largest"
    else:
        slack = "" if spec.stride == 1 else f" - {stride}"
        within = f"[smallest{slack}, {ordinal(2 * t)} smallest]"
        what = "smallest"
    return (f"within {within} (DP estimate of the {ordinal(t)} {what} value, rank target "
            f"t = {t}, for groups of at least {t} values)")  # fmt: skip


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 21st..."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
