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
Options: every Config field (--data, --depth, --shortcut, --epochs, --batch-size, --optimizer,
--pair/--no-pair, ...; `--help` lists them), --data-dir (with --data cifar10 only),
--no-progress; --precision float32|bfloat16 (bfloat16: mixed precision, sandbox.precision; a
bfloat16 run is another run, in results/train_resnet-bfloat16 by default: its checkpoints
never resume a float32 run's, nor the other way round).
"""

import dataclasses
import time
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np

from sandbox import cli, config, data, optim, plotting, precision, train
from sandbox.models import resnet

NAME = "train_resnet"
DataSet = data.Name  # a field named `data` hides the module in the class body
Precision = precision.Name


@dataclasses.dataclass(frozen=True)
class Config(config.Checked):
    seed: int = config.seed()  # seed of the initial weights and the batches
    data: DataSet = "digits"  # the data set
    # The network.
    depth: resnet.Depth = 56  # 6n + 2 layers
    shortcut: Literal[resnet.SHORTCUTS] = "A"  # the skip connections
    norm: bool = True  # batch norm
    pair: bool = True  # also train the same network with shortcut "none"
    # Training.
    epochs: int = config.count(30, 10_000)  # epochs of training
    batch_size: int = config.count(128, 2**16)  # images per SGD step
    optimizer: Literal[tuple(optim.names())] = "nesterov"  # sandbox.optim's name
    lr: float = config.field(0.1, gt=0)  # peak learning rate
    momentum: float = config.field(0.9, 0, lt=1)  # for optimizers that have one
    weight_decay: float = config.field(5e-4, 0)  # L2 coefficient added to the gradient
    schedule: Literal[train.SCHEDULES] = "cosine"  # the learning-rate schedule
    warmup_epochs: int = config.count(0, 10_000, lo=0)  # epochs of linear warm-up
    augment: bool | None = None  # random crop and flip; None: on for cifar10 only
    precision: Precision = "float32"  # bfloat16: mixed precision (sandbox.precision)
    # Checkpoints kept for good: every keep_every-th epoch and epoch 0 (0: none of them); the
    # landscape study's PCA path reads every second one.
    keep_every: int = config.count(2, 10_000, lo=0)  # every keep_every-th epoch's checkpoint
    keep_last: int = config.count(3, 10_000)  # the last checkpoints kept
    target_accuracy: float = config.field(0.97, 0, 1)  # expected with shortcuts on the digits

    RELATIONS = (config.relation("warmup_epochs < epochs", lambda c: c.warmup_epochs < c.epochs),)

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


def _report(cfg: Config, summary: dict) -> list[str]:
    return [
        f"ResNet-{cfg.depth} shortcut {s}: test accuracy {summary[s]['test_accuracy']:.4f} "
        f"({summary[s]['params']:,} parameters, {summary[s]['train_wall_s']:.0f} s)"
        for s in cfg.shortcuts()
    ]


main = cli.study_main(
    __name__,
    lambda c, out, args: compute(c, out, data_dir=args.data_dir, progress=not args.no_progress),
    plot,
    options=cli.DataOptions,
    prepare=cli.check_data_dir,
    quick_help="ResNet-8 for 2 epochs (seconds)",
    report=_report,
    # A bfloat16 run is another run (its checkpoints say so): by default a folder of its own.
    folder=lambda cfg, args: NAME if cfg.precision == "float32" else f"{NAME}-{cfg.precision}",
)


if __name__ == "__main__":
    main()
