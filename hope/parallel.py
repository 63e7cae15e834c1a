"""Sharded data parallelism with FSDP2 (`torch.distributed.fsdp.fully_shard`): `train.parallel=fsdp`.

Used by `hope/train.py` when several processes run (torchrun) and `train.parallel=fsdp`:
* `shard(model, ...)`: every block is its own FSDP unit, the root (embedding, final norm, LM head)
  another; parameters, gradients and optimizer state are sharded over the processes. On a GPU under
  bf16, the Transformer++ all-gathers bf16 parameters (`MixedPrecisionPolicy`, gradients reduced in
  float32); models whose in-context state is made from parameters (memories, CMS fast weights) keep
  float32 parameters and use autocast, so that state stays float32 (docs/DEVIATIONS.md).
* `initial_state(model, batch)`: a fresh in-context state that sharded parameters can make (a model's
  own `init_state` reads parameters outside any forward, where FSDP holds only shards).
* `GradSync`: suspend the gradient reduce-scatter for all micro-batches and CMS segments but the last
  (FSDP2's `set_requires_gradient_sync`, what DDP's `no_sync` is for DDP).
* `full_state(model, optimizer)`: the gathered (unsharded) model and optimizer state dicts on CPU,
  which the first process writes as an ordinary checkpoint (`hope/checkpoint.py`).

Every function here is collective: all processes call it in the same order.
"""

from __future__ import annotations

import contextlib

import torch

from hope.errors import HopeError


def has_param_state(model) -> bool:
    """Whether the model's in-context state is built from its parameters (the CMS-family models)."""
    return hasattr(model, "fast_weights")


def check_fsdp(cfg) -> None:
    """What `train.parallel=fsdp` supports: AdamW (the deep optimizers orthogonalize or learn on whole
    matrices, not shards) and no nested CMS (its step reads the weights outside a forward)."""
    if cfg.train.optimizer != "adamw":
        raise HopeError(f"train.parallel=fsdp supports train.optimizer=adamw only; got {cfg.train.optimizer!r} "
                        "(use train.parallel=ddp)")
    if getattr(cfg.model, "cms_variant", "sequential") == "nested":
        raise HopeError("train.parallel=fsdp does not support model.cms_variant=nested (use train.parallel=ddp)")
    if cfg.train.stateful:
        raise HopeError("train.stateful does not support several processes yet; run it in one process")


def shard(model: torch.nn.Module, bf16_params: bool) -> torch.nn.Module:
    """Apply `fully_shard` to every block, then to the whole model (in place; returns it).

    Args:
        model: one of our models, already on its device.
        bf16_params: all-gather parameters in bf16 (compute in bf16, reduce gradients in float32).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_params \
        else MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def initial_state(model, batch_size: int):
    """A fresh in-context state for a sharded model (None for the Transformer: its KV cache needs no
    parameters and is made in the forward).

    A block whose mixer has parameter-made memories (Titans, Hope) gets `None` for its mixer, so that the
    mixer makes its memories inside the block's forward, where its parameters are gathered and the
    gradient reaches the meta-learned initial values (`forward_backward` keeps a state's graph in the
    first segment); the CMS part is zeros, with no path to weights.
    """
    if not has_param_state(model):
        return None
    blocks = []
    for block in model.blocks:
        block.unshard()
        blocks.append({"mixer": None, "cms": block.cms.init_state(batch_size)})
        block.reshard()
    return {"blocks": blocks, "pos": 0}


class GradSync:
    """`off()` suspends FSDP's gradient reduce-scatter; leaving it restores what `set(on)` last chose.

    Args:
        model: the sharded root module.
    """

    def __init__(self, model):
        self.model = model
        self.on = True

    def set(self, on: bool) -> None:
        self.on = on
        self.model.set_requires_gradient_sync(on)

    @contextlib.contextmanager
    def off(self):
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(self.on)


def full_state(model, optimizer) -> tuple[dict, dict]:
    """(model state dict, optimizer state dict keyed by parameter names), gathered to CPU tensors
    on the first process (empty on the others)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def load_optimizer(model, optimizer, state: dict) -> None:
    """Load a gathered optimizer state dict (keyed by parameter names) into a (sharded) optimizer.
    Parameters that never had a gradient have no state, as in `Optimizer.load_state_dict`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True, strict=False))


def full_tensor(t):
    """A DTensor's global value (gradient norms of sharded parameters); other tensors unchanged."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
