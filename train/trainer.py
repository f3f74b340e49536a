"""The trainer: patches -> augmentation -> deeply supervised loss -> optimiser, epoch after epoch.

One run writes, under `work_dir/NAME/` (NAME = "arch.tag"), the training checkpoint every epoch
(`train.state`, used by `resume`) and the log (`train.run_log`: log.csv, curves.png). At the end,
the final weights and a complete card are exported to `out_dir` (`train.export`).

Validation after each epoch runs the whole prepared validation volumes through
`service.sliding_window.sliding_window_inference` with the card's inference defaults and scores
the argmax on the model grid (fast; nnU-Net's "pseudo Dice"). The final metrics on the card come
from `train.evaluate.evaluate_case`: the service's full path, scored on the input grid.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model_zoo.architectures import create_network
from model_zoo.card import ModelCard, Training
from model_zoo.device import resolve_device
from model_zoo.preprocessing import hu_to_input_units
from model_zoo.registry import CHECKPOINT_DIR, checkpoint_names, load_model
from service.options import resolve_options
from service.sliding_window import sliding_window_inference
from train.augment import Augmenter
from train.classes import add_classes, class_names, dice_class_weights
from train.config import ANATOMY_SEED_STEP, VALIDATION_PHANTOM_SEED, TrainConfig
from train.data import (
    HEAVY_ASCITES_MM,
    CaseSource,
    PatchSampler,
    PreparedCase,
    find_cases,
    phantom_sources,
    prepare_cases,
    split_cases,
)
from train.distill import Distiller
from train.export import build_card, code_revision, export, input_grid_metrics, model_grid_metrics
from train.losses import DeepSupervisionLoss, aux_weight_factor
from train.metrics import dice
from train.run_log import EpochRecord, write_log
from train.state import load_state, save_state
from train.widen import WIDENABLE_ARCHS, widen_unet3d_ds

log = logging.getLogger(__name__)
# Where each architecture's 1x1x1 output heads live in its state_dict (for `add_classes`).
HEAD_PREFIXES = {"unet3d_ds": "heads."}
# Without a progress bar (not a terminal: tqdm is off), a log line this often inside an epoch.
PROGRESS_EVERY_S = 30.0


@dataclass
class TrainResult:
    """What a run produced: the exported card (None when nothing was exported), history, paths."""

    card: ModelCard | None
    history: list[EpochRecord]
    run_dir: Path
    seconds: float


def select_cases(config: TrainConfig) -> tuple[list[CaseSource], list[CaseSource], str]:
    """(training sources, validation sources, a sentence describing the data for the card)."""
    if config.synthetic > 0:
        if config.sick_fraction and max(config.anatomies) < 2:
            raise ValueError("--sick-fraction needs anatomy 2 or 3 phantoms (--phantom-anatomy 2 or '1 2')")
        if config.ascites_fraction and not config.sick_fraction:
            raise ValueError("--ascites-fraction is a share of the sick livers: it needs --sick-fraction")
        spacing = config.phantom_spacing_mm
        train_sources, val_sources, parts = [], [], []
        for anatomy in config.anatomies:
            first = ANATOMY_SEED_STEP * (anatomy - 1)
            sick = config.sick_fraction if anatomy >= 2 else 0.0
            ascites = config.ascites_fraction if sick else 0.0
            train_sources += phantom_sources(config.synthetic, first, spacing, anatomy, sick, ascites,
                                             config.native_fraction)
            val_sources += phantom_sources(config.n_val, VALIDATION_PHANTOM_SEED + first, spacing, anatomy)
            drawn = "" if anatomy == 1 and len(config.anatomies) == 1 else f", anatomy {anatomy}"
            if sick:
                drawn += f", {sick:.0%} of them with a cirrhotic liver carrying HCC"
                if ascites:
                    lo, hi = HEAVY_ASCITES_MM
                    drawn += f" ({ascites:.0%} of those inside heavy ascites, a {lo:g}-{hi:g} mm rim)"
            if config.native_fraction:
                drawn += f", {config.native_fraction:.0%} of them scanned without contrast (native phase)"
            parts.append(f"{config.synthetic} synthetic phantoms (train.phantoms.make_phantom{drawn}, seeds "
                         f"{first}-{first + config.synthetic - 1})")
        grid = "their own scanner grids" if spacing is None else f"a {spacing:g} mm grid"
        val_seeds = ", ".join(f"{VALIDATION_PHANTOM_SEED + ANATOMY_SEED_STEP * (a - 1)}-"
                              f"{VALIDATION_PHANTOM_SEED + ANATOMY_SEED_STEP * (a - 1) + config.n_val - 1}"
                              for a in config.anatomies)
        each = " of each" if len(config.anatomies) > 1 else ""
        text = (f"{' and '.join(parts)}, drawn on {grid}; validated on {config.n_val} more{each} "
                f"(seeds {val_seeds})")
        if config.classes != "liver":
            text += f"; classes {', '.join(class_names(config.classes)[1:])} from the tissue maps"
        return train_sources, val_sources, text
    if not config.data:
        raise ValueError("no training data: give --synthetic N or --data PATH")
    cases = find_cases(config.data, config.data_format)
    train_sources, val_sources = split_cases(cases, config.n_val, config.seed)
    text = (f"{config.data_format} data at {config.data}: {len(train_sources)} training and "
            f"{len(val_sources)} validation cases; liver = label >= 1")
    return train_sources, val_sources, text


def init_folder(name: str, out_dir: str | Path) -> Path:
    """Where `--init-from NAME` is read: the run's own `out_dir` when it holds NAME, else the
    bundled zoo (so a run exporting elsewhere can still start from the bundled model)."""
    return Path(out_dir) if name in checkpoint_names(out_dir) else CHECKPOINT_DIR


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


class Trainer:
    """Runs one TrainConfig: `fit()` trains (resuming if asked), validates, logs and exports."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.device = torch.device(resolve_device(config.device))
        self.amp = config.amp and self.device.type == "cuda"
        self.run_dir = Path(config.work_dir) / config.name
        self.contract = config.contract()
        torch.manual_seed(config.seed)  # the initial weights
        self.network = create_network(config.arch, **config.network_kwargs).to(self.device)
        self.earlier: Training | None = None  # how the --init-from weights were made: the card chains it
        self.command = config.command or f"train.trainer.Trainer({config.to_json()!r})"  # this session's
        self.commands: list[str] = []  # the command of each session of this run, the card's after `earlier`
        if config.init_from:
            self._initialise_from(config.init_from)
        self.optimizer = _optimizer(config, self.network)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.loss = DeepSupervisionLoss(config.ds_weights, class_weights=dice_class_weights(config.classes))
        self.augmenter = Augmenter(config.augment)
        self.distiller = None
        if config.distill_from:  # the teacher is found as --init-from's checkpoint is
            teacher = load_model(config.distill_from, init_folder(config.distill_from, config.out_dir),
                                 device=self.device)
            self.distiller = Distiller(teacher, self.contract, student_liver=class_names(config.classes).index("liver"),
                                       weight=config.distill_weight, temperature=config.distill_temperature,
                                       amp=self.amp)
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
        (unet3d_ds) whole multiples of them, widened so the network starts as the checkpoint. A
        two-class checkpoint may start a multi-class run: its heads grow (`train.classes.add_classes`)."""
        source = load_model(name, init_folder(name, self.config.out_dir))
        card, config = source.card, self.config
        self.earlier = card.training
        features = config.arch_kwargs.get("features")
        mismatch = (f"--init-from {name}: it is a {card.arch} {card.arch_kwargs}, this run trains a "
                    f"{config.arch} {config.arch_kwargs}")
        base = {k: v for k, v in card.arch_kwargs.items() if k != "out_channels"}
        wanted = {k: v for k, v in config.arch_kwargs.items() if k != "out_channels"}
        n_classes, source_classes = len(class_names(config.classes)), len(card.channel_def)
        if (card.arch, base) == (config.arch, wanted):
            state, how = source.network.state_dict(), ""
        elif (card.arch == config.arch and card.arch in WIDENABLE_ARCHS and "features" in base
              and {**base, "features": features} == wanted and n_classes == source_classes):
            try:
                state = widen_unet3d_ds(source.network, self.network, card.arch_kwargs["features"],
                                        features, seed=config.seed)
            except ValueError as error:
                raise ValueError(f"{mismatch} ({error})") from error
            how = f", widened {card.arch_kwargs['features']} -> {features}"
        else:
            raise ValueError(f"{mismatch} (only a unet3d_ds's features, or the classes alone, may differ)")
        if n_classes != source_classes:
            if source_classes != 2 or card.arch not in HEAD_PREFIXES:
                raise ValueError(f"--init-from {name}: its {source_classes} classes cannot grow to {n_classes} "
                                 f"(a two-class {', '.join(HEAD_PREFIXES)} can)")
            state = add_classes(state, HEAD_PREFIXES[card.arch], n_classes)
            how += f", heads grown from 2 to {n_classes} classes"
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
        reported = start
        for i in bar:
            image, label = sampler.sample(self.generator)
            image, label = image.to(self.device), label.to(self.device)
            image, label = self.augmenter(image, label, self.generator)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                outputs = self.network(image, deep_supervision=config.deep_supervision)
            loss = self.loss(outputs, label, aux)
            if self.distiller is not None:  # the teacher sees the same augmented patch
                loss = loss + self.distiller(outputs, image)
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
            now = time.perf_counter()
            if bar.disable and now - reported >= PROGRESS_EVERY_S and i + 1 < config.iters_per_epoch:
                reported = now
                log.info("epoch %d/%d: iteration %d/%d, loss %.4f, %.2f it/s", epoch + 1, config.epochs,
                         i + 1, config.iters_per_epoch, total / (i + 1), (i + 1) / (now - start))
        n = config.iters_per_epoch
        return EpochRecord(epoch=epoch + 1, train_loss=total / n,
                           loss_terms=[float(t) for t in terms_sum / n], val_dice=None, lr=lr,
                           aux_factor=aux, seconds=time.perf_counter() - start)

    def validate(self) -> float:
        """Mean Dice of the argmax over the validation volumes, on the model grid, run with the
        options the service would resolve for this run's card (service.options)."""
        options = resolve_options(self.card())
        network = self.network.eval()

        def predictor(window: torch.Tensor) -> torch.Tensor:
            return torch.softmax(network(window, deep_supervision=False).float(), dim=1)

        scores = []
        for case in self.val_cases:
            image = torch.from_numpy(case.image)[None, None].to(self.device)
            result = sliding_window_inference(
                image, self.contract.patch_size_dhw, predictor, overlap=options.overlap,
                batch_size=options.batch_size, mode=options.mode, sigma_scale=options.sigma_scale,
                skip_below=None if options.skip_air_hu is None else hu_to_input_units(options.skip_air_hu, self.contract),
                autocast=self.amp,
            )
            prediction = result.main[0, 1].cpu().numpy() > 0.5  # the liver, as the service reads it
            scores.append(dice(prediction, case.label > 0.5))  # a 0/1 mask or liver fractions
        self.network.train()
        return float(np.mean(scores)) if scores else float("nan")

    # -- the run ---------------------------------------------------------------------------
    def _seconds(self) -> float:
        """Training time of the whole run so far, earlier sessions of a resumed run included."""
        return self.seconds_before + time.perf_counter() - self._start

    def save_state(self) -> None:
        """Write the training checkpoint of the run so far (`train.state`)."""
        save_state(self.run_dir, self.config, self.network, self.optimizer, self.scaler,
                   self.generator, self.history, self._seconds(),
                   earlier_training=self.earlier.model_dump() if self.earlier else None,
                   commands=self.commands)

    def load_state(self, directory: Path) -> None:
        """Continue from the training checkpoint in `directory` (`train.state`). The run's start
        keeps the record of where it began: by now --init-from may name this run's own export."""
        self.history, self.seconds_before, earlier, self.commands = load_state(
            directory, self.config, self.network, self.optimizer, self.scaler, self.generator)
        if earlier is not None:
            self.earlier = Training.model_validate(earlier)

    def fit(self, resume: bool | str | Path = False) -> TrainResult:
        """Train until `config.epochs`, then export weights and card to `config.out_dir`."""
        self._start = time.perf_counter()
        if resume:
            self.load_state(self.run_dir if resume is True else Path(resume))
        if self.commands[-1:] != [self.command]:
            self.commands.append(self.command)
        if not self.train_cases:
            self.load_data()
        sampler = PatchSampler(self.train_cases, self.config.patch_size_dhw, self.config.batch_size,
                               self.contract, oversample_foreground=self.config.oversample_foreground,
                               n_classes=len(class_names(self.config.classes)))
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
            write_log(self.history, self.run_dir, config.name)
        card = self.export()
        return TrainResult(card=card, history=self.history, run_dir=self.run_dir, seconds=self._seconds())

    def card(self, metrics: dict[str, float] | None = None) -> ModelCard:
        """The card of the current weights (metrics as given)."""
        config = self.config
        training = Training(
            data=self.data_description,
            epochs=len(self.history),
            seconds=round(self._seconds(), 1),
            command=" && ".join(self.commands or [self.command]),
            code_revision=self.code_revision,
            seed=config.seed,
            device=str(self.device),
            distillation=self.distiller.describe() if self.distiller else None,
        )
        return build_card(config, chain(self.earlier, training), metrics)

    def export(self) -> ModelCard:
        """Score the final weights on the validation cases (service path) and save weights + card."""
        metrics = model_grid_metrics(self.history)
        if self.config.final_evaluation and self.val_sources:
            metrics.update(input_grid_metrics(self.network, self.card(), self.val_sources, self.device))
        return export(self.network, self.card(metrics), self.config.out_dir)


def chain(earlier: Training | None, run: Training) -> Training:
    """The record of weights made by `run` from weights `earlier` made: both commands, in order
    (what reproduces them from nothing), their epochs and seconds summed, both data said."""
    if earlier is None:
        return run
    return run.model_copy(update={
        "data": f"{earlier.data.rstrip('. ')}. Then: {run.data}",
        "epochs": earlier.epochs + run.epochs,
        "seconds": round(earlier.seconds + run.seconds, 1),
        "command": f"{earlier.command} && {run.command}",
        "distillation": run.distillation or earlier.distillation,
    })


def train(config: TrainConfig, resume: bool | str | Path = False) -> TrainResult:
    """Train and export one configuration (see TrainConfig); `resume` as `Trainer.fit`."""
    return Trainer(config).fit(resume=resume)
