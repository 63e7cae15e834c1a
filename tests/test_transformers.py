"""The transformers integration (hope/hf.py): every architecture round-trips save_pretrained /
from_pretrained with identical logits, greedy `generate` equals ours (CMS learning from the prompt
included), `hope export` writes a folder that AutoModelForCausalLM / AutoTokenizer load after
`import hope`, and the `hope` commands read that folder as they read the run."""

import json
import os
import stat
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

import hope.hf as H  # noqa: E402
from hope.cli import main  # noqa: E402
from hope.data.tokenizer import ByteTokenizer  # noqa: E402
from hope.generate import generate  # noqa: E402
from hope.models import build_model  # noqa: E402
from hope.recipes import get_recipe  # noqa: E402

RECIPES = ["debug", "titans_debug", "hope_attention_debug", "hope_debug"]
TINY = ["--recipe", "debug", "--no-progress", "--set", "model.d_model=32", "train.steps=4", "train.eval_every=4",
        "train.ckpt_every=4", "train.eval_tokens=1024", "train.sample_tokens=0"]


def pair(recipe):
    cfg = get_recipe(recipe)
    torch.manual_seed(0)
    model = build_model(cfg.arch, cfg.model).eval()
    return cfg, model, H.from_hope(model, cfg, ByteTokenizer())


@pytest.mark.parametrize("recipe", RECIPES)
def test_save_pretrained_round_trip_and_auto_class(recipe, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg, model, hf = pair(recipe)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is H.HF_CLASSES[cfg.arch][1]
    x = torch.randint(1, 256, (2, 37))
    with torch.no_grad():
        ours, _ = model(x)
        assert torch.equal(hf(x).logits, ours)
        assert torch.equal(loaded(x).logits, ours)


@pytest.mark.parametrize("recipe", RECIPES)
def test_greedy_generate_equals_ours(recipe):
    cfg, model, hf = pair(recipe)
    x = torch.randint(1, 256, (2, 40))  # longer than the debug CMS periods: the prompt drives CMS steps
    for learn in (True, False):
        ours = generate(model, x, 12, temperature=0, learn=learn)
        theirs = hf.generate(x, max_new_tokens=12, do_sample=False, eos_token_id=None, learn=learn)
        assert torch.equal(ours, theirs), learn


def test_cache_carries_state_and_learning_changes_cms_models():
    _, model, hf = pair("hope_attention_debug")
    x = torch.randint(1, 256, (1, 48))
    with torch.no_grad():
        whole = hf(x).logits
        first = hf(x[:, :30])
        rest = hf(x[:, 30:], cache=first.cache)
    assert rest.cache.get_seq_length() == 48
    assert torch.allclose(torch.cat([first.logits, rest.logits], 1), whole, atol=1e-5)
    learned = hf(x, learn=True).logits
    assert torch.equal(learned, model.read(x, None, learn=True)[0])
    assert not torch.allclose(learned[:, -8:], whole[:, -8:])  # the CMS stepped after 16 and 32 tokens


def test_bad_inputs_are_one_clear_error():
    from hope.errors import HopeError

    _, _, hf = pair("debug")
    with pytest.raises(ValueError, match="read every token"):
        hf(torch.ones(2, 4, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))
    with pytest.raises(HopeError, match="d_model"):
        H.HF_CLASSES["transformer"][0](d_model=30, n_heads=4)


def test_byte_tokenizer_as_transformers_tokenizer():
    tok = H.hf_tokenizer(ByteTokenizer())
    text = "To be, or not — ça va?\n"
    assert tok(text).input_ids == [0] + list(text.encode())
    assert tok(text, add_special_tokens=False).input_ids == list(text.encode())
    assert tok.decode(list(text.encode())) == text


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run, out = root / "run", root / "run-hf"
    assert main(["train", "--out", str(run), *TINY]) == 0
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    return run, out


def test_export_folder(exported, capsys):
    run, out = exported
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    umask = os.umask(0)
    os.umask(umask)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask for p in out.iterdir())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "hope_transformer" and cfg["hope_run"]["checkpoint"] == "step-0000004"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 2  # exists: --overwrite needed
    assert "already exists" in capsys.readouterr().err


def test_export_loads_after_import_hope_and_generates_as_hope_generate(exported, capsys):
    run, out = exported
    code = (f"import hope, torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}); t = AutoTokenizer.from_pretrained({str(out)!r})\n"
            "ids = t('ROMEO:', return_tensors='pt').input_ids\n"
            "print(repr(t.decode(m.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None)[0, 1:])))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    hf_text = eval(res.stdout.strip().splitlines()[-1])
    for folder in (run, out):
        assert main(["generate", "--run", str(folder), "--prompt", "ROMEO:", "--max-new-tokens", "16",
                     "--temperature", "0"]) == 0
        assert capsys.readouterr().out == hf_text + "\n"


def test_commands_read_the_export_as_the_run(exported, capsys, tmp_path):
    run, out = exported
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "transformers folder" in info and "model.safetensors" in info and '"arch": "transformer"' in info
    results = []
    for folder in (run, out):
        assert main(["eval", "ppl", "--run", str(folder), "--max-tokens", "512", "--modes", "independent",
                     "--out", str(tmp_path / f"{folder.name}.json")]) == 0
        results.append(json.loads((tmp_path / f"{folder.name}.json").read_text())["results"])
    assert results[0]["independent"]["loss"] == results[1]["independent"]["loss"]
