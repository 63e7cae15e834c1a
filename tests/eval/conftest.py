"""Tiny models of every architecture (the `debug` recipes, in float64; their logits come out in float32,
so comparisons allow about 1e-6) and a byte tokenizer."""

import pytest
import torch

from hope.data.tokenizer import ByteTokenizer
from hope.models import build_model
from hope.recipes import get_recipe

RECIPES = {"transformer": "debug", "titans": "titans_debug", "hope_attention": "hope_attention_debug",
           "hope": "hope_debug"}


@pytest.fixture
def tiny_model():
    """`tiny_model(arch)`: a freshly initialized debug-size model, float64, in eval mode."""

    def make(arch: str):
        cfg = get_recipe(RECIPES[arch])
        torch.manual_seed(0)
        return build_model(cfg.arch, cfg.model).double().eval()

    return make


@pytest.fixture
def byte_tok():
    return ByteTokenizer()
