"""What Hope, Hope-Attention and Titans share: a block stack with CMS channel mixers, and the driver
that lets the CMS learn in context (SPEC 4.3).

`CMSLanguageModel` follows the model protocol (`forward(tokens, state) -> (logits, state)`,
`init_state`) and adds:
* `fast_weights(state)`: the per-stream CMS fast weights, in a fixed order;
* `cms_step(state, grads)`: accumulate their gradients and update levels whose period elapsed;
* `cms_segment`: the shortest CMS period (None when every level is static);
* `read(tokens, state, learn=True)`: read a text and learn from it while reading (inference);
* `learned_part(state)`, `state_from(learned, batch_size)`, `learned_state`: what persists of a
  stream (its CMS) and streams that start from it (`hope.learn`).

`forward_backward(model, x, y, state, loss_norm)` is the training step of every model: in segments of
the shortest CMS period, forward, the gradient of the segment's loss with respect to the fast
weights, then the CMS step. Three modes:
* full gradient, first-order (`truncate=False`, `train.tbptt=false`, the default, SPEC 4.3): the
  mixers' state keeps its graph across the segments, each segment's CMS gradient is taken with
  `torch.autograd.grad(..., retain_graph=True)`, and one backward of the whole sequence's loss
  follows; the CMS update is a constant;
* truncated, first-order (`truncate=True`, `train.tbptt=true`): a backward per segment; state
  crossing a segment boundary is carried detached (a fresh state keeps its link to the meta-learned
  initial states in the first one); less memory, and much worse models (docs/DEVIATIONS.md);
* meta-learned (`model.cms_meta=true`): as the full gradient, and the CMS update stays in the graph
  (`create_graph=True`): the outer gradient flows through every fast-weight step into earlier
  segments and reaches the learned step sizes (second order). With `truncate`, only the mixers'
  states are cut at segment boundaries.
For models without a learning CMS it is one plain forward and backward.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from hope.layers.init import init_weights
from hope.layers.memory import MemoryBank
from hope.layers.state import detach_state, tree_map


class MixerCMSBlock(nn.Module):
    """`x <- x + mixer(RMSNorm(x))`, then the CMS chain (each level pre-norm and residual)."""

    def __init__(self, mixer: nn.Module, cms: nn.Module, d_model: int, norm_eps: float):
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.mixer = mixer
        self.cms = cms

    def init_state(self, batch_size: int) -> dict:
        return {"mixer": self.mixer.init_state(batch_size), "cms": self.cms.init_state(batch_size)}

    def forward(self, x, state):
        y, mixer_state = self.mixer(self.norm(x), state["mixer"])
        x, cms_state = self.cms(x + y, state["cms"])
        return x, {"mixer": mixer_state, "cms": cms_state}


class CMSLanguageModel(nn.Module):
    """Embedding, a stack of `MixerCMSBlock`s, final RMSNorm, LM head (tied or not)."""

    def __init__(self, cfg, blocks: list[nn.Module]):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        # embedding and Linear weights by role, the same rule for every model (hope.layers.init); gate
        # biases and memory initial states keep the mixers' own initialization
        init_weights(self, cfg.init_std, cfg.n_layers)

    @property
    def max_seq_len(self):
        return getattr(self.config, "max_seq_len", None)

    @property
    def cms_meta(self) -> bool:
        """Whether some CMS level learns its step size (`model.cms_meta=true`)."""
        return any(getattr(b.cms, "meta", False) for b in self.blocks)

    @property
    def cms_segment(self) -> int | None:
        segs = [b.cms.segment for b in self.blocks if b.cms.segment is not None]
        return min(segs) if segs else None

    # a learned state (`hope.learn`: what the CMS learned from a user's documents) every fresh stream
    # starts from; None: the meta-learned weights
    learned_state: dict | None = None

    def init_state(self, batch_size: int) -> dict:
        if self.learned_state is not None:
            return self.state_from(self.learned_state, batch_size)
        return self.fresh_state(batch_size)

    def fresh_state(self, batch_size: int) -> dict:
        return {"blocks": [b.init_state(batch_size) for b in self.blocks], "pos": 0}

    def learned_part(self, state: dict) -> dict:
        """What persists of a stream's state (`hope.learn`): each block's CMS state, and the token count."""
        return {"cms": [detach_state(s["cms"]) for s in state["blocks"]], "pos": state["pos"]}

    def state_from(self, learned: dict, batch_size: int) -> dict:
        """Fresh mixer states, and every stream's CMS where `learned` (from `learned_part`) left it."""
        def expand(t):
            return t.expand(batch_size, *t.shape[1:]).clone()

        # only the mixers start fresh: a fresh CMS state (zero fast weights) would be built and thrown away
        blocks = [{"mixer": b.mixer.init_state(batch_size), "cms": tree_map(expand, c)}
                  for b, c in zip(self.blocks, learned["cms"])]
        return {"blocks": blocks, "pos": learned["pos"]}

    def forward(self, tokens: torch.Tensor, state: dict | None = None) -> tuple[torch.Tensor, dict]:
        """
        Args:
            tokens: [B, T] token ids.
            state: from `init_state` or an earlier call; None starts fresh streams.
        Returns:
            logits [B, T, V] (float32) and the state after these tokens (CMS fast weights unchanged:
            they change only in `cms_step`).
        """
        if state is None:
            state = self.init_state(tokens.shape[0])
        x = self.embed(tokens)
        new = []
        for block, s in zip(self.blocks, state["blocks"]):
            x, s = block(x, s)
            new.append(s)
        return self.lm_head(self.norm(x)).float(), {"blocks": new, "pos": state["pos"] + tokens.shape[1]}

    def fast_weights(self, state: dict) -> list[torch.Tensor]:
        return [w for b, s in zip(self.blocks, state["blocks"]) for w in b.cms.fast_weights(s["cms"])]

    def renew_fast_weights(self, state: dict, graph: bool) -> dict:
        """The state with every fast weight replaced by a new node of the same value: a detached leaf
        that requires grad, or with `graph` a copy inside the graph. A segment's gradient with respect
        to these reaches only the segment's own use of them, not earlier segments' reads kept in the
        mixers' states (as `read` at inference computes it)."""
        def renew(t):
            if graph and t.requires_grad:
                return t.clone()
            return t.detach().requires_grad_(True)

        blocks = []
        for s in state["blocks"]:
            deltas = [None if d is None else {k: renew(v) for k, v in d.items()} for d in s["cms"]["delta"]]
            blocks.append({**s, "cms": {**s["cms"], "delta": deltas}})
        return {**state, "blocks": blocks}

    def cms_step(self, state: dict, grads: list, graph: bool = False, mixers: str = "detach") -> dict:
        """Apply the CMS rule after a segment. `grads` align with `fast_weights(state)` and are sums
        over the segment's tokens of the next-token loss gradient. Returns the state with the CMS
        detached (or, with `graph`, its update in the autograd graph) and the mixers' states detached
        (`mixers="detach"`) or as they are (`"keep"`: the full gradient across segments)."""
        blocks, i = [], 0
        for b, s in zip(self.blocks, state["blocks"]):
            n = len(b.cms.fast_weights(s["cms"]))
            mixer = detach_state(s["mixer"]) if mixers == "detach" else s["mixer"]
            blocks.append({**s, "mixer": mixer, "cms": b.cms.step(s["cms"], grads[i:i + n], graph=graph)})
            i += n
        return {**state, "blocks": blocks}

    def read(self, tokens: torch.Tensor, state: dict | None = None, learn: bool = True) -> tuple[torch.Tensor, dict]:
        """Read `tokens` [B, T] and keep learning from them (SPEC 4.3 at inference).

        With `learn`, the text is read in segments of the shortest CMS period; after each segment the
        CMS levels take the gradient of the next-token loss of the tokens read so far (the target of
        a segment's last token is the next segment's first token; the very last token has none).
        In-context memories of the mixers learn either way. Returns logits [B, T, V] and the state.
        """
        seg = self.cms_segment
        if not learn or seg is None:
            with torch.no_grad():
                return self(tokens, state)
        if state is None:
            state = self.init_state(tokens.shape[0])
        outs, T, a = [], tokens.shape[1], 0
        while a < T:
            b = min(T, a + seg - state["pos"] % seg)
            state = detach_state(state)
            leaves = self.fast_weights(state)
            with torch.enable_grad():
                for w in leaves:
                    w.requires_grad_(True)
                logits, state = self(tokens[:, a:b], state)
                n_targets = min(b + 1, T) - (a + 1)
                if n_targets > 0:
                    loss = F.cross_entropy(logits[:, :n_targets].flatten(0, 1),
                                           tokens[:, a + 1:a + 1 + n_targets].flatten(), reduction="sum")
                    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
                else:
                    grads = [None] * len(leaves)
            state = self.cms_step(state, list(grads))
            outs.append(logits.detach())
            a = b
        return torch.cat(outs, 1), state


def forward_backward(model, x: torch.Tensor, y: torch.Tensor, state, loss_norm: float, autocast=contextlib.nullcontext,
                     no_sync=contextlib.nullcontext, raw_model=None, truncate: bool = False,
                     final_state: bool = True):
    """One micro-step of training: forward, loss, backward (and the CMS steps of a learning CMS).

    Args:
        model: the model as called (possibly DDP- or compile-wrapped).
        x, y: [B, T] inputs and next-token targets; a target of -100 is not scored (F.cross_entropy's
            ignore_index: masked tasks, padding), so `loss_norm` should count the scored targets.
        state: the in-context state to start from (None: fresh streams).
        loss_norm: the summed token loss is divided by this before backward (tokens per optimizer step).
        autocast: context manager factory for mixed precision.
        no_sync: context manager factory that suspends DDP gradient sync (all segments but the last).
        raw_model: the unwrapped model (for `cms_segment`, `fast_weights`, `cms_step`).
        truncate: cut the mixers' graph at CMS segment boundaries (`train.tbptt`); False keeps the
            full gradient within the sequence (module docstring).
        final_state: False when the caller discards the state after the batch (training without
            `train.stateful`): the last segment's CMS step, which changes only that state, is skipped,
            and with it that segment's inner gradient (a backward through the segment); the loss and
            the parameters' gradients are the same.
    Returns:
        (summed loss over the scored tokens as a float, the state after the batch, detached; None for models
        without in-context state to carry, and with `final_state=False`).
    """
    raw = raw_model if raw_model is not None else model
    seg = getattr(raw, "cms_segment", None)
    if seg is None:
        with autocast():
            logits, state = model(x, state)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
        (loss / loss_norm).backward()
        return loss.item(), (detach_state(state) if state is not None and final_state else None)
    fresh = state is None
    if fresh:
        state = raw.init_state(x.shape[0])
    if raw.cms_meta or not truncate:
        return _whole_sequence(model, raw, x, y, state, fresh, loss_norm, autocast, truncate, final_state)
    total, T, a = 0.0, x.shape[1], 0
    while a < T:
        b = min(T, a + seg - state["pos"] % seg)
        if not (fresh and a == 0):
            # a fresh state keeps its graph in the first segment, so the meta-learned initial states
            # of the mixers' memories are trained (SPEC 2); later segments start detached
            state = detach_state(state)
        leaves = raw.fast_weights(state)
        for w in leaves:
            w.requires_grad_(True)
        with (no_sync() if b < T else contextlib.nullcontext()):
            with autocast():
                logits, state = model(x[:, a:b], state)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y[:, a:b].flatten(), reduction="sum")
            (loss / loss_norm).backward()
        if b < T or final_state:
            state = raw.cms_step(state, [None if w.grad is None else w.grad * loss_norm for w in leaves])
        total += loss.item()
        a = b
    return total, (state if final_state else None)


def _whole_sequence(model, raw, x, y, state, fresh: bool, loss_norm: float, autocast, truncate: bool,
                    final_state: bool = True):
    """`forward_backward` with one backward over the whole sequence: the full gradient (first-order
    CMS steps) or the meta-learned step (CMS steps in the graph)."""
    meta = raw.cms_meta
    seg = raw.cms_segment
    if not fresh:
        state = detach_state(state)
    # second order differentiates the backward itself; CPU flash attention has no double backward
    kernels = (lambda: sdpa_kernel([SDPBackend.MATH])) if meta else contextlib.nullcontext
    total, T, a = None, x.shape[1], 0
    while a < T:
        b = min(T, a + seg - state["pos"] % seg)
        state = raw.renew_fast_weights(state, graph=meta)
        leaves = raw.fast_weights(state)
        with autocast(), kernels():
            logits, state = model(x[:, a:b], state)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y[:, a:b].flatten(), reduction="sum")
        total = loss if total is None else total + loss
        if b == T and not final_state:
            break                 # the last segment's step would only change the state handed on
        scored = bool((y[:, a:b] != -100).any())
        grads = (torch.autograd.grad(loss, leaves, create_graph=meta, retain_graph=True, allow_unused=True)
                 if scored and leaves else [None] * len(leaves))
        if b < T:
            state = raw.cms_step(state, list(grads), graph=meta, mixers="detach" if truncate else "keep")
        else:
            state = raw.cms_step(state, list(grads))
        a = b
    (total / loss_norm).backward()
    return total.item(), (detach_state(state) if final_state else None)


def compile_model(model: nn.Module) -> nn.Module:
    """`train.compile`: run a model's hot loop under `torch.compile` (inductor); returns the model to call.

    A model with in-context memories (Titans, Hope) compiles the per-chunk step of its memory ops
    (`MemoryBank.compile`), where its time goes; the rest stays eager, so the chunk loop, mid-chunk
    resume and the CMS segments need no graph of their own. Any other model is compiled whole.

    A model whose CMS learns in training takes its inner gradients with `torch.autograd.grad(...,
    retain_graph=True)` before the outer backward; a compiled backward that donates its buffers
    refuses that, so buffer donation is turned off (`torch._functorch.config.donated_buffer`,
    process-wide). The meta-learned CMS step (`model.cms_meta=true`) differentiates the backward
    itself, which compiled code does not support: such a model runs eager, with a warning.
    """
    if getattr(model, "cms_meta", False):
        warnings.warn("train.compile: the meta-learned CMS step (model.cms_meta=true) differentiates "
                      "the backward itself, which torch.compile does not support; the model runs eager",
                      stacklevel=2)
        return model
    if getattr(model, "cms_segment", None) is not None:
        import torch._functorch.config as functorch_config

        functorch_config.donated_buffer = False
    banks = [m for m in model.modules() if isinstance(m, MemoryBank)]
    for bank in banks:
        bank.compile = True
    return model if banks else torch.compile(model)
