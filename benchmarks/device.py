"""The accelerator run of issue 14, prepared on CPU: sweeps, the paper-scale fractal, ResNet-56
surfaces in float32 / TF32 / bfloat16 and a training epoch, in one command of at most 8 minutes.

Run: bash benchmarks/device.sh          (on a lent GPU; results in $OUT or results/device/)
     bash benchmarks/device.sh --tiny   (the same code at tiny sizes: a minute or two on CPU)

Sections, in order (`--sections` picks some), each printing the card and the JAX version:

1. sweep: `sweep.descend` on Himmelblau, GD and Adam, float32, 10^8 (start, lr) pairs x 1000
   steps, beside a plain `jit(vmap(scan))` of the same Optax update (reverse-mode gradient
   of a [2] vector) in the same run; pair-steps per second, their ratio, and the share of
   the card's float32 FMA peak (`PEAKS`). The work per pair-step is counted by XLA (the
   cost analysis of one vmapped update; a multiply-add counts as 2 flops), beside the hand
   count of docs/performance.md.
2. surface: ResNet-56 (shortcut A) on 50,000 CIFAR-shaped images (32x32x3, random, on the
   device), batch 10,000: float32 (matmul precision "highest"), TF32 ("tensorfloat32") and
   bfloat16 (`precision="bfloat16"`) each timed on 4 grid points after a compiling call;
   the losses compared with float32's (largest relative difference); then the 51 x 51
   plane in the fastest precision within a relative 1e-2 of float32, whole if its estimate
   (points x measured seconds per point) fits the time left, else as many rows as fit,
   with the measured rate's estimate for the whole grid.
3. train: one epoch of ResNet-56 training on 50,000 CIFAR-shaped images, batch 128 (390
   steps), float32 (XLA's default precision) and bfloat16 mixed precision.
4. fractal: the fractal study's PAPER config (`--scale paper`: width 16, 4 views of
   1024 x 1024 runs x 1000 steps, float64), through its own compute and plot: wall time,
   box-counting dimensions, two figures.

Estimates on an H200 (not measured; sizes chosen so that the run fits 8 minutes): sweep
about 40 s (compilations included: 10^8 pairs x 1000 steps is 1e11 pair-steps, 0.2 s at
5e11/s for GD, memory-bound); surface about 100 s for the compilations and timed points,
then the grid: 659 s in float32 at the measured 197,000 images/s, which does not fit, and
120-300 s in bfloat16 if it reaches the goal's 2.2x-5.5x; train about 90 s (two
compilations, 2 x 3 s of epoch); fractal about 100 s (1e14 float64 flops). A deadline
(`--budget`, default 470 s) keeps the whole within 8 minutes: the grid gets what is left
after `--reserve` seconds kept for the sections after it, and a section that would start
with less than its estimate left is skipped with a line saying so.

Every figure is printed and written to <out>/device.json after each section (a run cut
short keeps what it measured); the fractal's summary and figures are written beside it.
"""

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path

import numpy as np

# Peak arithmetic per card (dense, no sparsity; NVIDIA datasheets): float32 FMAs per second
# on the CUDA cores (half the float32 FLOP/s), and tensor-core TF32 and BF16 FLOP/s. The
# CPU row is the development machine of docs/performance.md: 2 Zen 4 cores at about 3 GHz,
# 16 float32 FMAs per cycle each (two 256-bit FMA pipes).
PEAKS = {
    "H200": {"fp32_fma_per_s": 33.5e12, "tf32_flop_per_s": 494.7e12, "bf16_flop_per_s": 989.4e12},
    "H100 PCIe": {
        "fp32_fma_per_s": 25.6e12,
        "tf32_flop_per_s": 378e12,
        "bf16_flop_per_s": 756e12,
    },
    "H100": {"fp32_fma_per_s": 33.5e12, "tf32_flop_per_s": 494.7e12, "bf16_flop_per_s": 989.4e12},
    "A100": {"fp32_fma_per_s": 9.75e12, "tf32_flop_per_s": 156e12, "bf16_flop_per_s": 312e12},
    "cpu": {"fp32_fma_per_s": 2 * 3.0e9 * 16, "tf32_flop_per_s": None, "bf16_flop_per_s": None},
}

FULL = {
    "sweep_pairs": 10**8,
    "sweep_steps": 1000,
    "images": 50_000,
    "depth": 56,
    "image_shape": (32, 32, 3),
    "surface_batch": 10_000,
    "timed_points": 4,
    "grid": 51,
    "train_batch": 128,
    "fractal_scale": "paper",
}
TINY = {
    "sweep_pairs": 1 << 14,
    "sweep_steps": 100,
    "images": 256,
    "depth": 8,
    "image_shape": (32, 32, 3),
    "surface_batch": 128,
    "timed_points": 2,
    "grid": 5,
    "train_batch": 32,
    "fractal_scale": "quick",
}
# Seconds a section needs on an H200 (the estimates above), to skip what cannot fit.
ESTIMATE_S = {"sweep": 40, "surface": 100, "train": 90, "fractal": 100}
RELATIVE_TOLERANCE = 1e-2  # a precision's surface losses against float32's
SECTIONS = ("sweep", "surface", "train", "fractal")


def card() -> dict:
    import jax

    d = jax.devices()[0]
    kind = d.device_kind
    peak_key = next((k for k in PEAKS if k.lower() in kind.lower()), None)
    if peak_key is None and d.platform == "cpu":
        peak_key = "cpu"
    return {
        "device_kind": kind,
        "platform": d.platform,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "peak_row": peak_key,
        "peak": PEAKS.get(peak_key),
    }


def _header(name: str, info: dict) -> None:
    print(
        f"== {name}: {info['device_count']} x {info['device_kind']} ({info['platform']}), "
        f"jax {info['jax']}",
        flush=True,
    )


def _block(x):
    import jax

    return jax.block_until_ready(x)


def _timed(f, repeats: int = 1):
    """(best seconds, last result) of `repeats` calls of f."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = _block(f())
        best = min(best, time.perf_counter() - t)
    return best, out


# ----------------------------------------------------------------------------- 1. sweep


def _plain_runner(optimizer: str, steps: int):
    """jit(vmap(scan)) of the textbook update: jax.grad of a [2] point, optax, no checks."""
    import jax
    import optax

    from sandbox import landscapes, optim

    fn = landscapes.get("himmelblau").fn

    def one(x0, lr):
        opt = optim.make(optimizer, lr=lr)

        def step(carry, _):
            x, s = carry
            u, s = opt.update(jax.grad(fn)(x), s, x)
            return (optax.apply_updates(x, u), s), None

        (x, _), _ = jax.lax.scan(step, (x0, opt.init(x0)), None, length=steps)
        return x

    return jax.jit(jax.vmap(one))


def flops_per_pair_step(optimizer: str) -> float:
    """XLA's count of one update (gradient + Optax step) per (start, lr) pair."""
    import jax
    import jax.numpy as jnp
    import optax

    from sandbox import landscapes, optim

    fn = landscapes.get("himmelblau").fn
    b = 4096

    def update(x, lr):
        opt = optim.make(optimizer, lr=lr)
        s = opt.init(x)
        u, _ = opt.update(jax.grad(fn)(x), s, x)
        return optax.apply_updates(x, u)

    compiled = jax.jit(jax.vmap(update)).lower(jnp.ones((b, 2)), jnp.ones(b)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", float("nan"))) / b


HAND_COUNT = {"sgd": 18, "adam": 40}  # docs/performance.md: 14 + 2 FMAs; Adam ~20 more + sqrt


def section_sweep(cfg: dict, info: dict) -> dict:
    from sandbox import landscapes, sweep

    fn = landscapes.get("himmelblau").fn
    n, steps = cfg["sweep_pairs"], cfg["sweep_steps"]
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-6, 6, (n, 2)).astype(np.float32)
    lr = np.exp(rng.uniform(np.log(1e-4), np.log(5e-2), n)).astype(np.float32)
    fma_peak = (info["peak"] or {}).get("fp32_fma_per_s")
    out = {"pairs": n, "steps": steps}
    for opt in ("sgd", "adam"):
        warm = min(n, 1 << 21)  # the accelerator chunk: the full run reuses this compilation
        t0 = time.perf_counter()
        sweep.descend(fn, x0[:warm], optimizer=opt, steps=steps, lr=lr[:warm], progress=False)
        compile_s = time.perf_counter() - t0
        t_default, res = _timed(
            lambda opt=opt: sweep.descend(fn, x0, optimizer=opt, steps=steps, lr=lr, progress=False)
        )
        plain = _plain_runner(opt, steps)
        t0 = time.perf_counter()
        _block(plain(x0, lr))
        plain_first_s = time.perf_counter() - t0
        t_plain, ref = _timed(lambda plain=plain: plain(x0, lr))
        flops = flops_per_pair_step(opt)
        rate, rate_plain = n * steps / t_default, n * steps / t_plain
        share = rate * flops / 2 / fma_peak if fma_peak else None
        # Below 2 / lambda_max at Himmelblau's sharpest minimum runs settle, and the two
        # gradients (forward and reverse mode) end at the same points up to rounding.
        ok = (lr < 0.0149) & ~res.diverged & np.all(np.isfinite(np.asarray(ref)), axis=1)
        err = float(np.max(np.abs(res.x[ok] - np.asarray(ref)[ok]))) if ok.any() else None
        row = {
            "default_pair_steps_per_s": rate,
            "plain_pair_steps_per_s": rate_plain,
            "default_over_plain": rate / rate_plain,
            "default_s": t_default,
            "plain_s": t_plain,
            "default_first_chunk_s_with_compile": compile_s,
            "plain_first_call_s_with_compile": plain_first_s,
            "flops_per_pair_step_xla": flops,
            "flops_per_pair_step_hand": HAND_COUNT[opt],
            "fp32_fma_peak_share": share,
            "diverged_fraction": float(res.diverged.mean()),
            "max_abs_diff_vs_plain_finite_runs": err,
        }
        out[opt] = row
        print(
            f"  {opt:4s} sweep.descend {rate:.3e} pair-steps/s ({t_default:.2f} s)  plain "
            f"jit(vmap(scan)) {rate_plain:.3e} ({t_plain:.2f} s)  ratio {rate / rate_plain:.2f}  "
            f"flops/pair-step {flops:.0f} (XLA; hand count {HAND_COUNT[opt]})  FMA-peak share "
            + (f"{share:.3f}" if share is not None else "n/a (no peak for this card)")
            + f"  (goal: >= 0.5, and >= plain); settled runs: max |x - x_plain| {err:.1e}",
            flush=True,
        )
    return out


# ----------------------------------------------------------------------------- 2. surface

MODES = {  # name -> (jax.default_matmul_precision, sandbox.precision)
    "float32": ("highest", "float32"),
    "tf32": ("tensorfloat32", "float32"),
    "bfloat16": (None, "bfloat16"),
}


def _mode(name: str):
    import jax

    matmul, prec = MODES[name]
    ctx = jax.default_matmul_precision(matmul) if matmul else contextlib.nullcontext()
    return ctx, prec


def _network(cfg: dict):
    import jax

    from sandbox import surface
    from sandbox.models.resnet import ResNet

    kx, ky, ki, k1, k2 = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(kx, (cfg["images"], *cfg["image_shape"]))
    y = jax.random.randint(ky, (cfg["images"],), 0, 10)
    model = ResNet(depth=cfg["depth"], shortcut="A")
    v = jax.jit(model.init)(ki, x[:1])
    v = {"params": v["params"], "batch_stats": v["batch_stats"]}
    d1 = surface.filter_normalized_direction(k1, v["params"])
    d2 = surface.filter_normalized_direction(k2, v["params"])
    return model, v, x, y, (d1, d2)


def section_surface(cfg: dict, info: dict, deadline: "Deadline", reserve_s: float) -> dict:
    import jax

    from sandbox import surface

    model, v, x, y, dirs = _network(cfg)
    n_img, b = cfg["images"], min(cfg["surface_batch"], cfg["images"])
    coords = np.asarray([[0.0, 0.0], [0.5, 0.5], [-0.5, 0.25], [1.0, -1.0]])[: cfg["timed_points"]]
    # One point per device per call (the default at 50,000 images): the timed calls and the
    # grid share one compilation per precision.
    kw = dict(batch_size=b, progress=False, chunk_size=jax.local_device_count())
    out = {"images": n_img, "batch": b, "depth": cfg["depth"], "modes": {}}
    losses = {}
    for name in MODES:
        ctx, prec = _mode(name)
        with ctx:
            t0 = time.perf_counter()
            surface.evaluate(model, v, list(dirs), coords[:1], x, y, precision=prec, **kw)
            first_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            m = surface.evaluate(model, v, list(dirs), coords, x, y, precision=prec, **kw)
            secs = time.perf_counter() - t0
        per_point = secs / len(coords)
        losses[name] = m.loss
        out["modes"][name] = {
            "s_per_point": per_point,
            "images_per_s": n_img / per_point,
            "first_call_s_with_compile": first_s,
            "losses": m.loss.tolist(),
        }
        print(
            f"  {name:8s} {per_point:.3f} s per point ({n_img / per_point:,.0f} images/s; "
            f"first call with compilation {first_s:.1f} s)",
            flush=True,
        )
    for name in MODES:
        rel = float(np.max(np.abs(losses[name] - losses["float32"]) / np.abs(losses["float32"])))
        out["modes"][name]["max_rel_diff_vs_float32"] = rel
        print(f"  {name:8s} largest relative loss difference from float32: {rel:.2e}")
    within = [k for k in MODES if out["modes"][k]["max_rel_diff_vs_float32"] <= RELATIVE_TOLERANCE]
    best = min(within, key=lambda k: out["modes"][k]["s_per_point"])
    g = cfg["grid"]
    estimate = g * g * out["modes"][best]["s_per_point"]
    budget = deadline.left() - reserve_s
    out |= {"chosen": best, "tolerance": RELATIVE_TOLERANCE, "grid": g, "estimate_s": estimate}
    print(
        f"  fastest within {RELATIVE_TOLERANCE:g} of float32: {best}; {g} x {g} grid "
        f"estimated at {estimate:.0f} s (goal <= 300 s, aim 120 s); {budget:.0f} s available",
        flush=True,
    )
    rows = (
        g if estimate <= budget else int(max(1, budget // (g * out["modes"][best]["s_per_point"])))
    )
    xs = surface.axis(-1.0, 1.0, g)
    ctx, prec = _mode(best)
    with ctx:
        t0 = time.perf_counter()
        grid_coords = surface.plane_coords(xs, xs)[: rows * g]
        m = surface.evaluate(model, v, list(dirs), grid_coords, x, y, precision=prec, **kw)
        secs = time.perf_counter() - t0
    whole = rows == g
    out |= {
        "rows_run": rows,
        "grid_s": secs,
        "whole_grid": whole,
        "whole_grid_s": secs if whole else secs * g / rows,
        "grid_loss_min_max": [float(np.min(m.loss)), float(np.max(m.loss))],
    }
    print(
        f"  {rows} of {g} rows in {best}: {secs:.1f} s"
        + ("" if whole else f" (whole grid at this rate: {secs * g / rows:.0f} s; not run whole)"),
        flush=True,
    )
    return out


# ----------------------------------------------------------------------------- 3. train


def section_train(cfg: dict, info: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from sandbox import precision, train
    from sandbox.models.resnet import ResNet

    model = ResNet(depth=cfg["depth"], shortcut="A")
    kx, ky = jax.random.split(jax.random.key(1))
    n, bsz = cfg["images"], cfg["train_batch"]
    x = jax.random.normal(kx, (n, *cfg["image_shape"]))
    y = jax.random.randint(ky, (n,), 0, 10)
    steps = n // bsz
    tcfg = train.TrainConfig(epochs=1, batch_size=bsz)
    tx = train.make_optimizer(tcfg, steps)
    perm = jnp.arange(n)
    out = {"images": n, "batch": bsz, "steps": steps}
    for prec in precision.NAMES:
        state = train.init_state(model, tx, jax.random.key(0), cfg["image_shape"])
        step = train.make_train_step(model, tx, batch_size=bsz, do_augment=False, precision=prec)
        key = jax.random.key(2)
        t0 = time.perf_counter()
        state, (loss, _) = step(state, x, y, perm, 0, key)
        _block(loss)
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(steps):
            state, (loss, _) = step(state, x, y, perm, i, key)
        _block(loss)
        secs = time.perf_counter() - t0
        out[prec] = {"epoch_s": secs, "images_per_s": steps * bsz / secs, "first_step_s": first_s}
        out[prec]["final_loss"] = float(loss)
        label = "float32 (default matmul precision)" if prec == "float32" else prec
        print(
            f"  {label} epoch of {steps} steps x {bsz}: {secs:.2f} s "
            f"({steps * bsz / secs:,.0f} images/s; first step with compilation {first_s:.1f} s)",
            flush=True,
        )
    out["bfloat16_speedup"] = out["float32"]["epoch_s"] / out["bfloat16"]["epoch_s"]
    return out


# ----------------------------------------------------------------------------- 4. fractal


def section_fractal(cfg: dict, info: dict, out_dir: Path) -> dict:
    """The study's own compute and plot (not its run folder: a device machine's file system
    may lack the atomic folder exchange that `results.RunFolder` uses)."""
    from sandbox import plotting
    from studies import fractal as study

    scfg = study.PAPER if cfg["fractal_scale"] == "paper" else study.QUICK
    t0 = time.perf_counter()
    arrays, summary = study.compute(scfg)
    secs = time.perf_counter() - t0
    bd = summary["boundary_dimension"]
    (out_dir / "fractal_summary.json").write_text(json.dumps(summary, indent=1, default=float))
    names = []
    for name, fig in study.plot(arrays, scfg, summary).items():
        if len(names) < 2:  # at most 8 files come back from a device run
            plotting.save(fig, out_dir / f"fractal_{name}.png")
            names.append(name)
        else:
            plotting.plt.close(fig)
    print(
        f"  fractal ({cfg['fractal_scale']} scale: width {scfg.width}, {scfg.grid_n}^2 runs x "
        f"{scfg.steps} steps, {scfg.zoom_levels} zooms): {secs:.1f} s; box-counting dimensions "
        f"per view {[round(d, 3) for d in bd['per_level']]}, median {bd['measured']:.3f} "
        f"(paper: {bd['theory']}); figures {names}",
        flush=True,
    )
    return {"wall_s": secs, "boundary_dimension": bd, "figures": names}


# ----------------------------------------------------------------------------- driver


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU check of the script)")
    p.add_argument("--out", type=Path, default=Path("results/device"))
    p.add_argument("--budget", type=float, default=470.0, help="seconds for the whole run")
    p.add_argument(
        "--reserve", type=float, default=None, help="seconds kept after the surface grid"
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, in order")
    args = p.parse_args(argv)
    from sandbox import devices

    devices.use_all_cores()  # on CPU (the --tiny check): one device per core; GPUs: nothing
    sections = [s for s in args.sections.split(",") if s]
    bad = sorted(set(sections) - set(SECTIONS))
    if bad:
        p.error(f"argument --sections: unknown {bad}; known: {', '.join(SECTIONS)}")
    cfg = TINY if args.tiny else FULL
    deadline = Deadline(args.budget)
    args.out.mkdir(parents=True, exist_ok=True)
    info = card()
    report = {"card": info, "tiny": args.tiny, "sizes": cfg, "sections": {}}
    path = args.out / "device.json"
    later = (
        {s: ESTIMATE_S[s] for s in sections[sections.index("surface") + 1 :]}
        if ("surface" in sections)
        else {}
    )
    reserve = (
        args.reserve if args.reserve is not None else (0 if args.tiny else sum(later.values()))
    )
    for name in sections:
        _header(name, info)
        need = 0 if args.tiny else ESTIMATE_S[name]
        if deadline.left() < need:
            print(f"  skipped: {deadline.left():.0f} s left, the section needs about {need} s")
            report["sections"][name] = {"skipped": f"{deadline.left():.0f} s left"}
            continue
        t0 = time.perf_counter()
        try:
            if name == "sweep":
                r = section_sweep(cfg, info)
            elif name == "surface":
                r = section_surface(cfg, info, deadline, reserve)
            elif name == "train":
                r = section_train(cfg, info)
            else:
                r = section_fractal(cfg, info, args.out)
        except Exception as e:  # one section's failure must not lose the others' figures
            r = {"error": f"{type(e).__name__}: {e}"[:500]}
            print(f"  failed: {r['error']}", flush=True)
        r["section_s"] = time.perf_counter() - t0
        report["sections"][name] = r
        path.write_text(json.dumps(report, indent=1, default=float))
        print(f"  ({name}: {r['section_s']:.1f} s; {deadline.left():.0f} s of the budget left)")
    print(f"device run: results in {path}")
    return report


if __name__ == "__main__":
    main()
