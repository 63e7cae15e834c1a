"""Linear memory `M(x) = W x` trained in context by the rule of SPEC section 3."""

from hope.ops.linear_memory.chunk import chunk_linear_memory
from hope.ops.linear_memory.naive import naive_recurrent_linear_memory

__all__ = ["chunk_linear_memory", "naive_recurrent_linear_memory"]
