"""Dynamic evaluation (Krause et al. 2018, 2019): a trained model keeps training on the text it is
evaluated on, one gradient step after every window it has scored. It is the classical anchor for a
model that "keeps learning from what it reads": any model gets it (Transformer++ included), and a
Continuum Memory System has to beat it to earn its place.

    nll = dynamic_nll(model, ids, window=128, lr=1e-4, params="all")   # per-token losses, as independent_nll

The stream `ids` is cut into `streams` contiguous parts read side by side, each in consecutive
windows of `window` predictions from a fresh in-context state (the windows of `independent_nll`).
Every window is scored first, then the chosen parameters take one SGD step on its mean loss (over
the parts): `theta <- theta - lr * grad` (Krause et al.'s plain SGD rule; `decay` adds their pull
towards the trained weights, `theta <- theta + decay * (theta_0 - theta)`). The model's own
weights are restored afterwards. `tune_lr` picks `lr` on a validation stream, as Krause et al. do.
"""

from __future__ import annotations

import math

import torch

from hope.config import parse_groups, trainable_group
from hope.errors import HopeError
from hope.eval.scoring import _nll

DEFAULT_LRS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def chosen_parameters(model, params: str) -> list[torch.nn.Parameter]:
    """`all`, or a comma-separated subset of `hope.config.TRAINABLE` (`cms`: the CMS levels /
    Transformer++'s MLPs; `mixer`, `norm`, `embed`)."""
    named = list(model.named_parameters())
    groups = parse_groups(params, "dynamic evaluation parameters")
    if groups is None:
        return [p for _, p in named]
    chosen = [p for n, p in named if trainable_group(n) in groups]
    if not chosen:
        raise HopeError(f"the model has no parameters in {params!r}")
    return chosen


def dynamic_nll(model, ids: torch.Tensor, window: int, lr: float, params: str = "all", streams: int = 1,
                decay: float = 0.0, restore: bool = True) -> torch.Tensor:
    """Per-token losses [N - 1] of the stream `ids` [N] under dynamic evaluation (module docstring).
    The last `(N - 1) mod (streams * window)` targets, which do not fill a window of every part, are
    scored without a step after them. With `restore` (default) the model's weights are put back."""
    if ids.numel() < 2 or window < 1 or streams < 1:
        raise HopeError("dynamic evaluation needs at least 2 tokens, a window >= 1 and streams >= 1")
    if lr < 0 or not 0 <= decay < 1:
        raise HopeError(f"dynamic evaluation needs lr >= 0 and decay in [0, 1); got {lr}, {decay}")
    device = next(model.parameters()).device
    chosen = chosen_parameters(model, params)
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start = [p.detach().clone() for p in chosen] if decay else [None] * len(chosen)  # decay's anchor
    flags = [p.requires_grad for p in model.parameters()]
    ids_set = {id(p) for p in chosen}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids_set)
    was = model.training
    model.eval()
    n = ids.numel() - 1
    per_part = n // streams
    steps = per_part // window
    # part s holds targets s*per_part .. (s+1)*per_part - 1; step i reads window i of every part
    out = torch.empty(n, dtype=torch.float64)
    try:
        for i in range(steps):
            rows = torch.stack([ids[s * per_part + i * window: s * per_part + (i + 1) * window + 1]
                                for s in range(streams)]).to(device)
            logits, _ = model(rows[:, :-1], None)
            nll = _nll(logits, rows[:, 1:])                               # [streams, window]
            for s in range(streams):
                out[s * per_part + i * window: s * per_part + (i + 1) * window] = nll[s].detach().cpu()
            if lr > 0:
                grads = torch.autograd.grad(nll.mean(), chosen, allow_unused=True)
                with torch.no_grad():
                    for p, g, p0 in zip(chosen, grads, start):
                        if g is not None:
                            p.add_(g, alpha=-lr)
                        if decay:
                            p.add_(p0 - p, alpha=decay)
        # what no step covers (each part's tail shorter than a window, and the targets past
        # streams * per_part) is scored after the last step, in windows, with no step after it
        tails = [(s * per_part + steps * window, (s + 1) * per_part) for s in range(streams)]
        tails.append((streams * per_part, n))
        for lo, hi in tails:
            for a in range(lo, hi, window):
                b = min(hi, a + window)
                x = ids[a:b + 1][None].to(device)
                with torch.no_grad():
                    logits, _ = model(x[:, :-1], None)
                out[a:b] = _nll(logits, x[:, 1:])[0].cpu()
    finally:
        if restore:
            model.load_state_dict(saved)
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was)
    return out


def best_on_grid(values, loss_of, log=print, label: str = "value") -> tuple[float, dict]:
    """The value of `values` with the lowest `loss_of(value)` (a non-finite loss counts as infinite);
    returns (value, {value: loss}), and warns when the best is the largest value tried."""
    losses = {}
    for v in values:
        loss = float(loss_of(v))
        losses[v] = loss if math.isfinite(loss) else float("inf")
        log(f"  {label} {v:g}: validation loss {loss:.4f}")
    best = min(losses, key=losses.get)
    if best == max(values):
        log(f"  warning: the best {label} is the largest tried ({best:g}); try larger ones")
    return best, losses


def tune_lr(model, ids: torch.Tensor, window: int, params: str = "all", streams: int = 1,
            lrs: tuple[float, ...] = DEFAULT_LRS, log=print) -> tuple[float, dict]:
    """The learning rate of `lrs` (and 0: no adaptation) with the lowest mean loss on the validation
    stream `ids`; returns (lr, {lr: loss})."""
    return best_on_grid((0.0, *lrs), lambda lr: dynamic_nll(model, ids, window, lr, params, streams).double().mean(),
                        log, "dynamic lr")
