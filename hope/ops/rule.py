"""`InnerRule`: every choice of an in-context memory's learning rule, in one typed value (SPEC 3).

A model config builds one per kind of memory (`TitansConfig.rule()`, `HopeConfig.rules()`), the
mixer gets it, `MemoryBank` keeps it, and the op receives its fields as keyword arguments
(`InnerRule.op_kwargs`). The ops themselves keep plain keyword arguments, so they can be called
without the rest of the library.
"""

from __future__ import annotations

from dataclasses import dataclass

from hope.ops.checks import ACTIVATIONS, OBJECTIVES

KINDS = ("mlp", "linear")


@dataclass(frozen=True)
class InnerRule:
    """How one kind of memory learns in context.

    kind: "mlp" (`M(x) = x + W1 sigma(W2 x)`) or "linear" (`M(x) = W x`).
    expansion: hidden width E = expansion * head_dim of an MLP memory.
    activation: sigma of an MLP memory, "gelu" or "silu".
    chunk_size: C, the mini-batch (gradients at the chunk-start state) and the parallel block.
    dgd: Delta Gradient Descent (`alpha I - eta k k^T` on the key-reading layer), else plain GD.
    momentum: off sets beta = 0 (the layer drops its beta gate).
    retention: off sets alpha = 1 (the layer drops its alpha gate).
    eta_max: eta = eta_max * sigmoid(.), in (0, 1).
    objective: inner loss, "l2" (`1/2 ||M(k) - v||^2`) or "dot" (`-<M(k), v>`).
    hidden_norm: stability switch: an MLP memory's W1 step is `eta / max(1, ||sigma(W2 k)||^2)`.
    mean_step: stability switch: a chunk steps by eta times its *mean* gradient (eta / C per token).
    momentum_norm: stability switch: momentum as a running mean, `S = beta S - (1 - beta) eta g`.
    recompute: keep only chunk-start states for the backward and recompute each chunk there.
    """

    kind: str = "mlp"
    expansion: int = 2
    activation: str = "gelu"
    chunk_size: int = 16
    dgd: bool = True
    momentum: bool = True
    retention: bool = True
    eta_max: float = 0.5
    objective: str = "l2"
    hidden_norm: bool = True
    mean_step: bool = True
    momentum_norm: bool = False
    recompute: bool = False

    def __post_init__(self) -> None:
        for name, value, choices in (("kind", self.kind, KINDS), ("activation", self.activation, ACTIVATIONS),
                                     ("objective", self.objective, OBJECTIVES)):
            if value not in choices:
                raise ValueError(f"InnerRule.{name} must be one of {choices}, got {value!r}")
        if int(self.chunk_size) < 1:
            raise ValueError(f"InnerRule.chunk_size must be >= 1, got {self.chunk_size}")
        if int(self.expansion) < 1:
            raise ValueError(f"InnerRule.expansion must be >= 1, got {self.expansion}")
        if not 0 < self.eta_max < 1:
            raise ValueError(f"InnerRule.eta_max must be in (0, 1), got {self.eta_max}")

    def op_kwargs(self, impl: str = "chunk") -> dict:
        """Keyword arguments of the memory op (`chunk_*_memory` / `naive_recurrent_*_memory`)."""
        kw = dict(chunk_size=self.chunk_size, dgd=self.dgd, objective=self.objective,
                  momentum_norm=self.momentum_norm)
        if self.kind == "mlp":
            kw.update(expansion=self.expansion, act=self.activation, hidden_norm=self.hidden_norm)
        if impl == "chunk":
            kw["recompute"] = self.recompute
        return kw
