"""Knowledge distillation from a trained checkpoint (Hinton et al., 2015), on the liver alone.

`--distill-from NAME` adds to the loss of every patch

    W * T^2 * mean over voxels of KL(teacher || student)

between the two networks' softened probabilities of liver and not liver: each network's liver
log-odds (its liver channel, `card.liver_channel`, against all its other channels together, as
the service's calibration reads it) divided by T, so a two-class teacher can teach a nine-class
student and the other way round. T^2 keeps the term's gradient the same size whatever T (Hinton
et al.). The teacher sees the same augmented patch as the student, in eval mode and without
gradients; it must read the patch as the student does (the same spacing, orientation, HU window
and normalisation), else its answer is about another image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from model_zoo.card import InputContract
from model_zoo.registry import LoadedModel

# The contract fields that decide what a voxel value means; the patch size may differ.
SAME_INPUT_FIELDS = ("spacing_xyz_mm", "orientation", "hu_window", "normalisation", "mean", "std", "antialias")


def liver_log_probabilities(logits: Tensor, liver_channel: int, temperature: float) -> Tensor:
    """(N, C, D, H, W) logits -> (N, 2, D, H, W) log-probabilities of (not liver, liver), softened
    as the service calibrates: the liver's log-odds (its logit margin over the other channels
    together) divided by `temperature`. Log-sigmoids, stable at p -> 0 and 1."""
    logits = logits.float()
    others = torch.cat([logits[:, :liver_channel], logits[:, liver_channel + 1:]], dim=1)
    log_odds = (logits[:, liver_channel] - torch.logsumexp(others, dim=1)) / temperature
    return torch.stack([F.logsigmoid(-log_odds), F.logsigmoid(log_odds)], dim=1)


def distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor, *, student_liver: int, teacher_liver: int,
    temperature: float,
) -> Tensor:
    """T^2 * mean over voxels of KL(teacher || student) of the liver/not-liver probabilities;
    0 where the two agree, positive elsewhere. Logits (N, C, D, H, W), channel counts may differ."""
    student = liver_log_probabilities(student_logits, student_liver, temperature)
    teacher = liver_log_probabilities(teacher_logits, teacher_liver, temperature).detach()
    kl = (teacher.exp() * (teacher - student)).sum(dim=1)
    return kl.mean() * temperature**2


def check_same_input(teacher: InputContract, student: InputContract, name: str) -> None:
    """ValueError naming each contract field where the teacher reads patches otherwise."""
    differ = [f"{f} {getattr(teacher, f)!r} (this run: {getattr(student, f)!r})"
              for f in SAME_INPUT_FIELDS if getattr(teacher, f) != getattr(student, f)]
    if differ:
        raise ValueError(f"--distill-from {name}: the teacher reads its input otherwise: {'; '.join(differ)}; "
                         "train the student on the teacher's contract (e.g. --spacing 4 for a 4 mm teacher)")


class Distiller:
    """The distillation term of one run: `distiller(student_outputs, image)` -> a scalar loss."""

    def __init__(self, teacher: LoadedModel, contract: InputContract, *, student_liver: int,
                 weight: float, temperature: float, amp: bool = False):
        if weight <= 0 or temperature <= 0:
            raise ValueError(f"--distill-weight and --distill-temperature must be > 0, got {weight} and {temperature}")
        check_same_input(teacher.card.input, contract, teacher.card.name)
        self.network = teacher.network.eval()
        self.card = teacher.card
        self.student_liver, self.weight, self.temperature, self.amp = student_liver, weight, temperature, amp
        self.last_value = 0.0  # the last term, unweighted, for the logs

    @torch.no_grad()
    def teacher_logits(self, image: Tensor) -> Tensor:
        """The teacher's main logits (N, C_t, D, H, W) of patches (N, 1, D, H, W)."""
        with torch.autocast(image.device.type, dtype=torch.float16, enabled=self.amp):
            return self.network(image, deep_supervision=False).float()

    def __call__(self, student_outputs: Tensor | Sequence[Tensor], image: Tensor) -> Tensor:
        """W * the distillation term of the student's main output on `image` (the main output is the
        first of a deep-supervision list)."""
        main = student_outputs if isinstance(student_outputs, Tensor) else student_outputs[0]
        term = distillation_loss(main, self.teacher_logits(image), student_liver=self.student_liver,
                                 teacher_liver=self.card.liver_channel, temperature=self.temperature)
        self.last_value = float(term.detach())
        return self.weight * term

    def describe(self) -> str:
        """What the card's training record says."""
        return (f"knowledge distillation from {self.card.name} (weights {self.card.weights_sha256}): "
                f"loss + {self.weight:g} * T^2 * KL(teacher || student) of the liver/not-liver "
                f"probabilities at temperature T = {self.temperature:g}, on every training patch (train/distill.py)")
