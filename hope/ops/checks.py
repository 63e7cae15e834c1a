"""Input checks of the memory ops, which heads they read, and the MLP memory's activations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

OBJECTIVES = ("l2", "dot")
ACTIVATIONS = ("gelu", "silu")

def check_inputs(q, k, v, eta, alpha, beta, chunk_size, objective):
    """Validate shapes and flags shared by every memory op; return (B, T, H, D).

    `q` may have fewer heads than `k` and `v` (`[B, T, Hq, D]`, `0 <= Hq <= H`): the op then reads
    only the last Hq heads (see `read_heads`).
    """
    if k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"k, v must share a [B, T, H, D] shape, got {tuple(k.shape)}, {tuple(v.shape)}")
    B, T, H, D = k.shape
    if q.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != D or q.shape[2] > H:
        raise ValueError(f"q must be [B, T, Hq, D] = [{B}, {T}, <= {H}, {D}] (reads of the last Hq "
                         f"heads), got {tuple(q.shape)}")
    for name, g in (("eta", eta), ("alpha", alpha), ("beta", beta)):
        if g.shape != (B, T, H):
            raise ValueError(f"{name} must be [B, T, H] = {(B, T, H)}, got {tuple(g.shape)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return B, T, H, D


def dgd_rate(dgd_eta, eta: torch.Tensor) -> torch.Tensor:
    """The DGD factor's rate `[B, T, H]`: `dgd_eta` when given (checked against `eta`'s shape), else
    `eta` (the factor `alpha I - eta k k^T` then uses the write's rate, SPEC 3)."""
    if dgd_eta is None:
        return eta
    if dgd_eta.shape != eta.shape:
        raise ValueError(f"dgd_eta must be [B, T, H] = {tuple(eta.shape)}, got {tuple(dgd_eta.shape)}")
    return dgd_eta


def read_heads(q: torch.Tensor, H: int) -> slice:
    """The heads an op reads: the last `Hq = q.shape[2]` of its `H` (all of them when Hq == H).

    Stacked memories whose reads are not needed (e.g. Hope's projection memories, which only
    learn) go first and cost no read at all.
    """
    return slice(H - q.shape[2], H)


def operator_queries(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Queries for every head, `[B, T, H, D]`, to build the chunk operators with: `q` on the read
    heads, `k` on the unread ones (their read rows are built, cheap at C x C, and never used)."""
    H = k.shape[2]
    if q.shape[2] in (0, H):                # nothing read (every head's queries are k), or all read
        return k if q.shape[2] == 0 else q
    return torch.cat([k[:, :, :read_heads(q, H).start], q], dim=2)


def check_groups(groups, q: torch.Tensor) -> int:
    """Validate the ops' `groups` (memories sharing one set of input heads): an int >= 1, and > 1
    only for an op that reads nothing (`q` with 0 heads)."""
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if groups > 1 and q.shape[2]:
        raise ValueError(f"groups > 1 (memories sharing their inputs) needs q with 0 heads, got {q.shape[2]}")
    return groups


def repeat_heads(groups: int, *xs, dim: int = 2):
    """Each tensor repeated `groups` times along its head axis `dim` (memory-major: head `g * H + h`
    is input head h), None kept; the inputs themselves when groups == 1."""
    if groups == 1:
        return xs
    return tuple(None if x is None else x.repeat(*([1] * dim), groups, *([1] * (x.dim() - dim - 1))) for x in xs)


DGD_LAYERS = ("key", "hidden")


def unit_code(z: torch.Tensor):
    """`(z / |z|, |z|)` over the last axis, with `|z| = sqrt(||z||^2 + 1e-12)` (smooth at 0): the
    unit keys of an MLP memory's output layer under `dgd_layer="hidden"`."""
    n = torch.sqrt(z.square().sum(-1, keepdim=True) + 1e-12)
    return z / n, n


def hidden_scale(z: torch.Tensor) -> torch.Tensor:
    """`max(1, ||z||^2)` over the last axis: the divisor of W1's step under `hidden_norm`."""
    return z.square().sum(-1).clamp(min=1.0)


def _gelu(h):
    return F.gelu(h)  # exact (erf) GELU


def _dgelu(h):
    cdf = 0.5 * (1.0 + torch.erf(h * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * h * h) * (1.0 / math.sqrt(2.0 * math.pi))
    return cdf + h * pdf


def _silu(h):
    return F.silu(h)


def _dsilu(h):
    s = torch.sigmoid(h)
    return s * (1.0 + h * (1.0 - s))


# module-level functions (not closures made per call), so a compiled chunk step sees the same
# function objects on every call and is not recompiled
_ACTIVATIONS = {"gelu": (_gelu, _dgelu), "silu": (_silu, _dsilu)}


def activation(name: str):
    """Return `(sigma, dsigma)` for the MLP memory; both are differentiable torch expressions."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
    return _ACTIVATIONS[name]
