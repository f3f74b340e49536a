"""train.distill: the KL term to a teacher's liver probabilities, and a dsn3d run the DSN way that uses it."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from model_zoo.architectures import create_network
from model_zoo.card import InputContract
from model_zoo.registry import get_card
from tests.train.conftest import CONTRACT, TINY, tiny_config
from train.__main__ import main
from train.distill import Distiller, check_same_input, distillation_loss, liver_log_probabilities
from train.trainer import Trainer


def kl(student: torch.Tensor, teacher: torch.Tensor, student_liver: int = 1, teacher_liver: int = 1) -> torch.Tensor:
    return distillation_loss(student, teacher, student_liver=student_liver, teacher_liver=teacher_liver,
                             temperature=2.0)


def test_the_term_is_zero_when_the_student_says_what_the_teacher_says_and_positive_otherwise():
    logits = torch.randn(2, 2, 4, 5, 6, generator=torch.Generator().manual_seed(0)) * 3
    assert float(kl(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl(logits + torch.tensor([0.0, 1.0])[:, None, None, None], logits)) > 1e-3
    # a nine-class student with the same liver probability as a two-class teacher: still 0
    # (the liver against every other channel together), and 0 for the liver in another channel
    nine = torch.empty(2, 9, 4, 5, 6)
    nine[:, 1] = logits[:, 1]
    nine[:, [0, *range(2, 9)]] = logits[:, :1] - math.log(8)
    assert float(kl(nine, logits)) == pytest.approx(0.0, abs=1e-5)
    assert float(kl(logits.flip(1), logits, student_liver=0)) == pytest.approx(0.0, abs=1e-6)
    probabilities = liver_log_probabilities(nine, 1, 2.0).exp()
    assert torch.allclose(probabilities.sum(1), torch.ones(2, 4, 5, 6))


def test_its_gradient_moves_the_student_towards_the_teacher():
    # a tiny dsn3d student trained on the term alone comes to say what a U-Net teacher says on the patch
    torch.manual_seed(0)
    teacher = create_network("unet3d_ds", **TINY).eval()
    student = create_network("dsn3d", **TINY)
    patch = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        target = teacher(patch)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    with torch.no_grad():
        start = float(kl(student(patch), target))
        before = liver_log_probabilities(student(patch), 1, 1.0).exp()[:, 1]
    for _ in range(30):
        loss = kl(student(patch), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        end = float(kl(student(patch), target))
        after = liver_log_probabilities(student(patch), 1, 1.0).exp()[:, 1]
    wanted = liver_log_probabilities(target, 1, 1.0).exp()[:, 1]
    # measured: KL 0.43 -> 0.10 in 30 steps
    assert start > 1e-3 and end < 0.4 * start, (start, end)
    gap_before, gap_after = float((before - wanted).abs().mean()), float((after - wanted).abs().mean())
    assert gap_after < 0.5 * gap_before, (gap_before, gap_after)


def test_a_teacher_that_reads_patches_otherwise_is_refused_with_the_fix():
    four_mm = CONTRACT.model_copy(update={"spacing_xyz_mm": (4.0, 4.0, 4.0)})
    with pytest.raises(ValueError, match=r"spacing_xyz_mm \(4.0, 4.0, 4.0\) \(this run: \(6.0, 6.0, 6.0\)\).*--spacing"):
        check_same_input(four_mm, CONTRACT, "unet3d_ds.phantom_4mm")
    check_same_input(CONTRACT.model_copy(update={"patch_size_dhw": (48, 48, 48)}), CONTRACT, "any")
    assert isinstance(CONTRACT, InputContract)


@pytest.mark.slow
def test_a_dsn3d_run_the_papers_way_with_distillation_records_it_on_its_card(tmp_path):
    # a tiny teacher on the 6 mm test contract, then `python -m train` for a dsn3d student: weights
    # 0.6/0.3/0.1, auxiliary factor decaying to 0 in the last epoch, the KL term to the teacher
    runs = tmp_path / "runs"
    fast = dict(synthetic=1, n_val=1, phantom_spacing_mm=6.0, batch_size=1, data_workers=1, final_evaluation=False)
    Trainer(tiny_config(tmp_path, **fast, tag="teacher", epochs=1, iters_per_epoch=3,
                        out_dir=str(runs / "models"), work_dir=str(runs))).fit()
    assert main(["--arch", "dsn3d", "--arch-kwargs", json.dumps(TINY), "--tag", "student", "--synthetic", "1",
                 "--val", "1", "--phantom-spacing", "6", "--spacing", "6", "--patch", "32", "--epochs", "3",
                 "--iters-per-epoch", "2", "--batch", "1", "--ds-weights", "dsn", "--ds-decay", "linear",
                 "--distill-from", "unet3d_ds.teacher", "--distill-weight", "0.5", "--distill-temperature", "3",
                 "--no-augment", "--data-workers", "1", "--device", "cpu", "--work-dir", str(runs),
                 "--no-final-eval"]) == 0
    card = get_card("dsn3d.student", runs / "models")
    teacher = get_card("unet3d_ds.teacher", runs / "models")
    assert card.training.distillation.startswith(f"knowledge distillation from unet3d_ds.teacher (weights {teacher.weights_sha256})")
    assert "0.5 * T^2" in card.training.distillation and "T = 3" in card.training.distillation
    assert "--distill-from unet3d_ds.teacher" in card.training.command
    rows = list(csv.DictReader(open(runs / "dsn3d.student" / "log.csv")))
    assert [float(r["aux_factor"]) for r in rows] == [1.0, 0.5, 0.0]
    assert all(r["loss_out2"] for r in rows)  # main + two auxiliary heads were trained and logged


def test_the_teacher_stays_in_eval_mode_without_gradients(tmp_path):
    fast = dict(synthetic=1, n_val=1, phantom_spacing_mm=6.0, epochs=1, iters_per_epoch=1, batch_size=1,
                data_workers=1, final_evaluation=False)
    Trainer(tiny_config(tmp_path, **fast, tag="teacher")).fit()
    student = Trainer(tiny_config(tmp_path, **fast, arch="dsn3d", tag="student", distill_from="unet3d_ds.teacher"))
    student.fit()
    teacher = student.distiller.network
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    assert student.distiller.last_value > 0
    with pytest.raises(ValueError, match="must be > 0"):
        Distiller(student.distiller, CONTRACT, student_liver=1, weight=0.0, temperature=2.0)  # type: ignore[arg-type]
