"""Level stacking (hope/stack.py, `hope stack`) and a model that keeps learning (hope/learn.py, `hope learn`)."""

import json

import pytest
import torch

from cli_support import error_of
from hope.cli import main

transformers = pytest.importorskip("transformers")


def tiny_llama(tie: bool = False, kv_heads: int = 2):
    """A randomly initialized Llama (GQA, untied head) with weights large enough that every part matters."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128,
                                   rms_norm_eps=1e-5, tie_word_embeddings=tie, rope_theta=5000.0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1) if p.ndim == 2 else p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("periods", [(None, 16, 4), (None, None, None), (8,)], ids=["three-levels", "static", "one"])
@pytest.mark.parametrize("kv_heads", [2, 4], ids=["gqa", "mha"])
def test_stacked_model_with_zero_cms_lr_computes_the_pretrained_logits(periods, kv_heads):
    from hope.stack import stack_llama

    hf = tiny_llama(kv_heads=kv_heads)
    model, cfg = stack_llama(hf, periods, cms_lr=0.0)
    assert cfg.n_kv_heads == kv_heads and cfg.cms_variant == "independent" and cfg.rope_theta == 5000.0
    x = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        ref = hf(x).logits
        out, _ = model(x)
    learned, _ = model.read(x, None, learn=True)  # learning at rate 0 changes nothing either
    assert ref.abs().max() > 0.1
    assert (out - ref).abs().max() <= 1e-5 and (learned - ref).abs().max() <= 1e-5


def test_stacked_model_learns_when_its_cms_lr_is_not_zero():
    from hope.stack import stack_llama

    model, _ = stack_llama(tiny_llama(tie=True), (None, 8, 4), cms_lr=0.5)
    x = torch.randint(0, 300, (1, 40))
    frozen, _ = model.read(x, None, learn=False)
    learned, _ = model.read(x, None, learn=True)
    assert (frozen[:, :4] - learned[:, :4]).abs().max() <= 1e-5  # no level steps before token 4
    assert (frozen[:, 8:] - learned[:, 8:]).abs().max() > 1e-4


def test_stacking_refuses_what_it_cannot_copy():
    from hope.errors import HopeError
    from hope.stack import stack_llama

    with pytest.raises(HopeError, match="cannot split the MLP's 96 hidden units"):
        stack_llama(tiny_llama(), (None, 8, 4, 2, 1))
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(HopeError, match="Llama-architecture"):
        stack_llama(gpt2, (None,))
    from hope.stack import parse_periods

    assert parse_periods("none, 512,64") == (None, 512, 64)
    with pytest.raises(HopeError, match="positive integers or none"):
        parse_periods("none,-4")


@pytest.fixture(scope="module")
def stacked_run(tmp_path_factory):
    """`hope stack --hf` of a tiny Llama saved as a transformers folder with a BPE tokenizer of its own."""
    from hope.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("stack")
    text = "\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog number {i * 7 % 13}." for i in range(400))
    tok = train_bpe([text], 300)
    folder = root / "llama"
    tiny_llama(tie=True).save_pretrained(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(folder)
    docs = root / "docs"
    docs.mkdir()
    for i in range(4):
        (docs / f"doc{i}.txt").write_text(text[i * 2000:(i + 1) * 2000])
    run = root / "run"
    assert main(["stack", "--hf", str(folder), "--periods", "none,16,8", "--cms-lr", "0.3", "--max-seq-len", "128",
                 "--out", str(run), "--set", f"data.corpus={docs}", "train.seq_len=32", "train.batch_size=2",
                 "train.steps=2", "train.eval_tokens=256", "train.sample_tokens=0"]) == 0
    return run, docs, folder


def test_a_stacked_run_folder_serves_every_command(stacked_run, tmp_path, capsys):
    from hope.runs import load_run

    run, docs, folder = stacked_run
    loaded = load_run(run)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    x = torch.randint(0, 300, (1, 30))
    with torch.no_grad():
        assert (loaded.model(x)[0] - hf(x).logits).abs().max() <= 1e-5
    assert main(["generate", "--run", str(run), "--prompt", "Line 3", "--max-new-tokens", "5"]) == 0
    assert main(["eval", "ppl", "--run", str(run), "--modes", "independent", "--window", "32"]) == 0
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "hf")]) == 0  # GQA config fields included
    with torch.no_grad():
        assert torch.equal(load_run(tmp_path / "hf").model(x)[0], loaded.model(x)[0])
    # continual pre-training: a fresh optimizer on the chosen parameters, the data changed on resume
    assert main(["train", "--resume", "--out", str(run), "--no-progress", "--data", str(docs / "doc1.txt"),
                 "--set", "train.trainable=cms,norm"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["corpus"].endswith("doc1.txt") and cfg["train"]["trainable"] == "cms,norm"
    after = load_run(run)
    before = dict(loaded.model.named_parameters())
    for name, p in after.model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == (".cms." in name or name.endswith("norm.weight")), name
    capsys.readouterr()
    msg = error_of(capsys, ["train", "--resume", "--out", str(run), "--no-progress", "--set", "train.steps=3",
                            "train.trainable=all"])
    assert "train.trainable" in msg


def test_learning_in_two_calls_equals_one_and_bad_states_are_refused(stacked_run, tmp_path, capsys):
    from hope.learn import fingerprint, learn, load_state, save_state
    from hope.runs import load_run

    run, docs, _ = stacked_run
    loaded = load_run(run)
    tok = loaded.tokenizer
    texts = [(f.name, f.read_text()) for f in sorted(docs.iterdir())]
    whole, stats = learn(loaded.model, tok, texts, window=48, progress=False)
    assert stats["documents"] == 4 and stats["tokens"] > 500
    half, _ = learn(loaded.model, tok, texts[:2], window=48, progress=False)
    save_state(tmp_path / "a.state", half, fingerprint(loaded))
    resumed, again = learn(loaded.model, tok, texts, load_state(tmp_path / "a.state", fingerprint(loaded)),
                           window=48, progress=False)
    assert again["skipped"] == 2 and again["documents"] == 2
    assert resumed["pos"] == whole["pos"] and resumed["documents"] == whole["documents"]
    for a, b in zip(resumed["cms"], whole["cms"]):
        for da, db in zip(a["delta"] + a["acc"], b["delta"] + b["acc"]):
            assert (da is None) == (db is None)
            if da is not None:
                assert all(torch.equal(da[k], db[k]) for k in da)
    moved = sum(float(d["w1"].abs().sum()) for c in whole["cms"] for d in c["delta"] if d is not None)
    assert moved > 0

    # the command: learn, continue, and the state in use by eval / generate
    state = tmp_path / "s.state"
    assert main(["learn", "--run", str(run), "--data", str(docs / "doc0.txt"), "--state-out", str(state),
                 "--window", "48", "--no-progress"]) == 0
    assert main(["learn", "--run", str(run), "--data", str(docs), "--state", str(state), "--state-out", str(state),
                 "--window", "48", "--no-progress"]) == 0
    assert "skipped 1 read before" in capsys.readouterr().out
    assert load_state(state)["documents"] == whole["documents"]
    assert main(["eval", "ppl", "--run", str(run), "--modes", "independent", "--window", "32", "--state", str(state),
                 "--no-learn"]) == 0
    assert "learned state" in capsys.readouterr().out
    assert main(["generate", "--run", str(run), "--state", str(state), "--max-new-tokens", "3"]) == 0

    # bad input: one line, exit 2, nothing overwritten
    good = state.read_bytes()
    trunc = tmp_path / "t.state"
    trunc.write_bytes(good[:len(good) // 2])
    assert "corrupt state file" in error_of(capsys, ["generate", "--run", str(run), "--state", str(trunc)])
    flipped = bytearray(good)
    flipped[-5] ^= 0xFF
    bad = tmp_path / "b.state"
    bad.write_bytes(bytes(flipped))
    msg = error_of(capsys, ["learn", "--run", str(run), "--data", str(docs), "--state", str(bad), "--state-out",
                            str(state), "--no-progress"])
    assert "checksum mismatch" in msg and state.read_bytes() == good
    fp = fingerprint(loaded)
    foreign = {**fp, "model": {**fp["model"], "cms_hidden": 7}}
    save_state(tmp_path / "f.state", whole, foreign)
    msg = error_of(capsys, ["eval", "ppl", "--run", str(run), "--state", str(tmp_path / "f.state")])
    assert "learned by another model" in msg and "cms_hidden" in msg
    save_state(tmp_path / "w.state", whole, {**fp, "weights": "0" * 64})
    assert "other weights" in error_of(capsys, ["generate", "--run", str(run), "--state", str(tmp_path / "w.state")])


def test_continual_benchmarks_start_from_a_stacked_run(stacked_run, tmp_path, capsys):
    """`hope continual lm|classify --from RUN`: the run's model, weights and tokenizer, its CMS learning
    or static (static_cms: plain fine-tuning of the same model)."""
    run, docs, _ = stacked_run
    out = tmp_path / "lm"
    args = ["continual", "lm", "--quick", "--no-progress", "--from", str(run), "--domains",
            f"{docs / 'doc0.txt'},{docs / 'doc2.txt'}", "--tokens-per-stage", "256", "--eval-tokens", "128",
            "--set", "train.batch_size=2", "train.lr=1e-4"]
    assert main([*args, "--methods", "seq,static_cms", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in res["runs"]] == ["hope_attention-seq-adamw", "hope_attention-static_cms-adamw"]
    assert res["tokenizer"] == "bpe 300" and res["runs"][0]["parameters"] == res["runs"][1]["parameters"]
    # the runs start from the stacked weights: before any stage both score what the stacked model scores
    assert res["runs"][0]["baseline"] == res["runs"][1]["baseline"]
    assert "--from runs its own architecture" in error_of(capsys, [*args, "--archs", "transformer", "--out",
                                                                    str(tmp_path / "x")])
    labelled = tmp_path / "labelled"
    labelled.mkdir()
    for c, word in (("red", "apple cherry"), ("blue", "sky ocean"), ("green", "grass leaf"), ("gold", "sun coin")):
        (labelled / c).write_text("\n%\n".join(f"{word} line {i} of {c}" for i in range(200)))
    assert main(["continual", "classify", "--quick", "--no-progress", "--from", str(run), "--sources", str(labelled),
                 "--methods", "seq", "--set", "train.batch_size=2", "--out", str(tmp_path / "cls")]) == 0
    res = json.loads((tmp_path / "cls" / "results.json").read_text())
    assert res["pretrain"].startswith("--from") and all(0 <= v <= 1 for v in res["runs"][0]["R_acc"][-1])


@pytest.mark.slow
def test_stacked_smollm2_computes_smollm2s_logits(monkeypatch):
    """The real model (about a minute): skipped unless `hope data get smollm2` ran and gguf is installed."""
    pytest.importorskip("gguf")
    from conftest import USER_HOPE_CACHE

    monkeypatch.setenv("HOPE_CACHE", USER_HOPE_CACHE)
    from hope.data.registry import read_manifest
    from hope.stack import load_llama, stack_llama

    if read_manifest("smollm2") is None:
        pytest.skip("SmolLM2 is not prepared (hope data get smollm2)")
    hf, tok = load_llama("smollm2")
    model, cfg = stack_llama(hf, (None, 512, 64), cms_lr=0.0)
    assert (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.cms_hidden) == (30, 9, 3, 512)
    x = torch.tensor([tok("In the beginning God created the heaven and the earth.")["input_ids"]])
    with torch.no_grad():
        ref = hf(x).logits
        out, _ = model(x)
    assert (out - ref).abs().max() <= 1e-4, float((out - ref).abs().max())


def test_learn_refuses_a_model_with_nothing_to_learn(run_dir, stacked_run, tmp_path, capsys):
    _, docs, _ = stacked_run
    msg = error_of(capsys, ["learn", "--run", str(run_dir), "--data", str(docs), "--state-out", str(tmp_path / "s")])
    assert "no Continuum Memory System that learns" in msg and not (tmp_path / "s").exists()
    assert "does not exist" in error_of(capsys, ["learn", "--run", str(run_dir), "--data", str(tmp_path / "none"),
                                                 "--state-out", str(tmp_path / "s")])
