"""`python -m sandbox.sweep run SPEC --store DIR [--lease S]`, `status DIR`, `show DIR [--plot]`,
`submit SPEC --store DIR --workers N [--executor slurm|local]`: bad input is one line on stderr
and exit status 2."""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sandbox import cli


def parser() -> argparse.ArgumentParser:
    p = cli.Parser(  # usage errors: one line, exit status 2 (its subcommands' too)
        prog="python -m sandbox.sweep",
        description="Sweeps as jobs: a TOML spec computed into a store by any number of workers.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="compute the spec into DIR (with any other jobs on DIR)")
    r.add_argument("spec", type=Path, help="the TOML spec (examples/sweep.toml)")
    r.add_argument("--store", type=Path, required=True, help="the sweep's folder")
    r.add_argument("--lease", type=float, help="seconds a chunk claim lasts unrenewed (60)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    s = sub.add_parser("status", help="chunks done, leased and by whom, runs/s, time left")
    s.add_argument("store", type=Path)
    w = sub.add_parser("show", help="basin fractions, divergence, steps to tol per combination")
    w.add_argument("store", type=Path)
    w.add_argument("--plot", action="store_true", help="write DIR/basins.png, DIR/fractions.png")
    m = sub.add_parser("submit", help="submit N workers running the spec (submitit)")
    m.add_argument("spec", type=Path)
    m.add_argument("--store", type=Path, required=True)
    m.add_argument("--workers", type=int, required=True, help="jobs (one per device on GPUs)")
    m.add_argument("--executor", choices=["slurm", "local"], default="slurm")
    m.add_argument("--lease", type=float)
    m.add_argument("--partition", help="Slurm partition")
    m.add_argument("--timeout-min", type=int, default=60, help="each worker's time limit")
    m.add_argument("--gpus-per-worker", type=int, default=0, help="GPUs per worker (Slurm)")
    m.add_argument("--wait", action="store_true", help="wait for every worker to finish")
    return p


def _main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    from sandbox import sweep

    lease = getattr(args, "lease", None)
    if lease is not None and not 0 < lease < 1e6:
        raise ValueError(f"`--lease` must be a number of seconds in (0, 1e6), got {lease}")
    if getattr(args, "workers", 1) < 1:
        raise ValueError(f"`--workers` must be an integer >= 1, got {args.workers}")
    if getattr(args, "timeout_min", 1) < 1:
        raise ValueError(f"`--timeout-min` must be an integer >= 1, got {args.timeout_min}")
    if getattr(args, "gpus_per_worker", 0) < 0:
        raise ValueError(f"`--gpus-per-worker` must be an integer >= 0, got {args.gpus_per_worker}")
    if args.command == "run":
        r = sweep.run(args.spec, args.store, lease=args.lease, progress=not args.no_progress)
        print(f"sweep: {len(r.x)} runs in {args.store}")
    elif args.command == "status":
        print(sweep.status(args.store))
    elif args.command == "show":
        print(sweep.show(args.store, plot=args.plot))
    else:
        slurm = {"timeout_min": args.timeout_min}
        if args.partition:
            slurm["slurm_partition"] = args.partition
        if args.gpus_per_worker:
            slurm["gpus_per_node"] = args.gpus_per_worker
            slurm["tasks_per_node"] = 1
        jobs = sweep.submit(
            args.spec,
            args.store,
            workers=args.workers,
            executor=args.executor,
            lease=args.lease,
            wait=args.wait,
            **slurm,
        )
        print(f"submitted {len(jobs)} workers: {', '.join(j.job_id for j in jobs)}")
        if args.wait:
            print(sweep.status(args.store))
    sys.stdout.flush()


main = cli.command(_main)

if __name__ == "__main__":
    main()
