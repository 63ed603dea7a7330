"""The ``@triton.jit`` sources; imported per mode by ``attnkit.kernels.triton.kernels``."""
