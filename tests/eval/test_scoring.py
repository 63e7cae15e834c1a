"""Bits per byte, window evaluation against a direct computation, carried state against the whole
sequence, for the models of every architecture."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hope.eval.scoring import (bits_per_byte, carried_nll, independent_nll, position_nll, sliding_nll, stream_ids,
                               summarize)


def whole_nll(model, ids):
    with torch.no_grad():
        logits, _ = model(ids[None, :-1])
    return F.cross_entropy(logits[0].double(), ids[1:], reduction="none")


def test_bits_per_byte_arithmetic():
    assert bits_per_byte(8 * math.log(2), 8) == pytest.approx(1.0)
    assert bits_per_byte(3.0, 2) == pytest.approx(3.0 / (2 * math.log(2)))
    # tokens of 1, 2 and 4 bytes: bpb = total nats / (ln 2 * 7 bytes), ppl = exp(mean nats per token)
    nll = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    s = summarize(nll, torch.tensor([0, 1, 2]), np.array([1, 2, 4]))
    assert s["bytes"] == 7 and s["tokens"] == 3
    assert s["bpb"] == pytest.approx(6.0 / (7 * math.log(2)))
    assert s["ppl"] == pytest.approx(math.exp(2.0))
    with pytest.raises(Exception):
        bits_per_byte(1.0, 0)


def test_bits_per_byte_equals_token_loss_for_bytes(byte_tok):
    """With one byte per token, bits per byte is the loss in bits."""
    nll = torch.rand(50, dtype=torch.float64)
    s = summarize(nll, torch.randint(0, 256, (50,)), byte_tok.token_bytes)
    assert s["bpb"] == pytest.approx(s["loss"] / math.log(2))


def test_stream_ids(byte_tok):
    ids = stream_ids(["ab", "c"], byte_tok)
    assert ids.tolist() == [0, 97, 98, 0, 99, 0]


@pytest.mark.parametrize("arch", ["transformer", "titans", "hope"])
@pytest.mark.parametrize("n", [130, 97])
def test_independent_windows_equal_direct_computation(tiny_model, arch, n):
    model = tiny_model(arch)
    ids = torch.randint(1, 256, (n,))
    got = independent_nll(model, ids, window=32, batch_size=3)
    want = []
    for s in range(0, n - 1, 32):
        x = ids[s:min(n, s + 33)]
        want.append(whole_nll(model, x))
    assert got.shape == (n - 1,)
    torch.testing.assert_close(got, torch.cat(want), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", ["titans", "hope"])
def test_carried_state_equals_whole_sequence(tiny_model, arch):
    """Recurrent models read in windows with the state carried score every token as the whole
    sequence read at once (so the carried perplexity is the whole-sequence perplexity)."""
    model = tiny_model(arch)
    ids = torch.randint(1, 256, (150,))
    got = carried_nll(model, ids, window=23)
    want = whole_nll(model, ids)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert math.exp(got.mean()) == pytest.approx(math.exp(want.mean()), rel=1e-6)


def test_carried_streams_score_every_token_once(tiny_model):
    model = tiny_model("titans")
    ids = torch.randint(1, 256, (103,))
    got = carried_nll(model, ids, window=16, streams=3)
    part = 102 // 3
    want = torch.cat([whole_nll(model, ids[b * part:b * part + part + 1]) for b in range(3)])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_sliding_window_equals_whole_sequence_within_max_len(tiny_model):
    """Attention models: with the whole sequence inside `max_seq_len`, every block sees all of its
    past, so the sliding evaluation equals the whole-sequence one."""
    model = tiny_model("transformer")
    ids = torch.randint(1, 256, (120,))
    torch.testing.assert_close(carried_nll(model, ids, window=32), whole_nll(model, ids), rtol=1e-6, atol=1e-6)


def test_sliding_window_context(tiny_model):
    """Past `max_seq_len`, each block is scored after exactly `context - window` earlier tokens."""
    model = tiny_model("transformer")
    ids = torch.randint(1, 256, (200,))
    got = sliding_nll(model, ids, window=20, context=50)
    want = torch.cat([whole_nll(model, ids[max(0, e - 50):e + 1])[-(e - s):]
                      for s in range(0, 199, 20) for e in [min(199, s + 20)]])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_learning_in_context_changes_hope_losses_causally(tiny_model):
    """With the CMS learning while reading, losses differ after the first CMS period, never before."""
    model = tiny_model("hope")
    ids = torch.randint(1, 256, (80,))
    off = carried_nll(model, ids, window=40)
    on = carried_nll(model, ids, window=40, learn=True)
    seg = model.cms_segment
    torch.testing.assert_close(on[:seg], off[:seg])
    assert not torch.allclose(on[seg:], off[seg:])


def test_position_nll(tiny_model):
    model = tiny_model("titans")
    rows = torch.randint(1, 256, (2, 65))
    got = position_nll(model, rows, window=16)
    torch.testing.assert_close(got, torch.stack([whole_nll(model, r) for r in rows]))
