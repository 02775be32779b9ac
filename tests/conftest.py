# The tests compare full float32 arithmetic. On a GPU, JAX's default precision
# lets float32 convs and matmuls round their inputs to TF32 (PyTorch keeps
# fp32 unless asked); the benchmarks ask for TF32 explicitly with --tf32.
# Set through the environment, which jax reads when it is imported: this file
# is loaded by every pytest run, the benchmarks' too, whose process imports no framework.
import os

os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
