"""gradient-sandbox: gradients, descent sweeps and optimization landscapes in JAX.

Importing it changes nothing in the environment; `sandbox.devices.use_all_cores()` is the one
device setup call (the study commands and the benchmarks make it).
"""
