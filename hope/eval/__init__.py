"""Evaluation of language models (issue 7): perplexity and bits per byte on held-out corpora
(`hope.eval.lm`, on the scoring functions of `hope.eval.scoring`), loss by position in the context,
and zero-shot reasoning through the EleutherAI harness (`hope.eval.adapter`, `hope.eval.harness`),
all offline on the data of `hope.data.registry`. Commands: `hope data ...`, `hope eval ...`
(`hope.eval.cli`); guide: docs/eval.md.
"""
