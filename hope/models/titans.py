"""Titans (LMM) language model (SPEC 4.1, 4.4): a neural-memory sequence mixer and a SwiGLU MLP per block.

The mixer's per-head MLP memories learn in context with mini-batch gradient descent, momentum and
retention (no DGD, targets v); their initial states are meta-learned. The state holds the memories,
momenta and convolution caches of every layer, so a sequence can be read in pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

from hope.config import check_model_shape
from hope.errors import HopeError
from hope.layers.cms import CMS
from hope.layers.titans import TitansMixer
from hope.models.common import CMSLanguageModel, MixerCMSBlock
from hope.ops.rule import InnerRule


@dataclass
class TitansConfig:
    vocab_size: int = 8192  # set from the tokenizer when a run starts
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 4
    ffn_hidden: int = 384  # SwiGLU width (smaller than Transformer++'s to match parameter counts)
    memory: str = "mlp"  # mlp | linear
    expansion: int = 2  # hidden width of the MLP memory = expansion * head_dim
    chunk_size: int = 16  # mini-batch of the inner rule (gradients at the chunk-start state)
    dgd: bool = False  # Titans' rule: no DGD
    momentum: bool = True
    retention: bool = True
    eta_max: float = 0.5  # eta = eta_max * sigmoid(.)
    dgd_layer: str = "key"  # MLP memories with dgd: the factor on W2 (key, SPEC) or on W1's hidden codes (hidden)
    dgd_gate: bool = False  # with dgd: the DGD factor's rate from a gate of its own (not eta's)
    dgd_bias: float = -2.0  # initial bias of that gate (dgd_eta = dgd_eta_max * sigmoid(.))
    dgd_eta_max: float | None = None  # with dgd: the DGD factor's ceiling (None: eta's; > 1: negative eigenvalues)
    activation: str = "gelu"  # sigma of the MLP memory: gelu | silu
    hidden_norm: bool = True  # MLP memories: W1 step / max(1, ||sigma(W2 k)||^2) (docs/DEVIATIONS.md)
    mean_step: bool = True  # a chunk of the inner rule steps by eta x its mean gradient (docs/DEVIATIONS.md)
    momentum_norm: bool = False  # momentum as a running mean of the inner gradients (on in Hope; docs/DEVIATIONS.md)
    recompute: bool = False  # memory ops keep chunk-start states only and recompute chunks in the backward
    anchor: bool = False  # linear memories: retention decays W - W0 (toward the meta-learned init), not W
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    init_std: float = 0.02

    def rule(self) -> InnerRule:
        """The memory's inner rule, from the flat fields above."""
        return InnerRule(kind=self.memory, expansion=self.expansion, activation=self.activation,
                         chunk_size=self.chunk_size, dgd=self.dgd, momentum=self.momentum,
                         retention=self.retention, eta_max=self.eta_max, dgd_eta_max=self.dgd_eta_max,
                         dgd_gate=self.dgd_gate, dgd_layer=self.dgd_layer, hidden_norm=self.hidden_norm,
                         mean_step=self.mean_step, momentum_norm=self.momentum_norm,
                         recompute=self.recompute, anchor=self.anchor and self.memory == "linear")

    def __post_init__(self) -> None:
        check_mixer_fields(self)
        if self.ffn_hidden <= 0:
            raise HopeError(f"model.ffn_hidden must be > 0, got {self.ffn_hidden}")


def check_mixer_fields(cfg) -> None:
    """Checks shared by the configs of models with a Titans-family mixer."""
    check_model_shape(cfg, "expansion")
    for name in ("memory", "proj_memory"):
        if getattr(cfg, name, "mlp") not in ("mlp", "linear"):
            raise HopeError(f"model.{name} must be mlp or linear; got {getattr(cfg, name)!r}")
    for name in ("chunk_size", "chunk_proj", "chunk_mem"):
        if getattr(cfg, name, 1) <= 0:
            raise HopeError(f"model.{name} must be > 0, got {getattr(cfg, name)}")
    if cfg.activation not in ("gelu", "silu"):
        raise HopeError(f"model.activation must be gelu or silu; got {cfg.activation!r}")
    if not 0 < cfg.eta_max < 1:
        raise HopeError(f"model.eta_max must be in (0, 1) (the inner step eta * ||k||^2 must stay below 1); got {cfg.eta_max}")
    try:
        cfg.rules() if hasattr(cfg, "rules") else cfg.rule()
    except ValueError as e:
        raise HopeError(str(e).replace("InnerRule.", "model.")) from None


class Titans(CMSLanguageModel):
    config_class = TitansConfig

    def __init__(self, cfg: TitansConfig):
        blocks = [MixerCMSBlock(
            TitansMixer(cfg.d_model, cfg.n_heads, cfg.rule(), dgd_bias=cfg.dgd_bias, eps=cfg.norm_eps),
            CMS(cfg.d_model, cfg.ffn_hidden, (None,), norm_eps=cfg.norm_eps),  # one static level = a SwiGLU MLP
            cfg.d_model, cfg.norm_eps) for _ in range(cfg.n_layers)]
        super().__init__(cfg, blocks)
