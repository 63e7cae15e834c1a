import pytest
import torch

from hope.errors import HopeError
from hope.generate import generate
from hope.models import Transformer, TransformerConfig


def tiny_model(**kw):
    torch.manual_seed(0)
    cfg = TransformerConfig(**{"vocab_size": 61, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 64, **kw})
    return Transformer(cfg).double().eval()


def test_kv_cache_token_by_token_equals_full_forward():
    model = tiny_model()
    tokens = torch.randint(0, 61, (3, 40))
    full, _ = model(tokens)
    state = model.init_state(3)
    steps = []
    for t in range(tokens.shape[1]):
        logits, state = model(tokens[:, t:t + 1], state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)


def test_pieces_equal_whole():
    model = tiny_model(tie_embeddings=False)
    tokens = torch.randint(0, 61, (2, 57))
    full, _ = model(tokens)
    g = torch.Generator().manual_seed(3)
    cuts = sorted(torch.randperm(56, generator=g)[:5].add(1).tolist())
    state, parts = None, []
    for a, b in zip([0, *cuts], [*cuts, 57]):
        logits, state = model(tokens[:, a:b], state)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-10, atol=1e-10)
    assert state.pos == 57


def test_greedy_generation_matches_repeated_full_forward():
    model = tiny_model()
    prompt = torch.randint(0, 61, (2, 5))
    out = generate(model, prompt, 12, temperature=0)
    seq = prompt
    for _ in range(12):
        nxt = model(seq)[0][:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


def test_too_long_sequences_are_refused():
    model = tiny_model()
    with pytest.raises(HopeError, match="exceeds model.max_seq_len=64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(HopeError, match="maximum length of 64"):
        generate(model, torch.zeros(1, 60, dtype=torch.long), 10)


def test_gradients_reach_every_parameter():
    model = tiny_model(tie_embeddings=False).float().train()
    logits, _ = model(torch.randint(0, 61, (2, 16)))
    logits.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
