"""`hope.ops.recompute.recompute_region`: a checkpoint that gives the same values and gradients as
saving everything, also for a partial backward that keeps the graph (the CMS's inner gradients),
and that holds nothing of a recomputation once the backward pass that made it has ended."""

import pytest
import torch

import hope.ops.recompute as rc


def regions(monkeypatch):
    made = []

    class Recorded(rc._Region):
        def __init__(self, *a):
            super().__init__(*a)
            made.append(self)
    monkeypatch.setattr(rc, "_Region", Recorded)
    return made


def case(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    leaf = torch.zeros(4, 6, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    return w, a, leaf, x


def f(w, nested=False):
    def body(x, a):
        for i in range(4):
            if nested and i == 2:
                x = rc.recompute_region(lambda y: torch.tanh(y @ w), x) * a
            else:
                x = torch.tanh(x @ w) * a
        return x
    return body


@pytest.mark.parametrize("nested", [False, True])
def test_same_values_and_gradients_with_a_partial_backward_first(monkeypatch, nested):
    made = regions(monkeypatch)
    out = []
    for wrap in (lambda fn, *a: fn(*a), rc.recompute_region):
        w, a, leaf, x = case()
        y = wrap(f(w, nested), x + leaf, a) @ w
        inner = torch.autograd.grad(y.square().sum(), leaf, retain_graph=True)[0]
        y.square().sum().backward()
        out.append((y, inner, w.grad, a.grad))
    for got, ref in zip(out[1], out[0]):
        torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-13)
    assert made and all(not r.recomputed for r in made)     # nothing held after either pass


def test_a_partial_backward_leaves_nothing_recomputed_behind(monkeypatch):
    """The inner gradient needs only part of the region's saved tensors (not those of `w`'s
    gradient); what it recomputed and did not use is dropped when it ends, not at the outer backward."""
    made = regions(monkeypatch)
    w, a, leaf, x = case()
    y = rc.recompute_region(f(w), x + leaf, a)
    torch.autograd.grad(y.sum(), leaf, retain_graph=True)
    assert len(made) == 1 and made[0].recomputed == {}
    y.sum().backward()
    assert w.grad is not None and made[0].recomputed == {}


def test_no_grad_is_a_plain_call(monkeypatch):
    made = regions(monkeypatch)
    w, a, leaf, x = case()
    with torch.no_grad():
        y = rc.recompute_region(f(w), x, a)
    assert not made and not y.requires_grad


def test_a_region_that_changes_between_forward_and_backward_is_refused():
    w, a, leaf, x = case()
    calls = []

    def fn(x):
        calls.append(1)
        return torch.tanh(x @ w) if len(calls) == 1 else x * 2.0
    y = rc.recompute_region(fn, x + leaf)
    with pytest.raises(RuntimeError, match="must run the same code"):
        y.sum().backward()


def test_an_input_changed_in_place_is_refused():
    w, a, leaf, x = case()
    h = x + leaf
    y = rc.recompute_region(f(w), h, a)
    h.mul_(10)
    with pytest.raises(RuntimeError, match="modified in place"):
        y.sum().backward()
