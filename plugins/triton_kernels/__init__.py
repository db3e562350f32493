"""Triton kernel bodies (`@triton.jit`) of the two custom ops.

Only kernel bodies live here: grids, strides, dtype dispatch and tile choice
are in `dysink_deploy.plugins.launch` and `dysink_deploy.plugins.variants`, shared
by the interpreter, the JIT path and the ahead-of-time compiler.

`TRITON_INTERPRET=1` must be set before this package is imported for the
kernels to run on CPU tensors (Triton reads it when a kernel is decorated).
"""
