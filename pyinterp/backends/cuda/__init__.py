"""The CUDA backend: ``csrc/cuda/*.cu`` compiled at run time by CuPy (NVRTC), launched on
torch's current stream. Launchers and autograd Functions live in one module per op family."""
