"""hope: Nested Learning and the Hope architecture in PyTorch.

See SPEC sections 0-7 (shared/SPEC.md in the project) for the mathematics; the package is laid out as
`ops` (pure tensor functions), `layers` (nn.Modules), `models` (one file per architecture), `optim`
(deep optimizers), `data` (corpora and tokenizers), `train.py` (the training loop) and `cli.py`.
"""

import os as _os
import sys as _sys

# The memory layers run many small tensor ops; with OpenMP's default spin-waiting, worker threads
# that lose their core to another process stall every op (10x slower training measured on a busy
# 2-core machine, no measurable cost on an idle one). Only effective before torch is imported, and
# only when the user has not chosen a policy (docs/DEVIATIONS.md).
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
