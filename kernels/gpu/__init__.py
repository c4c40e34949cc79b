"""GPU kernels written once in a shared dialect (``dialect``) and instantiated through
``mx.fast.metal_kernel`` on Apple GPUs or ``mx.fast.cuda_kernel`` on NVIDIA GPUs; each
kernel module holds its body, its NumPy reference and its dispatch.  ``emulator`` runs
the Metal instantiation on Linux (C++ against a shim header) for the test suite."""
