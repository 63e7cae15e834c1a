"""The metrics of the continual-learning literature, on a result matrix `R`.

`R[i, j]` is the score on task (domain) j after training stage i, for `i, j = 0 .. T-1`. Scores are
accuracies (`higher_is_better=True`) or losses (`False`, nats per token). Entries that are not
defined (a class-incremental task scored before its labels were seen) are NaN. Every metric is
signed so that a *negative* backward transfer and a *positive* forgetting mean the model forgot,
for accuracies and losses alike:

* `average(R)`: ACC, the mean final score over all tasks, `mean_j R[T-1, j]` (Lopez-Paz & Ranzato 2017).
* `backward_transfer(R)`: BWT, `mean_{j < T-1} (R[T-1, j] - R[j, j])` for accuracies; for losses the
  sign flips, `mean_j (R[j, j] - R[T-1, j])`, so a loss that grew back is a negative transfer.
* `forgetting(R)`: Chaudhry et al. 2018, the mean over earlier tasks of the best score ever reached
  on the task before the last stage minus its final score, `mean_{j < T-1} max_{l < T-1} R[l, j] - R[T-1, j]`
  (losses: `R[T-1, j] - min_{l < T-1} R[l, j]`). Negative only when the final score of every earlier
  task is its best yet (a model still improving on old tasks).
* `learning_score(R)`: the mean score of each task just after it was learned, `mean_j R[j, j]`
  (Riemer et al. 2019's "learning accuracy"): how well the model learns a new task at all, the
  plasticity that BWT and forgetting are measured against (a model that learns nothing forgets
  nothing).
* `forward_transfer(R, baseline)`: FWT, `mean_{j >= 1} (R[j-1, j] - b_j)` with `b_j` the score of
  the model before any stage (a fresh or pretrained model; losses: `b_j - R[j-1, j]`). Only defined
  when such a baseline exists and task j can be scored before it is trained (language modelling);
  None otherwise.
"""

from __future__ import annotations

import math

import numpy as np

from hope.errors import HopeError


def _matrix(R) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] < 1:
        raise HopeError(f"a result matrix must be square [stages, tasks] with one stage per task; got shape {R.shape}")
    return R


def _sign(higher_is_better: bool) -> float:
    return 1.0 if higher_is_better else -1.0


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else None


def average(R, higher_is_better: bool = True) -> float:
    """ACC: mean of the last row of R (NaN entries skipped). `higher_is_better` is accepted for
    symmetry with the other metrics; the mean needs no sign."""
    R = _matrix(R)
    value = _mean(list(R[-1]))
    if value is None:
        raise HopeError("the last row of the result matrix has no defined entry")
    return value


def backward_transfer(R, higher_is_better: bool = True) -> float | None:
    """BWT: how the final scores of earlier tasks compare with their scores just after they were
    learned; negative means forgetting. None with a single task."""
    R = _matrix(R)
    T = R.shape[0]
    s = _sign(higher_is_better)
    return _mean([s * (R[T - 1, j] - R[j, j]) for j in range(T - 1)])


def forgetting(R, higher_is_better: bool = True) -> float | None:
    """Chaudhry forgetting: mean over tasks j < T-1 of (best score on j at any stage before the last)
    minus (final score on j), with scores signed so that better is larger. None with a single task."""
    R = _matrix(R)
    T = R.shape[0]
    s = _sign(higher_is_better)
    out = []
    for j in range(T - 1):
        earlier = [s * R[l, j] for l in range(T - 1) if not math.isnan(R[l, j])]
        if earlier and not math.isnan(R[T - 1, j]):
            out.append(max(earlier) - s * R[T - 1, j])
    return _mean(out)


def learning_score(R) -> float | None:
    """Mean of the diagonal `R[j, j]` (NaN entries skipped): each task's score just after it was
    learned. None when no diagonal entry is defined."""
    R = _matrix(R)
    return _mean([R[j, j] for j in range(min(R.shape)) if not math.isnan(R[j, j])])


def forward_transfer(R, baseline, higher_is_better: bool = True) -> float | None:
    """FWT: score on task j after the stages before it, relative to the model before any stage
    (`baseline[j]`); positive means earlier stages helped. None when it is not defined (no baseline,
    a single task, or task j cannot be scored before it is trained)."""
    R = _matrix(R)
    if baseline is None:
        return None
    b = np.asarray(baseline, dtype=np.float64)
    if b.shape != (R.shape[1],):
        raise HopeError(f"the baseline must have one score per task ({R.shape[1]}); got shape {b.shape}")
    s = _sign(higher_is_better)
    return _mean([s * (R[j - 1, j] - b[j]) for j in range(1, R.shape[0])])


def summary(R, higher_is_better: bool = True, baseline=None) -> dict:
    """The metrics of one run: {"acc", "bwt", "forgetting", "fwt", "learning"} (None where undefined)."""
    return {"acc": average(R, higher_is_better), "bwt": backward_transfer(R, higher_is_better),
            "forgetting": forgetting(R, higher_is_better),
            "fwt": forward_transfer(R, baseline, higher_is_better), "learning": learning_score(R)}
