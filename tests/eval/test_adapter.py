"""The harness adapter's answers equal the model's own log-probabilities and greedy generation.

The models return float32 logits: sums over tens of tokens agree to about 1e-6 relative."""

import pytest
import torch
import torch.nn.functional as F

from hope.eval.adapter import Scorer, make_lm
from hope.generate import generate


def direct_loglik(model, tok, context, continuation):
    """log p(continuation | [eos] context) from one plain forward of the model."""
    ctx = [tok.eos_id] + tok.encode(context)
    cont = tok.encode(continuation)
    x = torch.tensor([ctx + cont])
    with torch.no_grad():
        logits, _ = model(x[:, :-1])
    lp = F.log_softmax(logits[0, -len(cont):].double(), -1)
    target = torch.tensor(cont)
    return float(lp.gather(1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())


PAIRS = [("Question: is the sky blue?\nAnswer:", " yes"), ("The cat sat on the", " mat"),
         ("", "hello world"), ("trailing space ", "moves"), ("A", " much longer continuation of several words.")]


@pytest.mark.parametrize("arch", ["transformer", "titans", "hope_attention", "hope"])
def test_loglikelihood_equals_model(tiny_model, byte_tok, arch):
    model = tiny_model(arch)
    got = Scorer(model, byte_tok, batch_size=2).loglikelihood(PAIRS)
    for (c, x), (lp, greedy) in zip(PAIRS, got):
        n = len(c) - len(c.rstrip())
        want = direct_loglik(model, byte_tok, c[:len(c) - n], c[len(c) - n:] + x)
        assert lp == pytest.approx(want[0], rel=1e-6, abs=1e-5)
        assert greedy == want[1]


def test_batched_equals_one_by_one(tiny_model, byte_tok):
    model = tiny_model("titans")
    a = Scorer(model, byte_tok, batch_size=5).loglikelihood(PAIRS)
    b = Scorer(model, byte_tok, batch_size=1).loglikelihood(PAIRS)
    assert [x[0] for x in a] == pytest.approx([x[0] for x in b], abs=1e-6)


def test_long_inputs_carry_the_state(tiny_model, byte_tok):
    """A recurrent model reads inputs longer than `chunk` in pieces: same answer as one forward."""
    model = tiny_model("hope")
    ctx = "some context " * 12
    short = Scorer(model, byte_tok, chunk=4096).loglikelihood([(ctx, " end")])
    long = Scorer(model, byte_tok, chunk=32).loglikelihood([(ctx, " end")])
    assert long[0][0] == pytest.approx(short[0][0], rel=1e-6, abs=1e-5)


def test_attention_models_keep_the_newest_tokens(tiny_model, byte_tok):
    model = tiny_model("transformer")  # max_seq_len 256
    ctx = "x" * 400
    lp, _ = Scorer(model, byte_tok).loglikelihood([(ctx, "yz")])[0]
    toks = ([0] + byte_tok.encode(ctx + "yz"))[-257:]
    with torch.no_grad():
        logits, _ = model(torch.tensor([toks[:-1]]))
    want = F.log_softmax(logits[0, -2:].double(), -1).gather(1, torch.tensor(toks[-2:])[:, None]).sum()
    assert lp == pytest.approx(float(want), rel=1e-6, abs=1e-5)


@pytest.mark.parametrize("arch", ["transformer", "titans"])
def test_rolling_equals_whole_text(tiny_model, byte_tok, arch):
    model = tiny_model(arch)
    text = "To be, or not to be, that is the question. " * 8  # 352 bytes: beyond the Transformer's 256
    got = Scorer(model, byte_tok, chunk=64).loglikelihood_rolling([text])[0]
    ids = torch.tensor([0] + byte_tok.encode(text))
    if arch == "titans":
        with torch.no_grad():
            logits, _ = model(ids[None, :-1])
        want = -F.cross_entropy(logits[0].double(), ids[1:], reduction="sum")
    else:  # lm-eval's rolling windows: blocks of 256 predictions; the last one read with a full context
        want, n = 0.0, len(ids) - 1
        for s in range(0, n, 256):
            e = min(n, s + 256)
            x = ids[max(0, e - 256):e + 1]
            with torch.no_grad():
                logits, _ = model(x[None, :-1])
            want -= F.cross_entropy(logits[0, -(e - s):].double(), x[-(e - s):], reduction="sum")
    assert got == pytest.approx(float(want), rel=1e-6, abs=1e-4)


@pytest.mark.parametrize("arch", ["transformer", "hope"])
def test_generate_until_is_greedy_generation(tiny_model, byte_tok, arch):
    model = tiny_model(arch)
    ctx = "The quick brown fox"
    text = Scorer(model, byte_tok).generate_until([(ctx, {"until": [], "max_gen_toks": 12})])[0]
    prompt = torch.tensor([[0] + byte_tok.encode(ctx)])
    ids = generate(model, prompt, 12, temperature=0, learn=False)[0, prompt.shape[1]:].tolist()
    if 0 in ids:
        ids = ids[:ids.index(0)]
    assert text == byte_tok.decode(ids)
    stop = text[3:5] if len(text) > 5 else None
    if stop:
        cut = Scorer(model, byte_tok).generate_until([(ctx, {"until": [stop], "max_gen_toks": 12})])[0]
        assert cut == text.split(stop)[0]


def test_learning_scorer_reads_with_cms(tiny_model, byte_tok):
    """learn=True: the CMS learns from the context; short contexts (under one CMS period) are
    unaffected, long ones change."""
    model = tiny_model("hope")
    plain = Scorer(model, byte_tok).loglikelihood([("ab", "c"), ("word " * 20, "end")])
    learn = Scorer(model, byte_tok, learn=True).loglikelihood([("ab", "c"), ("word " * 20, "end")])
    assert learn[0][0] == pytest.approx(plain[0][0], abs=1e-6)
    assert learn[1][0] != pytest.approx(plain[1][0], abs=1e-6)


def test_lm_eval_adapter(tiny_model, byte_tok):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.api.model import LM

    model = tiny_model("titans")
    lm = make_lm(Scorer(model, byte_tok), progress=False)
    assert isinstance(lm, LM)
    reqs = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(PAIRS[:2])]
    got = lm.loglikelihood(reqs)
    for (c, x), (lp, _) in zip(PAIRS, got):
        assert lp == pytest.approx(direct_loglik(model, byte_tok, c, x)[0], rel=1e-6, abs=1e-5)
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("some text",), 0)])
    assert rolling[0] == pytest.approx(direct_loglik(model, byte_tok, "", "some text")[0], rel=1e-6, abs=1e-5)
    out = lm.generate_until([Instance("generate_until", {}, ("abc", {"until": ["\n"], "max_gen_toks": 4}), 0)])
    assert isinstance(out[0], str) and len(out[0].encode()) <= 4 * 4


def test_without_eos_prefix(tiny_model, byte_tok):
    """eos_prefix=False (lm-eval HFLM's convention for models without BOS): the context alone, and
    the end-of-document token only before an empty context."""
    model = tiny_model("titans")
    s = Scorer(model, byte_tok, eos_prefix=False)
    assert s.encode_pair("ab", "c") == ([97, 98], [99]) and s.encode_pair("", "c") == ([0], [99])
    x = torch.tensor([[97, 98, 99]])
    with torch.no_grad():
        logits, _ = model(x[:, :-1])
    want = F.log_softmax(logits[0, -1].double(), -1)[99]
    assert s.loglikelihood([("ab", "c")])[0][0] == pytest.approx(float(want), rel=1e-6, abs=1e-5)


def test_nonfinite_loglikelihoods_are_counted(byte_tok):
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, tokens, state=None):
            return torch.full((*tokens.shape, 256), float("nan")), state

    s = Scorer(Broken(), byte_tok)
    s.loglikelihood([("a", "b"), ("c", "d")])
    assert s.nonfinite == 2
