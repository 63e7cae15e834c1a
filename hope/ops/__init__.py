"""Pure tensor ops: the inner learning rules of SPEC section 3 (no nn.Module here).

Each op comes as `naive_recurrent_*` (token loop, the reference) and `chunk_*` (chunk-parallel,
for training); both share one signature and one state type.
"""

from hope.ops.linear_memory import chunk_linear_memory, naive_recurrent_linear_memory
from hope.ops.mlp_memory import chunk_mlp_memory, naive_recurrent_mlp_memory
from hope.ops.rule import InnerRule
from hope.ops.state import LinearMemoryState, MLPMemoryState

__all__ = [
    "InnerRule",
    "LinearMemoryState",
    "MLPMemoryState",
    "chunk_linear_memory",
    "chunk_mlp_memory",
    "naive_recurrent_linear_memory",
    "naive_recurrent_mlp_memory",
]
