"""`InnerRule`: every choice of an in-context memory's learning rule, in one typed value (SPEC 3).

A model config builds one per kind of memory (`TitansConfig.rule()`, `HopeConfig.rules()`), the
mixer gets it, `MemoryBank` keeps it, and the op receives its fields as keyword arguments
(`InnerRule.op_kwargs`). The ops themselves keep plain keyword arguments, so they can be called
without the rest of the library.
"""

from __future__ import annotations

from dataclasses import dataclass

from hope.ops.checks import ACTIVATIONS, DGD_LAYERS, OBJECTIVES

KINDS = ("mlp", "linear")


@dataclass(frozen=True)
class InnerRule:
    """How one kind of memory learns in context.

    kind: "mlp" (`M(x) = x + W1 sigma(W2 x)`) or "linear" (`M(x) = W x`).
    expansion: hidden width E = expansion * head_dim of an MLP memory.
    activation: sigma of an MLP memory, "gelu" or "silu".
    chunk_size: C, the mini-batch (gradients at the chunk-start state) and the parallel block.
    dgd: Delta Gradient Descent (`alpha I - eta k k^T` on the key-reading layer), else plain GD.
    dgd_eta_max: the DGD factor's own ceiling, `alpha I - dgd_eta k k^T` with
        `dgd_eta = dgd_eta_max * sigmoid(.)` (the same gate as eta, so `dgd_eta = eta * dgd_eta_max /
        eta_max`); None: the token's eta. Above 1 the factor can have a negative eigenvalue
        `alpha - dgd_eta` along `k` (state tracking, SPEC 3's option); at most 2 minus the write's
        largest per-token rate under the l2 objective (see `write_eta_max`), so that with C = 1 the
        transition along `k`, `alpha - dgd_eta - eta_write`, stays in [-1, 1].
    dgd_layer: where an MLP memory takes the DGD factor: "key" (SPEC 3: `W2`, the layer reading the
        key) or "hidden" (`W1 (alpha I - eta zh zh^T)` on the unit hidden code of the key: the erase
        acts where the value is written; docs/DEVIATIONS.md, issue 14). Linear memories ignore it.
    dgd_gate: the DGD factor's rate has its own gate, `dgd_eta = dgd_eta_max * sigmoid(.)` from a
        map of its own in the layer (Titans: of x; self-modifying: of the eta memory's read), so the
        outer loop sets how much each token erases apart from how much it writes.
    momentum: off sets beta = 0 (the layer drops its beta gate).
    retention: off sets alpha = 1 (the layer drops its alpha gate).
    eta_max: eta = eta_max * sigmoid(.), in (0, 1).
    objective: inner loss, "l2" (`1/2 ||M(k) - v||^2`) or "dot" (`-<M(k), v>`).
    hidden_norm: stability switch: an MLP memory's W1 step is `eta / max(1, ||sigma(W2 k)||^2)`.
    mean_step: stability switch: a chunk steps by eta times its *mean* gradient (the write's rate
        is eta / C per token; the DGD factor keeps the token's rate).
    momentum_norm: stability switch: momentum as a running mean, `S = beta S - (1 - beta) eta g`.
    recompute: keep only chunk-start states for the backward and recompute each chunk there.
    anchor: retention and the DGD factor act on what the stream wrote, `W - W0`, not on `W`: a long
        stream decays toward the meta-learned initial state `W0` instead of toward zero (linear
        memories, l2 objective; `hope.layers.memory.MemoryBank` runs the same op on `W - W0` with
        targets `v - W0 k`, exact because the l2 gradient is `(W k - v) k^T`; docs/DEVIATIONS.md).
    """

    kind: str = "mlp"
    expansion: int = 2
    activation: str = "gelu"
    chunk_size: int = 16
    dgd: bool = True
    momentum: bool = True
    retention: bool = True
    eta_max: float = 0.5
    dgd_eta_max: float | None = None
    dgd_layer: str = "key"
    dgd_gate: bool = False
    objective: str = "l2"
    hidden_norm: bool = True
    mean_step: bool = True
    momentum_norm: bool = False
    recompute: bool = False
    anchor: bool = False

    def __post_init__(self) -> None:
        for name, value, choices in (("kind", self.kind, KINDS), ("activation", self.activation, ACTIVATIONS),
                                     ("objective", self.objective, OBJECTIVES), ("dgd_layer", self.dgd_layer, DGD_LAYERS)):
            if value not in choices:
                raise ValueError(f"InnerRule.{name} must be one of {choices}, got {value!r}")
        if self.anchor and (self.kind != "linear" or self.objective != "l2"):
            raise ValueError(f"InnerRule.anchor needs a linear memory and the l2 objective, got kind "
                             f"{self.kind!r}, objective {self.objective!r}")
        if int(self.chunk_size) < 1:
            raise ValueError(f"InnerRule.chunk_size must be >= 1, got {self.chunk_size}")
        if int(self.expansion) < 1:
            raise ValueError(f"InnerRule.expansion must be >= 1, got {self.expansion}")
        if not 0 < self.eta_max < 1:
            raise ValueError(f"InnerRule.eta_max must be in (0, 1), got {self.eta_max}")
        if self.dgd_eta_max is not None:
            top = 2.0 - (self.write_eta_max if self.objective == "l2" else 0.0)
            if not 0 < self.dgd_eta_max <= top:
                raise ValueError(
                    f"InnerRule.dgd_eta_max must be in (0, {top:g}] (2 minus the write's largest "
                    f"per-token rate eta_max{' / chunk_size' if self.mean_step else ''} = "
                    f"{self.write_eta_max:g} under the l2 objective), got {self.dgd_eta_max}")

    @property
    def write_eta_max(self) -> float:
        """The largest per-token rate of the gradient write: `eta_max / chunk_size` under `mean_step`."""
        return self.eta_max / (self.chunk_size if self.mean_step else 1)

    @property
    def dgd_max(self) -> float:
        """The DGD factor's ceiling: `dgd_eta_max`, else `eta_max`."""
        return self.eta_max if self.dgd_eta_max is None else self.dgd_eta_max

    def rates(self, eta, dgd_eta=None):
        """(the write's rate, the DGD factor's rate or None) of per-token `eta = eta_max * sigmoid(.)`.

        `mean_step` divides only the write's rate by the chunk size: the DGD factor is a per-token
        contraction of the current state and keeps the token's rate (times `dgd_eta_max / eta_max`),
        or, under `dgd_gate`, the gate's `dgd_eta` (which the layer passes). None: the op uses the
        write's rate (no DGD, or the same rate).
        """
        write = eta / self.chunk_size if self.mean_step else eta
        if not self.dgd:
            return write, None
        if self.dgd_gate:
            if dgd_eta is None:
                raise ValueError("InnerRule.dgd_gate: the layer must pass the DGD gate's rate dgd_eta")
            return write, dgd_eta
        factor = eta if self.dgd_eta_max is None else eta * (self.dgd_eta_max / self.eta_max)
        return write, (None if factor is write else factor)

    def op_kwargs(self, impl: str = "chunk") -> dict:
        """Keyword arguments of the memory op (`chunk_*_memory` / `naive_recurrent_*_memory`)."""
        kw = dict(chunk_size=self.chunk_size, dgd=self.dgd, objective=self.objective,
                  momentum_norm=self.momentum_norm)
        if self.kind == "mlp":
            kw.update(expansion=self.expansion, act=self.activation, hidden_norm=self.hidden_norm,
                      dgd_layer=self.dgd_layer)
        if impl == "chunk":
            kw["recompute"] = self.recompute
        return kw
