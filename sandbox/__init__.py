"""gradient-sandbox: gradients, descent sweeps and optimization landscapes in JAX."""
