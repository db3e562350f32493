"""Make Triton's CPU interpreter compute bfloat16 the way the GPU does.

Triton's interpreter (seen in 3.7.1) keeps bfloat16 tensors as raw uint16
bits, and then
  - `tl.dot` on bf16 operands multiplies the raw bits as integers;
  - fp32 -> bf16 casts truncate (the GPU rounds to nearest even), and casts
    between bf16 and fp16 or integers reinterpret the bits as integers.
The kernels are meant to be checked on CPU exactly as they run on a GPU, so
these three builder methods are replaced, for bf16 operands only, by
conversions that round to nearest even (NaN stays NaN) and a dot product of
the decoded values with float32 accumulation, which is what the tensor cores
compute. Every other dtype keeps Triton's own code.
`tests/plugins/test_interpreter_fixes.py` checks the patched casts bit for bit
against torch.

One more, for Triton 3.6 (the lent GPU machine's version): its interpreter turns
a scalar into a Python int with `int()` of a one-element array, which numpy 2.4
refuses ("only 0-dimensional arrays can be converted"); 3.7 squeezes the array
first, and so does the patched `__index__` here (the same code as 3.7.1's).
"""

from __future__ import annotations

import numpy as np

_APPLIED = False


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (nearest, ties to even) -> uint16 bits."""
    x = np.ascontiguousarray(values, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded).astype(np.uint16)


def apply() -> None:
    """Patch the interpreter's builder once (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    import triton.language as tl
    from triton.runtime import interpreter as itp

    builder = itp.InterpreterBuilder
    orig_cast, orig_fp_to_fp, orig_dot = builder.cast_impl, builder.create_fp_to_fp, builder.create_dot

    def decode(handle) -> np.ndarray:
        if handle.dtype.scalar == tl.bfloat16:
            return bf16_bits_to_f32(handle.data)
        return handle.data

    def convert(self, src, dst_type, fallback, *extra):
        src_bf16 = src.dtype.scalar == tl.bfloat16
        dst_bf16 = dst_type.scalar == tl.bfloat16
        if not (src_bf16 or dst_bf16):
            return fallback(self, src, dst_type, *extra)
        values = decode(src)
        if dst_bf16:
            data = f32_to_bf16_bits(values.astype(np.float32))
        else:
            data = values.astype(itp._get_np_dtype(dst_type))
        return itp.TensorHandle(data.reshape(np.shape(src.data)), dst_type.scalar)

    def cast_impl(self, src, dst_type):
        return convert(self, src, dst_type, orig_cast)

    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        return convert(self, src, dst_type, orig_fp_to_fp, rounding_mode)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.scalar != tl.bfloat16 and b.dtype.scalar != tl.bfloat16:
            return orig_dot(self, a, b, d, input_precision, max_num_imprecise_acc)
        out = np.matmul(decode(a).astype(np.float32), decode(b).astype(np.float32), dtype=np.float32)
        return itp.TensorHandle(out.astype(d.data.dtype) + d.data, d.dtype.scalar)

    for name, fn in (("cast_impl", cast_impl), ("create_fp_to_fp", create_fp_to_fp), ("create_dot", create_dot)):
        setattr(builder, name, fn)
    orig_patch_tensor = getattr(itp, "_patch_lang_tensor", None)
    if orig_patch_tensor is not None:
        def patch_lang_tensor(tensor, scope):
            orig_patch_tensor(tensor, scope)
            scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).squeeze()))

        itp._patch_lang_tensor = patch_lang_tensor
    _APPLIED = True
