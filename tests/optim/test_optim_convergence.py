"""Each optimizer converges on a small convex least-squares problem and on a 2-layer MLP regression."""

import pytest
import torch

from hope.optim import DMGD, M3, DeltaMomentum, Muon

# One lr per optimizer for both problems (picked from a sweep over 0.003 ... 0.3). Delta momentum
# needs a larger lr than SGD: with delta=1 a persistent gradient direction is replaced, not accumulated.
OPTIMIZERS = {
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9),
    "delta_momentum": lambda ps: DeltaMomentum(ps, lr=0.1),
    "delta_momentum_precond": lambda ps: DeltaMomentum(ps, lr=0.03, precondition=True),
    "dmgd": lambda ps: DMGD(ps, lr=0.03),
    "dmgd_ns": lambda ps: DMGD(ps, lr=0.1, nonlinearity="newton_schulz"),
    "muon": lambda ps: Muon(ps, lr=0.1),
    "m3": lambda ps: M3(ps, lr=0.1),
}


def least_squares():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, 12, generator=gen)
    w_true = torch.randn(4, 12, generator=gen)
    y = a @ w_true.T + 0.01 * torch.randn(64, 4, generator=gen)
    return a, y


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_converges_on_least_squares(name):
    a, y = least_squares()
    w = torch.nn.Parameter(torch.zeros(4, 12))
    b = torch.nn.Parameter(torch.zeros(4))
    opt = OPTIMIZERS[name]([w, b])
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / 400)  # decay: Muon-type steps have fixed size
    loss0 = ((a @ w.T + b - y) ** 2).mean().item()
    for _ in range(400):
        opt.zero_grad()
        loss = ((a @ w.T + b - y) ** 2).mean()
        loss.backward()
        opt.step()
        scheduler.step()
    final = ((a @ w.T + b - y) ** 2).mean().item()
    assert final < 1e-2 * loss0, (loss0, final)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_converges_on_two_layer_mlp(name):
    torch.manual_seed(0)
    x = torch.randn(128, 8)
    y = torch.sin(x[:, :1] * 2) + x[:, 1:2] * x[:, 2:3]
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = OPTIMIZERS[name](list(model.parameters()))
    loss0 = torch.nn.functional.mse_loss(model(x), y).item()
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    final = torch.nn.functional.mse_loss(model(x), y).item()
    assert final < 0.3 * loss0, (loss0, final)
