"""state_dict round trip: save after k steps, load into a fresh optimizer over a copy of the
parameters, and the next steps are bit-identical to the uninterrupted run."""

import copy

import pytest
import torch

from hope.optim import DMGD, M3, DeltaMomentum, Muon, build_optimizer

SHAPES = [(6, 4), (3, 7), (5,), (2, 3, 4)]

FACTORIES = {
    "delta": lambda ps: DeltaMomentum(ps, lr=0.05),
    "delta_precond": lambda ps: DeltaMomentum(ps, lr=0.05, precondition=True, weight_decay=0.01),
    "dmgd": lambda ps: DMGD(ps, lr=0.05),
    "dmgd_ns": lambda ps: DMGD(ps, lr=0.02, nonlinearity="newton_schulz", weight_decay=0.01),
    "muon": lambda ps: Muon([{"params": ps[:2]}, {"params": ps[2:], "lr": 1e-3}], weight_decay=0.01),
    "m3": lambda ps: M3(ps, slow_every=3, weight_decay=0.01),
}


def grads_at(t):
    gen = torch.Generator().manual_seed(100 + t)
    return [torch.randn(s, generator=gen) for s in SHAPES]


def fresh_params():
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]


def advance(opt, params, t0, t1):
    for t in range(t0, t1):
        for p, g in zip(params, grads_at(t)):
            p.grad = g
        opt.step()


@pytest.mark.parametrize("name", list(FACTORIES))
def test_resume_is_bit_identical(name, tmp_path):
    k, n = 4, 5  # slow_every=3: the resume falls between two slow-memory updates
    params = fresh_params()
    opt = FACTORIES[name](params)
    advance(opt, params, 0, k)
    torch.save({"opt": opt.state_dict(), "params": [p.detach().clone() for p in params]}, tmp_path / "ckpt.pt")
    advance(opt, params, k, k + n)

    ckpt = torch.load(tmp_path / "ckpt.pt")
    resumed = [torch.nn.Parameter(t.clone()) for t in ckpt["params"]]
    opt2 = FACTORIES[name](resumed)
    opt2.load_state_dict(ckpt["opt"])
    advance(opt2, resumed, k, k + n)
    for a, b in zip(params, resumed):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["muon", "m3", "delta_momentum", "dmgd"])
def test_build_optimizer_resume(name):
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"embed": torch.nn.Embedding(11, 6), "proj": torch.nn.Linear(6, 6), "lm_head": torch.nn.Linear(6, 11)})
    x = torch.randint(0, 11, (4, 5))

    def loss_fn(m):
        return torch.nn.functional.cross_entropy(m["lm_head"](torch.tanh(m["proj"](m["embed"](x)))).flatten(0, 1), x.flatten())

    opt = build_optimizer(name, list(model.named_parameters()), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()
    model2 = copy.deepcopy(model)
    opt2 = build_optimizer(name, list(model2.named_parameters()), lr=1e-2, weight_decay=0.1)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for m, o in ((model, opt), (model2, opt2)):
        for _ in range(3):
            o.zero_grad()
            loss_fn(m).backward()
            o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
