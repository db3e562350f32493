"""GPU kernels of DySink's two custom ops, written once in Triton.

- `triton_kernels/`: the `@triton.jit` kernel bodies;
- `launch`: torch-tensor wrappers with the references' signatures
  (CUDA: JIT; CPU: Triton's interpreter, `TRITON_INTERPRET=1`);
- `variants`: tile configs and launch rules shared by the wrappers, the
  ahead-of-time compiler and the TensorRT plugin;
- `aot`: cubins for every target architecture without a GPU, with a manifest;
- `report`: registers, spills, shared memory and tensor-core instructions
  read from those cubins.
Import the submodules you need: this package imports nothing heavy.
"""
