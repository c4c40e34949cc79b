"""Kernels, each beside its reference: ``affine`` (MLX affine (de)quantization, NumPy twin)."""
