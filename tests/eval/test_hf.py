"""A transformers causal LM behind the `hope` protocol (how the pretrained reference model is
evaluated): the KV cache carries the state, and the adapter's scores equal the model's own.
Skipped without transformers (extra `eval`); a tiny random Llama, nothing is downloaded."""

import pytest
import torch
import torch.nn.functional as F

from hope.eval.adapter import Scorer
from hope.eval.scoring import carried_nll

transformers = pytest.importorskip("transformers")


@pytest.fixture
def llama():
    from hope.eval.hf import HFCausalLM

    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    return HFCausalLM(transformers.LlamaForCausalLM(cfg).eval())


def test_state_is_the_kv_cache(llama):
    ids = torch.randint(1, 256, (1, 40))
    with torch.no_grad():
        whole, _ = llama(ids)
        a, state = llama(ids[:, :25])
        b, _ = llama(ids[:, 25:], state)
    torch.testing.assert_close(torch.cat([a, b], 1), whole, rtol=1e-4, atol=1e-4)
    assert llama.max_seq_len == 128


def test_scores_equal_the_model(llama, byte_tok):
    pairs = [("Question: why?\nAnswer:", " because"), ("x" * 200, " long context is cut on the left")]
    got = Scorer(llama, byte_tok, batch_size=2).loglikelihood(pairs)
    for (c, x), (lp, _) in zip(pairs, got):
        toks = ([0] + byte_tok.encode(c + x))[-129:]
        n = len(byte_tok.encode(x))
        with torch.no_grad():
            logits, _ = llama(torch.tensor([toks[:-1]]))
        want = F.log_softmax(logits[0, -n:].double(), -1).gather(1, torch.tensor(toks[-n:])[:, None]).sum()
        assert lp == pytest.approx(float(want), rel=1e-5, abs=1e-4)
    ids = torch.randint(1, 256, (300,))
    assert carried_nll(llama, ids, window=64).shape == (299,)
