"""benchmarks/carried_drift.py: resetting every memory after each window reads each window as a
fresh stream would (up to the carried convolution caches), and carrying everything is the plain
carried read."""

import torch
from conftest import load_benchmark

from hope.models import build_model
from hope.recipes import get_recipe


def test_resets_replace_only_the_named_memories():
    drift = load_benchmark("carried_drift")
    torch.manual_seed(0)
    cfg = get_recipe("hope_debug").model
    model = build_model("hope", cfg).double().eval()
    rows = torch.randint(0, cfg.vocab_size, (2, 65))
    carried = drift.window_losses(model, rows, 16, ())
    with torch.no_grad():                                      # the same as one carried read
        logits, _ = model(rows[:, :-1])
    whole = torch.nn.functional.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="none")
    torch.testing.assert_close(torch.tensor(carried, dtype=torch.float64),
                               whole.view(2, 4, 16).mean((0, 2)).double(), rtol=0, atol=1e-4)
    state, init = model(rows[:, :16])[1], model.init_state(2)
    out = drift.reset_entries(state, init, ("mem",))
    mixer, fresh, old = out["blocks"][0]["mixer"], init["blocks"][0]["mixer"], state["blocks"][0]["mixer"]
    assert mixer["mem"] is fresh["mem"] and mixer["proj"] is old["proj"] and mixer["conv"] is old["conv"]
    cms, cms_old = out["blocks"][1]["cms"], state["blocks"][1]["cms"]
    assert cms["pos"] == cms_old["pos"] and all(a is b for a, b in zip(cms["delta"][1].values(), cms_old["delta"][1].values()))
    reset = drift.window_losses(model, rows, 16, ("proj", "mem"))
    assert reset[0] == carried[0] and reset[1:] != carried[1:]
