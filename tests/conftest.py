# The tests compare full float32 arithmetic. On a GPU, JAX's default precision
# lets float32 convs and matmuls round their inputs to TF32 (PyTorch keeps
# fp32 unless asked); the benchmarks ask for TF32 explicitly with --tf32.
import jax

jax.config.update("jax_default_matmul_precision", "highest")
