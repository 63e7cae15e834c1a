"""The continual-learning methods beside plain sequential training: experience replay with a bounded
buffer, and elastic weight consolidation (EWC) with a diagonal Fisher.

* `ReplayBuffer(capacity)`: training rows `(x, y)` of earlier stages, at most `capacity` rows in all,
  shared equally between the stages seen so far (each stage's share is a seeded random subset of
  the rows offered for it; when a stage is added, older shares shrink to make room). A replay batch
  replaces a fixed share of every training batch by rows drawn from the buffer, so replay trains on
  the same number of tokens per step as every other method.
* `EWC`: after each stage, the diagonal empirical Fisher `F = mean_n (d loss_n / d theta)^2` over
  `n` training sequences of that stage (one sequence per gradient, its mean token loss), summed over
  the stages so far, and the weights at the end of the stage as the anchor. The training loss gets
  `lam / 2 * sum_i F_i (theta_i - theta*_i)^2` (Kirkpatrick et al. 2017; one penalty with the summed
  Fisher and the latest anchor, as online EWC with no decay, Schwarz et al. 2018).
"""

from __future__ import annotations

import torch

from hope.errors import HopeError
from hope.models.common import forward_backward


class ReplayBuffer:
    """At most `capacity` training rows of earlier stages, an equal share per stage.

    Args:
        capacity: rows kept in all (each row is one training sequence: `seq_len` tokens).
        seed: seeds the choice of the rows each stage keeps.
    """

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 1:
            raise HopeError(f"the replay buffer needs a capacity of at least one row, got {capacity}")
        self.capacity = capacity
        self.seed = seed
        self.stages: list[tuple[torch.Tensor, torch.Tensor]] = []  # per stage: x [n, T], y [n, T]

    def __len__(self) -> int:
        return sum(len(x) for x, _ in self.stages)

    def add_stage(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Offer the rows `x, y [N, T]` of a finished stage; keep a seeded random share of them and
        shrink the earlier stages' shares so that the buffer holds at most `capacity` rows."""
        share = max(1, self.capacity // (len(self.stages) + 1))
        gen = torch.Generator().manual_seed(self.seed * 7919 + len(self.stages))
        keep = torch.randperm(len(x), generator=gen)[:share]
        self.stages = [(sx[:share], sy[:share]) for sx, sy in self.stages] + [(x[keep].clone(), y[keep].clone())]
        while len(self) > self.capacity:  # capacity < number of stages: the oldest shares go first
            self.stages.pop(0)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` rows drawn uniformly (with replacement) from the whole buffer."""
        if not self.stages:
            raise HopeError("the replay buffer is empty")
        xs = torch.cat([x for x, _ in self.stages])
        ys = torch.cat([y for _, y in self.stages])
        idx = torch.randint(0, len(xs), (n,), generator=generator)
        return xs[idx], ys[idx]

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "seed": self.seed, "stages": self.stages}

    def load_state_dict(self, d: dict) -> None:
        self.capacity, self.seed, self.stages = d["capacity"], d["seed"], list(d["stages"])


def ewc_penalty(params: list[torch.Tensor], fisher: list[torch.Tensor], anchor: list[torch.Tensor],
                lam: float) -> torch.Tensor:
    """`lam / 2 * sum_i F_i (theta_i - theta*_i)^2`, summed over every tensor.

    Args:
        params: the current parameters (any shapes).
        fisher, anchor: one tensor per parameter, of its shape (constants).
        lam: the penalty's strength.
    Returns:
        a scalar tensor (its gradient is `lam * F * (theta - theta*)`).
    """
    total = params[0].new_zeros(())
    for p, f, a in zip(params, fisher, anchor, strict=True):
        total = total + (f * (p - a).pow(2)).sum()
    return 0.5 * lam * total


class EWC:
    """Diagonal-Fisher EWC over the named parameters of a model (see the module docstring)."""

    def __init__(self, lam: float):
        if lam < 0:
            raise HopeError(f"the EWC lambda must be >= 0, got {lam}")
        self.lam = lam
        self.names: list[str] = []
        self.fisher: list[torch.Tensor] = []
        self.anchor: list[torch.Tensor] = []

    @property
    def active(self) -> bool:
        return bool(self.fisher)

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        return ewc_penalty([params[n] for n in self.names], self.fisher, self.anchor, self.lam)

    def consolidate(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, autocast) -> None:
        """Add the Fisher of the sequences `x, y [N, T]` (one gradient per sequence) and move the
        anchor to the current weights."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        stage = [torch.zeros_like(p, dtype=torch.float32) for _, p in named]
        was_training = model.training
        model.train()
        for i in range(len(x)):
            model.zero_grad(set_to_none=True)
            yi = y[i:i + 1]
            forward_backward(model, x[i:i + 1], yi, None, max(1, int((yi != -100).sum())), autocast, final_state=False)
            for f, (_, p) in zip(stage, named):
                if p.grad is not None:
                    f += p.grad.detach().float().pow(2) / len(x)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        if self.fisher:
            stage = [a + b for a, b in zip(self.fisher, stage)]
        self.names = [n for n, _ in named]
        self.fisher = stage
        self.anchor = [p.detach().clone() for _, p in named]

    def state_dict(self) -> dict:
        return {"lam": self.lam, "names": self.names, "fisher": self.fisher, "anchor": self.anchor}

    def load_state_dict(self, d: dict) -> None:
        self.lam, self.names, self.fisher, self.anchor = d["lam"], list(d["names"]), list(d["fisher"]), list(d["anchor"])
