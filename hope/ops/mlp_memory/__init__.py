"""MLP memory `M(x) = x + W1 sigma(W2 x)` trained in context by the rule of SPEC section 3."""

from hope.ops.mlp_memory.chunk import chunk_mlp_memory
from hope.ops.mlp_memory.naive import naive_recurrent_mlp_memory

__all__ = ["chunk_mlp_memory", "naive_recurrent_mlp_memory"]
