"""Train a CIFAR ResNet: by default ResNet-56 on the digits, with and without skip connections.

The network of He et al. 2016 (sandbox.models.resnet) trained with Optax (SGD with Nesterov
momentum 0.9, weight decay 5e-4, cosine schedule) on scikit-learn's 8x8 digits, which need
no download (or on CIFAR-10 from a local folder: --data cifar10 --data-dir DIR). By
default (`pair`) the same network is trained a second time without shortcuts, as in Li et
al. 2018, and both accuracies are reported; `--no-pair` trains one. Measured: train and
test loss and accuracy per epoch, final test accuracy against the 97% target for ResNet-56
with shortcuts, parameter counts and wall times.

Each network trains in its own folder, <out>/<shortcut>/, with metrics.jsonl and orbax
checkpoints/ (the last three epochs and every `keep_every`-th, epoch 0 included: the
landscape study reuses these networks and reads its PCA path from them). A run that was
interrupted continues from its last checkpoint when started again with the same command,
and ends with the same parameters.

Run: make train_resnet (ResNet-56 with and without shortcuts on the digits, 30 epochs each:
                        test accuracy 97.8% and 65.2% with seed 0; 187 s on 2 AVX-512
                        cores, 425 s with other jobs on them; `make resnet56` is the
                        same run)
     smoke: python -m studies.train_resnet --quick (ResNet-8, 2 epochs; about 15 seconds)
Options: --data, --data-dir, --depth, --shortcut, --epochs, --batch-size, --optimizer,
--pair/--no-pair, --precision float32|bfloat16 (bfloat16: mixed precision, sandbox.precision;
a bfloat16 run is another run, in results/train_resnet-bfloat16 by default: its checkpoints
never resume a float32 run's, nor the other way round).
"""

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from sandbox import cli, data, optim, plotting, train
from sandbox.models import resnet

NAME = "train_resnet"


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    data: str = "digits"  # digits | cifar10 | synthetic
    # The network.
    depth: int = 56
    shortcut: str = "A"  # A | B | none
    norm: bool = True
    pair: bool = True  # also train the same network with shortcut "none"
    # Training.
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "nesterov"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | constant
    warmup_epochs: int = 0
    augment: bool | None = None  # random crop and flip; None: on for cifar10 only
    precision: str = "float32"  # or "bfloat16": mixed precision (sandbox.precision)
    # Checkpoints kept for good: every keep_every-th epoch and epoch 0 (0: none of them); the
    # landscape study's PCA path reads every second one.
    keep_every: int = 2
    keep_last: int = 3
    target_accuracy: float = 0.97  # test accuracy expected with shortcuts on the digits

    def __post_init__(self):
        if self.data not in data.NAMES:
            raise ValueError(f"`data` must be one of {', '.join(data.NAMES)}, got {self.data!r}")
        resnet.check_depth(self.depth)
        resnet.check_shortcut(self.shortcut)
        for name in ("keep_every", "keep_last"):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, int)
                or v < (1 if name == "keep_last" else 0)
            ):
                raise ValueError(f"`{name}` must be a non-negative integer, got {v!r}")
        if not 0 <= self.target_accuracy <= 1:
            raise ValueError(f"`target_accuracy` must be in [0, 1], got {self.target_accuracy}")
        self.train_config()  # validates the training fields

    def train_config(self) -> train.TrainConfig:
        augment = self.data == "cifar10" if self.augment is None else self.augment
        return train.TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            warmup_epochs=self.warmup_epochs,
            augment=augment,
            seed=self.seed,
            precision=self.precision,
        )

    def shortcuts(self) -> tuple[str, ...]:
        if self.pair and self.shortcut != "none":
            return (self.shortcut, "none")
        return (self.shortcut,)


QUICK = Config(depth=8, epochs=2, pair=True, keep_every=1)


def compute(
    cfg: Config, out: Path, *, data_dir: str | None = None, progress: bool = True
) -> tuple[dict, dict]:
    """Trains each variant in out/<shortcut>/ (resuming where a checkpoint exists)."""
    ds = data.load(cfg.data, data_dir=data_dir, seed=cfg.seed)
    tcfg = cfg.train_config()
    train.steps_per_epoch(len(ds.x_train), cfg.batch_size)  # a too-large batch fails first
    keep = sorted({0, *range(0, cfg.epochs + 1, cfg.keep_every)}) if cfg.keep_every else []
    arrays, summary = {}, {}
    for shortcut in cfg.shortcuts():
        model = resnet.ResNet(
            depth=cfg.depth, shortcut=shortcut, norm=cfg.norm, num_classes=ds.num_classes
        )
        start = time.perf_counter()
        state, hist = train.fit(
            model,
            ds,
            tcfg,
            workdir=out / shortcut,
            keep_last=cfg.keep_last,
            keep_epochs=keep,
            progress=progress,
            label=f"ResNet-{cfg.depth} shortcut {shortcut}: ",
        )
        session_s = time.perf_counter() - start
        for k, v in hist._asdict().items():
            arrays[f"{shortcut}/{k}"] = v
        final = float(hist.test_acc_E[-1]) if len(hist.test_acc_E) else float("nan")
        summary[shortcut] = {
            "network": f"ResNet-{cfg.depth}, shortcut {shortcut}, "
            f"batch norm {'on' if cfg.norm else 'off'}",
            "params": resnet.num_params(state["params"]),
            "test_accuracy": final,
            "best_test_accuracy": float(np.max(hist.test_acc_E)) if len(hist.test_acc_E) else None,
            "train_accuracy": float(hist.train_acc_E[-1]) if len(hist.train_acc_E) else None,
            "test_loss": float(hist.test_loss_E[-1]) if len(hist.test_loss_E) else None,
            "epochs": cfg.epochs,
            "train_wall_s": round(float(np.sum(hist.epoch_s_E)), 1),
            "session_wall_s": round(session_s, 1),
            "checkpoints": str(out / shortcut / "checkpoints"),
        }
    summary["data"] = {
        "name": ds.name,
        "train": len(ds.x_train),
        "test": len(ds.x_test),
        "image_shape": list(ds.image_shape),
    }
    if cfg.data == "digits" and cfg.depth == 56 and cfg.shortcut != "none":
        summary["target"] = {
            "measured": summary[cfg.shortcut]["test_accuracy"],
            "target": cfg.target_accuracy,
            "met": summary[cfg.shortcut]["test_accuracy"] >= cfg.target_accuracy,
            "note": f"test accuracy of ResNet-{cfg.depth} with shortcut {cfg.shortcut}",
        }
    return arrays, summary


def plot(arrays: dict, cfg: Config, summary: dict) -> dict:
    figs = {}
    with plt.style.context(plotting.STYLE):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(plotting.FULL, 2.8), layout="constrained")
        for i, shortcut in enumerate(cfg.shortcuts()):
            epoch = arrays[f"{shortcut}/epoch_E"]
            if not len(epoch):
                continue
            color = f"C{i}"
            name = f"shortcut {shortcut}"
            ax1.semilogy(epoch, arrays[f"{shortcut}/train_loss_E"], "--", color=color, lw=1)
            ax1.semilogy(epoch, arrays[f"{shortcut}/test_loss_E"], "-", color=color, label=name)
            ax2.plot(epoch, 100 * arrays[f"{shortcut}/train_acc_E"], "--", color=color, lw=1)
            ax2.plot(epoch, 100 * arrays[f"{shortcut}/test_acc_E"], "-", color=color, label=name)
        ax1.set(xlabel="epoch", ylabel="cross-entropy (log)", title="loss (dashed: train)")
        ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy (dashed: train)")
        if cfg.data == "digits":
            ax2.axhline(100 * cfg.target_accuracy, color="k", ls=":", lw=0.8)
        ax2.set_ylim(top=100)
        ax1.legend()
        fig.suptitle(f"ResNet-{cfg.depth} on {summary.get('data', {}).get('name', cfg.data)}")
        figs["curves"] = fig
    return figs


def _parse(argv: Sequence[str] | None):
    p = cli.study_parser(NAME, __doc__, quick_help="ResNet-8 for 2 epochs (seconds)")
    p.add_argument(
        "--pair",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also train the network without shortcuts (default: on)",
    )
    p.add_argument("--data", default=None, help=f"one of {', '.join(data.NAMES)}")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder (else $CIFAR10_DIR)")
    p.add_argument("--depth", type=int, default=None, help="6n + 2: 20, 32, 44, 56, 110")
    p.add_argument("--shortcut", default=None, help="A, B or none")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--optimizer", default=None, help=f"one of {', '.join(optim.names())}")
    cli.add_precision(p, "training and evaluation")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


@cli.command
def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    cfg = QUICK if args.quick else Config()
    names = ("seed", "data", "depth", "shortcut", "epochs", "batch_size", "optimizer", "pair",
             "precision")  # fmt: skip
    cfg = dataclasses.replace(cfg, **cli.given(args, names))
    # A bfloat16 run is another run (its checkpoints say so): by default a folder of its own.
    folder = NAME if cfg.precision == "float32" else f"{NAME}-{cfg.precision}"
    out = cli.run_dir(args.out, folder, args.quick)
    out, cfg, arrays, summary = cli.run_study(
        NAME,
        args,
        cfg,
        lambda c: compute(c, out, data_dir=args.data_dir, progress=not args.no_progress),
        plot,
        out=out,
    )
    for shortcut in cfg.shortcuts():
        s = summary[shortcut]
        print(
            f"{NAME}: ResNet-{cfg.depth} shortcut {shortcut}: test accuracy "
            f"{s['test_accuracy']:.4f} ({s['params']:,} parameters, {s['train_wall_s']:.0f} s)"
        )
    print(f"{NAME}: results in {out}")


if __name__ == "__main__":
    main()
