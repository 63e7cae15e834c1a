"""lm-eval's own `hf` backend on an exported model scores every request as our adapter does
(`hope.eval.adapter.Scorer`): the same log-likelihoods within float32 rounding and the same greedy
flags, with HFLM's convention (no prefix; `eos_prefix=False`) and with `add_bos_token=True` (our
convention: every context after `<|endoftext|>`). Needs the eval extra (lm-eval) and transformers."""

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

import hope.hf as H  # noqa: E402
from hope.eval.adapter import Scorer  # noqa: E402
from hope.recipes import get_recipe  # noqa: E402

RECIPES = {"transformer": "debug", "hope": "hope_debug"}

PAIRS = [("Question: Which is heavier, a feather or a stone?\nAnswer:", " a stone"),
         ("Question: Which is heavier, a feather or a stone?\nAnswer:", " a feather"),
         ("The quick brown fox jumps over the lazy", " dog"),
         ("", "To be, or not to be"),
         ("ROMEO: ", "But soft, what light through yonder window breaks?"),
         ("x" * 70, " and a long context")]


@pytest.mark.parametrize("arch", ["transformer", "hope"])
@pytest.mark.parametrize("bos", [False, True], ids=["hflm-convention", "eos-prefix"])
def test_hflm_backend_equals_our_adapter(tiny_model, byte_tok, tmp_path, arch, bos):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model = tiny_model(arch).float()
    H.from_hope(model, get_recipe(RECIPES[arch]), byte_tok).save_pretrained(tmp_path)
    H.hf_tokenizer(byte_tok).save_pretrained(tmp_path)
    ours = Scorer(model, byte_tok, batch_size=4, eos_prefix=bos).loglikelihood(PAIRS)
    lm = HFLM(pretrained=str(tmp_path), batch_size=4, device="cpu", add_bos_token=bos)
    theirs = lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(PAIRS)], disable_tqdm=True)
    for (a, ga), (b, gb) in zip(ours, theirs):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-4)
        assert ga == gb
