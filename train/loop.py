"""The trainer: patches -> augmentation -> deeply supervised loss -> optimiser, epoch after epoch.

One run writes, under `work_dir/NAME/` (NAME = "arch.tag"):
  - `state.safetensors` + `state.json`: the training checkpoint (weights, optimiser and loss-scaler
    state, RNG, history), written every epoch and used by `resume`; tensors as safetensors and the
    rest as JSON, so resuming never unpickles anything;
  - `log.csv`: one row per epoch; `curves.png`: training loss and validation Dice per epoch.
At the end, the final weights and a complete card (contract, training command, code revision,
time, data, validation metrics through the service's own path) are exported to `out_dir` with
`model_zoo.registry.save_checkpoint`; optimiser state never goes there.

Validation after each epoch runs the whole prepared validation volumes through
`service.sliding_window.sliding_window_inference` with the card's inference defaults and scores
the argmax on the model grid (fast; nnU-Net's "pseudo Dice"). The final metrics on the card come
from `train.evaluate.evaluate_case`: the service's full path, scored on the input grid.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from model_zoo.architectures import create_network
from model_zoo.card import (
    InferenceDefaults,
    InputContract,
    ModelCard,
    Training,
    current_framework_versions,
)
from model_zoo.preprocessing import hu_to_input_units
from model_zoo.registry import CHECKPOINT_DIR, LoadedModel, save_checkpoint
from service.sliding_window import sliding_window_inference
from train.augment import AugmentConfig, Augmenter
from train.data import (
    CaseSource,
    PatchSampler,
    PreparedCase,
    find_cases,
    phantom_sources,
    prepare_cases,
    split_cases,
)
from train.losses import DeepSupervisionLoss, aux_weight_factor
from train.metrics import summarise
from train.widen import WIDENABLE_ARCHS, widen_unet3d_ds

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Validation phantoms are drawn far from the training seeds so the two never overlap.
VALIDATION_PHANTOM_SEED = 100_000
# The service's default air threshold for window skipping (Settings.skip_air_hu): validate the same.
SERVICE_SKIP_AIR_HU = -500.0
PHANTOM_LICENSE = "Apache-2.0 (weights trained here on procedural phantoms; no third-party data)"
# How service/confidence.py turns the deep-supervision heads into a confidence; `train.evaluate
# --confidence --record PREFIX` adds how well it finds wrong voxels (PREFIX_confidence_auroc).
CONFIDENCE_METHOD = ("clip(2 * min_k a_k - 1, 0, 1) over the main output and the deep-supervision "
                     "heads (service/confidence.py); AUROC of 1 - confidence for finding the wrong "
                     "voxels in metrics *_confidence_auroc.")


@dataclass
class TrainConfig:
    """Everything a run depends on. Sizes (D, H, W) in voxels, spacing (x, y, z) in mm, HU."""

    arch: str = "unet3d_ds"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    tag: str = "custom"
    # data: synthetic phantoms (count) or a path in a format
    synthetic: int = 0
    phantom_spacing_mm: float | None = None  # None: phantoms on their own scanner grid
    data: str | None = None
    data_format: str = "msd"
    n_val: int = 2
    # input contract
    spacing_xyz_mm: tuple[float, float, float] = (3.0, 3.0, 3.0)
    patch_size_dhw: tuple[int, int, int] = (64, 64, 64)
    hu_window: tuple[float, float] = (-200.0, 300.0)
    orientation: str = "LPS"
    crop_to_body: bool = False
    antialias: bool = True  # block-average the CT onto the grid; labels become liver fractions
    # optimisation
    epochs: int = 50
    iters_per_epoch: int = 50
    batch_size: int = 2
    optimizer: str = "adamw"  # "adamw" or "sgd" (nnU-Net: momentum 0.99, Nesterov)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    poly_exponent: float = 0.9  # lr_t = lr (1 - t/T)^0.9 per epoch, both optimisers; 0: constant
    grad_clip: float = 12.0  # nnU-Net's gradient-norm clip
    deep_supervision: bool = True
    ds_weights: str | list[float] = "dsn"
    ds_decay: str = "none"
    oversample_foreground: float = 0.33
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val_every: int = 1
    # run
    seed: int = 0
    # processes preparing the cases; they are spawned, so a script that calls Trainer needs the
    # usual `if __name__ == "__main__":` guard (or data_workers=1)
    data_workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    device: str = "auto"
    amp: bool = True  # used on CUDA only
    out_dir: str = str(CHECKPOINT_DIR)
    work_dir: str = "runs"
    command: str = ""
    final_evaluation: bool = True
    init_from: str | None = None  # start from this checkpoint's weights (a name in out_dir)

    @property
    def name(self) -> str:
        """The checkpoint name "arch.tag"."""
        return f"{self.arch}.{self.tag}"

    def contract(self) -> InputContract:
        """The input contract the exported card declares."""
        return InputContract(
            spacing_xyz_mm=self.spacing_xyz_mm,
            orientation=self.orientation,
            hu_window=self.hu_window,
            normalisation="window01",
            patch_size_dhw=self.patch_size_dhw,
            crop_to_body=self.crop_to_body,
            antialias=self.antialias,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass
class EpochRecord:
    """One row of log.csv. loss_terms: the last iteration-averaged loss of each output (main first)."""

    epoch: int
    train_loss: float
    loss_terms: list[float]
    val_dice: float | None
    lr: float
    aux_factor: float
    seconds: float


@dataclass
class TrainResult:
    """What a run produced: the exported card (None when nothing was exported), history, paths."""

    card: ModelCard | None
    history: list[EpochRecord]
    run_dir: Path
    seconds: float


def resolve_device(device: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; anything else as torch reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def code_revision() -> str:
    """`git rev-parse HEAD` of this checkout (+ "-dirty" with uncommitted changes), or "unknown"."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head or "unknown"


def select_cases(config: TrainConfig) -> tuple[list[CaseSource], list[CaseSource], str]:
    """(training sources, validation sources, a sentence describing the data for the card)."""
    if config.synthetic > 0:
        spacing = config.phantom_spacing_mm
        train_sources = phantom_sources(config.synthetic, 0, spacing)
        val_sources = phantom_sources(config.n_val, VALIDATION_PHANTOM_SEED, spacing)
        grid = "their own scanner grids" if spacing is None else f"a {spacing:g} mm grid"
        text = (f"{config.synthetic} synthetic phantoms (train.phantoms.make_phantom, seeds 0-"
                f"{config.synthetic - 1}, drawn on {grid}); validated on {config.n_val} more (seeds "
                f"{VALIDATION_PHANTOM_SEED}-{VALIDATION_PHANTOM_SEED + config.n_val - 1})")
        return train_sources, val_sources, text
    if not config.data:
        raise ValueError("no training data: give --synthetic N or --data PATH")
    cases = find_cases(config.data, config.data_format)
    train_sources, val_sources = split_cases(cases, config.n_val, config.seed)
    text = (f"{config.data_format} data at {config.data}: {len(train_sources)} training and "
            f"{len(val_sources)} validation cases; liver = label >= 1")
    return train_sources, val_sources, text


def _optimizer(config: TrainConfig, network: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(network.parameters(), lr=config.lr, momentum=0.99, nesterov=True,
                               weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}: use adamw or sgd")


def poly_lr(config: TrainConfig, epoch: int) -> float:
    """nnU-Net's polynomial decay, per epoch (0-based): lr (1 - epoch/epochs) ** exponent."""
    return config.lr * (1 - epoch / config.epochs) ** config.poly_exponent


def _atomic(path: Path, write: Callable[[str], object]) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Trainer:
    """Runs one TrainConfig: `fit()` trains (resuming if asked), validates, logs and exports."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.device = resolve_device(config.device)
        self.amp = config.amp and self.device.type == "cuda"
        self.run_dir = Path(config.work_dir) / config.name
        self.contract = config.contract()
        torch.manual_seed(config.seed)  # the initial weights
        self.network = create_network(config.arch, **config.arch_kwargs).to(self.device)
        if config.init_from:
            self._initialise_from(config.init_from)
        self.optimizer = _optimizer(config, self.network)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.loss = DeepSupervisionLoss(config.ds_weights)
        self.augmenter = Augmenter(config.augment)
        self.generator = torch.Generator().manual_seed(config.seed)  # patches and augmentation
        self.history: list[EpochRecord] = []
        self.seconds_before = 0.0  # training time of earlier sessions of a resumed run
        self.code_revision = code_revision()  # the code this session trains with, not the code at export
        self._start = time.perf_counter()
        self.train_sources, self.val_sources, self.data_description = select_cases(config)
        self.train_cases: list[PreparedCase] = []
        self.val_cases: list[PreparedCase] = []

    def _initialise_from(self, name: str) -> None:
        """Fine-tuning: start from a checkpoint's weights; same architecture, and the same widths or
        (unet3d_ds) whole multiples of them, widened so the network starts as the checkpoint."""
        from model_zoo.registry import load_model

        source = load_model(name, self.config.out_dir)
        card, config = source.card, self.config
        features = config.arch_kwargs.get("features")
        mismatch = (f"--init-from {name}: it is a {card.arch} {card.arch_kwargs}, this run trains a "
                    f"{config.arch} {config.arch_kwargs}")
        if (card.arch, card.arch_kwargs) == (config.arch, config.arch_kwargs):
            state, how = source.network.state_dict(), ""
        elif (card.arch == config.arch and card.arch in WIDENABLE_ARCHS and "features" in card.arch_kwargs
              and {**card.arch_kwargs, "features": features} == config.arch_kwargs):
            try:
                state = widen_unet3d_ds(source.network, self.network, card.arch_kwargs["features"],
                                        features, seed=config.seed)
            except ValueError as error:
                raise ValueError(f"{mismatch} ({error})") from error
            how = f", widened {card.arch_kwargs['features']} -> {features}"
        else:
            raise ValueError(f"{mismatch} (only a unet3d_ds's features may differ)")
        self.network.load_state_dict(state, strict=True)
        log.info("initialised %s from the weights of %s%s", config.name, name, how)

    # -- data ------------------------------------------------------------------------------
    def load_data(self) -> None:
        """Prepare every case onto the model grid (once, kept in memory)."""
        start = time.perf_counter()
        seed, workers = self.config.seed, self.config.data_workers
        cache = self.run_dir / "prepared"  # a resumed or repeated run reads them back
        self.train_cases = prepare_cases(self.train_sources, self.contract, seed, workers, cache)
        self.val_cases = prepare_cases(self.val_sources, self.contract, seed + 1, workers, cache)
        voxels = sum(c.image.size for c in self.train_cases + self.val_cases)
        log.info("prepared %d training and %d validation cases (%.1f Mvoxels) in %.1f s",
                 len(self.train_cases), len(self.val_cases), voxels / 1e6, time.perf_counter() - start)

    # -- one epoch -------------------------------------------------------------------------
    def train_epoch(self, epoch: int, sampler: PatchSampler) -> EpochRecord:
        """`iters_per_epoch` optimiser steps; returns the epoch's record (without validation)."""
        config = self.config
        start = time.perf_counter()
        lr = poly_lr(config, epoch) if config.poly_exponent > 0 else config.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        aux = aux_weight_factor(epoch, config.epochs, config.ds_decay)
        self.network.train()
        total, terms_sum = 0.0, None
        bar = tqdm(range(config.iters_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}",
                   leave=False, disable=None, dynamic_ncols=True)
        for _ in bar:
            image, label = sampler.sample(self.generator)
            image, label = image.to(self.device), label.to(self.device)
            image, label = self.augmenter(image, label, self.generator)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                outputs = self.network(image, deep_supervision=config.deep_supervision)
            loss = self.loss(outputs, label, aux)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.network.parameters(), config.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            value = float(loss.detach())
            total += value
            terms = np.array(self.loss.last_terms)
            terms_sum = terms if terms_sum is None else terms_sum + terms
            bar.set_postfix(loss=f"{value:.3f}")
        n = config.iters_per_epoch
        return EpochRecord(epoch=epoch + 1, train_loss=total / n,
                           loss_terms=[float(t) for t in terms_sum / n], val_dice=None, lr=lr,
                           aux_factor=aux, seconds=time.perf_counter() - start)

    def validate(self) -> float:
        """Mean Dice of the argmax over the validation volumes, on the model grid (service windows)."""
        defaults = InferenceDefaults()
        network = self.network.eval()

        def predictor(window: torch.Tensor) -> torch.Tensor:
            return torch.softmax(network(window, deep_supervision=False).float(), dim=1)

        scores = []
        for case in self.val_cases:
            image = torch.from_numpy(case.image)[None, None].to(self.device)
            result = sliding_window_inference(
                image, self.contract.patch_size_dhw, predictor, overlap=defaults.overlap,
                batch_size=defaults.window_batch_size, mode=defaults.mode,
                sigma_scale=defaults.sigma_scale,
                skip_below=hu_to_input_units(SERVICE_SKIP_AIR_HU, self.contract),
                autocast=self.amp,
            )
            prediction = result.main[0].argmax(0).cpu().numpy() == 1
            reference = case.label > 0.5  # a 0/1 mask or liver fractions
            size = prediction.sum() + reference.sum()
            scores.append(1.0 if size == 0 else 2.0 * float((prediction & reference).sum()) / size)
        self.network.train()
        return float(np.mean(scores)) if scores else float("nan")

    # -- checkpoints, logs -----------------------------------------------------------------
    def save_state(self) -> None:
        """Write the training checkpoint (weights + optimiser + RNG + history) atomically."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        optimizer = self.optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, state in optimizer["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"optimizer.{pid}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(pid), {})[key] = value
        tensors["rng.generator"] = self.generator.get_state()
        meta = {
            "name": self.config.name,
            "epoch": len(self.history),
            "config": self.config.to_json(),
            "optimizer_param_groups": optimizer["param_groups"],
            "optimizer_scalars": scalars,
            "scaler": self.scaler.state_dict(),
            "history": [dataclasses.asdict(r) for r in self.history],
            "seconds": self.seconds_before + self._elapsed(),
        }
        _atomic(self.run_dir / "state.safetensors", lambda tmp: save_file(tensors, tmp))
        _atomic(self.run_dir / "state.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))

    def load_state(self, directory: Path) -> None:
        """Restore a training checkpoint written by `save_state`; checks it is the same network."""
        meta = json.loads((directory / "state.json").read_text())
        saved = meta["config"]
        current = self.config.to_json()
        defaults = {"antialias": False}  # runs from before the option trained without it
        for key in ("arch", "arch_kwargs", "spacing_xyz_mm", "patch_size_dhw", "hu_window", "optimizer",
                    "antialias"):
            was = saved.get(key, defaults.get(key))
            if was != current[key]:
                raise ValueError(f"cannot resume {directory}: it was trained with {key}={was!r}, "
                                 f"this run has {current[key]!r}")
        tensors = load_file(directory / "state.safetensors")
        model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
        self.network.load_state_dict(model, strict=True)
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = value.to(self.device) if value.ndim else value
        for pid, values in meta["optimizer_scalars"].items():
            state.setdefault(int(pid), {}).update(values)
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})
        if meta["scaler"]:
            self.scaler.load_state_dict(meta["scaler"])
        self.generator.set_state(tensors["rng.generator"])
        self.history = [EpochRecord(**r) for r in meta["history"]]
        self.seconds_before = float(meta["seconds"])
        log.info("resumed %s at epoch %d of %d", directory, len(self.history), self.config.epochs)

    def write_log(self) -> None:
        """log.csv (one row per epoch) and curves.png (loss and validation Dice)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        n_terms = max((len(r.loss_terms) for r in self.history), default=0)
        with open(self.run_dir / "log.csv", "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["epoch", "train_loss", *[f"loss_out{i}" for i in range(n_terms)],
                             "val_dice", "lr", "aux_factor", "seconds"])
            for r in self.history:
                terms = [f"{t:.5f}" for t in r.loss_terms] + [""] * (n_terms - len(r.loss_terms))
                writer.writerow([r.epoch, f"{r.train_loss:.5f}", *terms,
                                 "" if r.val_dice is None else f"{r.val_dice:.4f}", f"{r.lr:.3g}",
                                 f"{r.aux_factor:.3f}", f"{r.seconds:.1f}"])
        plot_curves(self.history, self.run_dir / "curves.png", self.config.name)

    # -- the run ---------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return time.perf_counter() - self._start

    def fit(self, resume: bool | str | Path = False) -> TrainResult:
        """Train until `config.epochs`, then export weights and card to `config.out_dir`."""
        self._start = time.perf_counter()
        if resume:
            directory = self.run_dir if resume is True else Path(resume)
            if not (directory / "state.json").is_file():
                raise FileNotFoundError(f"nothing to resume: {directory / 'state.json'} does not exist")
            self.load_state(directory)
        if not self.train_cases:
            self.load_data()
        sampler = PatchSampler(self.train_cases, self.config.patch_size_dhw, self.config.batch_size,
                               self.contract, oversample_foreground=self.config.oversample_foreground)
        config = self.config
        log.info("training %s on %s: %d epochs x %d iterations, batch %d, patch %s",
                 config.name, self.device, config.epochs, config.iters_per_epoch, config.batch_size,
                 config.patch_size_dhw)
        for epoch in range(len(self.history), config.epochs):
            record = self.train_epoch(epoch, sampler)
            last = epoch + 1 == config.epochs
            if self.val_cases and ((epoch + 1) % config.val_every == 0 or last):
                start = time.perf_counter()
                record.val_dice = self.validate()
                record.seconds += time.perf_counter() - start
            self.history.append(record)
            log.info("epoch %d/%d: loss %.4f, val Dice %s, lr %.2e, %.1f s", record.epoch,
                     config.epochs, record.train_loss,
                     "-" if record.val_dice is None else f"{record.val_dice:.4f}", record.lr,
                     record.seconds)
            self.save_state()
            self.write_log()
        card = self.export()
        return TrainResult(card=card, history=self.history, run_dir=self.run_dir,
                           seconds=self.seconds_before + self._elapsed())

    def card(self, metrics: dict[str, float] | None = None) -> ModelCard:
        """The card of the current weights (metrics as given)."""
        config = self.config
        flips = tuple(a for a in config.augment.flip_axes) if config.augment.p_flip > 0 else ()
        synthetic_only = config.synthetic > 0  # --synthetic wins over --data
        return ModelCard(
            name=config.name,
            arch=config.arch,
            arch_kwargs=config.arch_kwargs,
            input=self.contract,
            # nnU-Net allows test-time mirroring over the axes flipped in training, and only those.
            inference=InferenceDefaults(mirror_axes=flips),
            training=Training(
                data=self.data_description,
                epochs=len(self.history),
                seconds=round(self.seconds_before + self._elapsed(), 1),
                command=config.command or f"train.loop.Trainer({config.to_json()!r})",
                code_revision=self.code_revision,
                seed=config.seed,
                device=str(self.device),
            ),
            metrics=metrics or {},
            confidence=CONFIDENCE_METHOD,
            intended_use=("Trained on synthetic phantoms only. " if synthetic_only else "")
            + "Research and testing of the liverseg service; not a medical device, not for clinical use.",
            # Weights trained on someone's CT inherit that data's terms, which only its owner can state.
            license=PHANTOM_LICENSE if synthetic_only else "",
            framework_versions=current_framework_versions(),
        )

    def export(self) -> ModelCard:
        """Score the final weights on the validation cases (service path) and save weights + card."""
        metrics: dict[str, float] = {}
        dices = [r.val_dice for r in self.history if r.val_dice is not None]
        if dices:
            best = int(np.argmax(dices))
            metrics["val_dice_model_grid_final"] = float(dices[-1])
            metrics["val_dice_model_grid_best"] = float(dices[best])
        if self.config.final_evaluation and self.val_sources:
            metrics.update(self.final_metrics())
        self.network.eval()
        card = save_checkpoint(self.network, self.card(metrics), self.config.out_dir)
        log.info("exported %s to %s: %s", card.name, self.config.out_dir, metrics)
        return card

    def final_metrics(self) -> dict[str, float]:
        """Mean Dice, HD95, ASSD, VOE, RVD over the validation cases, on their input grids."""
        from train.data import load_case
        from train.evaluate import evaluate_case

        model = LoadedModel(network=self.network.eval(), card=self.card())
        rows = []
        for source in self.val_sources:
            image, liver = load_case(source)
            rows.append(evaluate_case(image, liver, model=model, device=str(self.device)).metrics)
        self.network.train()
        return summarise(rows, "val")


def plot_curves(history: Sequence[EpochRecord], path: Path, title: str) -> None:
    """PNG with the training loss and the validation Dice per epoch (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r.train_loss for r in history], marker=".", label="total")
    if history and len(history[-1].loss_terms) > 1:
        ax_loss.plot(epochs, [r.loss_terms[0] for r in history], linestyle="--", label="main output")
    ax_loss.set(xlabel="epoch", ylabel="training loss (Dice + CE)", title=title)
    ax_loss.legend()
    val = [(r.epoch, r.val_dice) for r in history if r.val_dice is not None]
    if val:
        ax_dice.plot(*zip(*val, strict=True), marker="o", color="tab:green")
    ax_dice.set(xlabel="epoch", ylabel="validation Dice (model grid)", ylim=(0, 1), title="validation")
    ax_dice.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def train(config: TrainConfig, resume: bool | str | Path = False) -> TrainResult:
    """Train and export one configuration (see TrainConfig); `resume` as `Trainer.fit`."""
    return Trainer(config).fit(resume=resume)
