"""Dynamic evaluation: with lr 0 it is the independent-window loss, it adapts to repeated text, it
changes only the chosen parameters, and it leaves the model as it found it."""

import pytest
import torch

from hope.errors import HopeError
from hope.eval.dynamic import chosen_parameters, dynamic_nll, tune_lr
from hope.eval.scoring import independent_nll
from hope.models import Transformer, TransformerConfig


def model():
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab_size=31, d_model=32, n_layers=2, n_heads=2, max_seq_len=64))


@pytest.mark.parametrize("streams", [1, 3])
def test_zero_lr_is_the_independent_window_loss(streams):
    m = model()
    ids = torch.randint(0, 31, (16 * 7 + 5,))
    got = dynamic_nll(m, ids, window=16, lr=0.0, streams=streams)
    if streams == 1:
        torch.testing.assert_close(got, independent_nll(m, ids, 16), rtol=1e-6, atol=1e-6)
    assert got.shape == (ids.numel() - 1,) and torch.isfinite(got).all()


def test_adapts_to_repeated_text_and_restores_the_model():
    m = model()
    piece = torch.randint(0, 31, (16,))
    ids = torch.cat([piece] * 12 + [piece[:1]])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    static = dynamic_nll(m, ids, window=16, lr=0.0)
    adapted = dynamic_nll(m, ids, window=16, lr=0.05)
    assert adapted[-16:].mean() < static[-16:].mean() - 0.5        # the text repeats: it has learned it
    torch.testing.assert_close(adapted[:16], static[:16])           # the first window is scored before any step
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_only_the_chosen_parameters_move():
    m = model()
    ids = torch.randint(0, 31, (16 * 4 + 1,))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    dynamic_nll(m, ids, window=16, lr=0.01, params="cms", restore=False)
    for n, p in m.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == (".mlp." in n), n
    assert all(p.requires_grad for p in m.parameters())              # flags put back


def test_tune_lr_picks_the_best_on_validation_and_bad_input():
    m = model()
    piece = torch.randint(0, 31, (16,))
    ids = torch.cat([piece] * 8 + [piece[:1]])
    lr, losses = tune_lr(m, ids, 16, lrs=(1e-4, 0.05), log=lambda *_: None)
    assert lr == min(losses, key=losses.get) and lr == 0.05 and set(losses) == {0.0, 1e-4, 0.05}
    with pytest.raises(HopeError, match="subset"):
        chosen_parameters(m, "mlp")
    with pytest.raises(HopeError, match="lr >= 0"):
        dynamic_nll(m, ids, 16, lr=-1.0)
