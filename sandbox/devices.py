"""Device setup: the one call that lets a process use every CPU core for sweeps."""

import os


def use_all_cores() -> str:
    """Asks XLA for one host device per CPU core and for 512-bit vectors where the CPU has
    them; call it before the first JAX computation of the process (XLA reads XLA_FLAGS once,
    when its backend starts). Returns the XLA_FLAGS now in force.

    XLA runs one CPU device on one thread for the elementwise loops of a sweep, and the
    engine splits every chunk over the devices, so one device per core uses the whole CPU.
    Flags already in XLA_FLAGS win; SANDBOX_CPU_DEFAULTS=0 leaves XLA_FLAGS alone. It changes
    nothing on accelerators beyond the host-side CPU devices. The study commands, the
    benchmarks and the tests call it; `import sandbox` does not.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("SANDBOX_CPU_DEFAULTS", "1") == "0":
        return flags
    extra = []
    if "xla_force_host_platform_device_count" not in flags:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        extra.append(f"--xla_force_host_platform_device_count={max(1, cores or 1)}")
    if "xla_cpu_prefer_vector_width" not in flags:
        extra.append("--xla_cpu_prefer_vector_width=512")
    if extra:
        flags = " ".join([flags, *extra]).strip()
        os.environ["XLA_FLAGS"] = flags
    return flags
