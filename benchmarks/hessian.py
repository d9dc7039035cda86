"""What sharing one compiled Hessian-vector product saves a landscape study on CPU.

Workload: resnet_landscape's Hessian analysis of one network (`_hessian_edges` and
`_spectrum`: the extremes with a doubled-steps check, five per-stage blocks, the top 2C
by Lanczos and an SLQ density), on a ResNet-8 at its initial weights over 32 digits, with
the study's --quick iteration counts. Two ways, one after the other in this process, each
from a cold start (`jax.clear_caches()` first):

- shared: the study as it runs: every function gets the same `loss` object, so on CPU
  (`hessian.default_loop`) they step through one compiled HVP of it.
- fresh: a new (equal) `loss` closure for the extremes and another for the spectra, as a
  caller that rebuilds its loss per call does: the network's HVP compiles twice, not once.

Both must give the same numbers (relative 1e-6) before the times are printed; the ratio is
fresh / shared. Compilation dominates at this size, which is the point: the seconds saved are
per compiled HVP, and a ResNet-56's costs more.

Run: make bench   (python -m benchmarks.hessian [--depth 8] [--images 32])
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from sandbox import data, devices, network
from sandbox.models import resnet
from studies import resnet_landscape as study


def _analysis(make_loss, variables, cfg) -> tuple[dict, dict]:
    key = jax.random.key(1)
    edges = study._hessian_edges(make_loss(), variables, key, cfg.lanczos_iters)
    spectrum = study._spectrum(make_loss(), variables, key, cfg, 10, cfg.spectrum_images)
    return edges, spectrum


def _numbers(edges: dict, spectrum: dict) -> np.ndarray:
    blocks = [b[k] for b in spectrum["blocks"].values() for k in ("lambda_max", "trace")]
    top = spectrum["outliers"]["top"]
    return np.asarray([edges["lambda_max"], edges["lambda_min"], *blocks, *top])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--images", type=int, default=32)
    args = p.parse_args(argv)
    devices.use_all_cores()
    cfg = study.QUICK
    ds = data.load("digits", seed=0)
    model = resnet.ResNet(depth=args.depth, shortcut="A", num_classes=ds.num_classes)
    x = jnp.asarray(ds.x_train[: args.images])
    y = jnp.asarray(ds.y_train[: args.images])
    v = jax.jit(model.init)(jax.random.key(0), x[:1])
    variables = {"params": v["params"], "batch_stats": v["batch_stats"]}
    shared_loss = network.eval_loss(model, variables, x, y)

    times, numbers = {}, {}
    for name, make_loss in (
        ("shared", lambda: shared_loss),
        ("fresh", lambda: network.eval_loss(model, variables, x, y)),
    ):
        jax.clear_caches()
        start = time.perf_counter()
        numbers[name] = _numbers(*_analysis(make_loss, variables, cfg))
        times[name] = time.perf_counter() - start
    np.testing.assert_allclose(numbers["fresh"], numbers["shared"], rtol=1e-6)
    print(f"ResNet-{args.depth}, {args.images} images, {jax.device_count()} CPU devices")
    for name, t in times.items():
        print(f"  {name:6s} {t:6.1f} s")
    print(f"  fresh / shared: {times['fresh'] / times['shared']:.2f}x")


if __name__ == "__main__":
    main()
