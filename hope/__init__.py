"""hope: Nested Learning and the Hope architecture in PyTorch.

See SPEC sections 0-7 (shared/SPEC.md in the project) for the mathematics; the package is laid out as
`ops` (pure tensor functions), `layers` (nn.Modules), `models` (one file per architecture), `optim`
(deep optimizers), `data` (corpora and tokenizers), `train.py` (the training loop) and `cli.py`.
"""

__version__ = "0.1.0"
