"""gradient-sandbox: gradients, descent sweeps and optimization landscapes in JAX."""

import os


def _configure_cpu() -> None:
    """Lets sweeps use every CPU core and the widest vectors, before JAX starts its backend.

    XLA runs one CPU device on one thread for the elementwise loops of a sweep, so the
    sandbox asks for one host device per core (sweeps split their run axis over devices)
    and for 512-bit vectors where the CPU has them. Flags already in XLA_FLAGS win; set
    SANDBOX_CPU_DEFAULTS=0 to leave XLA_FLAGS alone. It has no effect once JAX's backend is
    up, and none on accelerators beyond the host-side CPU devices.
    """
    if os.environ.get("SANDBOX_CPU_DEFAULTS", "1") == "0":
        return
    try:  # the backend reads XLA_FLAGS once, when it starts
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return
    except (ImportError, AttributeError):
        pass
    flags = os.environ.get("XLA_FLAGS", "")
    extra = []
    if "xla_force_host_platform_device_count" not in flags:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        extra.append(f"--xla_force_host_platform_device_count={max(1, cores or 1)}")
    if "xla_cpu_prefer_vector_width" not in flags:
        extra.append("--xla_cpu_prefer_vector_width=512")
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


_configure_cpu()
