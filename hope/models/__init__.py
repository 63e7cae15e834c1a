"""Model registry. Every model follows one protocol (SPEC 4.4):

* `Model(config)`, with `Model.config_class` the config dataclass at the top of its file;
* `forward(tokens [B, T] int64, state=None) -> (logits [B, T, V], state)`: `state` carries whatever
  the model needs to continue the sequence (a KV cache, in-context memories); feeding a sequence in
  pieces with the state carried equals feeding it whole;
* `init_state(batch_size) -> state`;
* `max_seq_len`: the longest sequence (prompt plus generation) the model can take, or None.

Importing this package registers each architecture's config class with `hope.config`
(`Config.from_dict` reads run folders through that registry). `count_parameters` lives here too, so
the trainers (`hope.train`, `hope.bench`) and the CLI share it without importing each other.
"""

from __future__ import annotations

import torch

from hope.config import register_model_config
from hope.errors import HopeError
from hope.models.hope import Hope, HopeConfig
from hope.models.hope_attention import HopeAttention, HopeAttentionConfig
from hope.models.titans import Titans, TitansConfig
from hope.models.transformer import Transformer, TransformerConfig

MODELS = {
    "transformer": Transformer,
    "titans": Titans,
    "hope_attention": HopeAttention,
    "hope": Hope,
}
for _name, _cls in MODELS.items():
    register_model_config(_name, _cls.config_class)


def get_model_class(arch: str):
    try:
        return MODELS[arch]
    except KeyError:
        raise HopeError(f"unknown architecture {arch!r}; available: {', '.join(sorted(MODELS))}") from None


def build_model(arch: str, config):
    return get_model_class(arch)(config)


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Total parameters (shared ones once) and the part outside the token embedding."""
    total = sum(p.numel() for p in model.parameters())
    embed = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return {"total": total, "non_embedding": total - embed}


__all__ = ["MODELS", "Hope", "HopeAttention", "HopeAttentionConfig", "HopeConfig", "Titans", "TitansConfig",
           "Transformer", "TransformerConfig", "build_model", "count_parameters", "get_model_class"]
