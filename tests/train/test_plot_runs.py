"""train.plot_runs: the curves of several runs in one PNG."""

from __future__ import annotations

import pytest
from PIL import Image

from train.plot_runs import main
from train.run_log import read_log

LOG = "epoch,train_loss,loss_out0,loss_out1,val_dice,lr,aux_factor,seconds\n"


def test_two_runs_in_one_png(tmp_path):
    for name, dices in (("on", ("0.5", "0.8")), ("off", ("0.3", "0.7"))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "log.csv").write_text(
            LOG + f"1,1.0,0.9,0.1,{dices[0]},0.001,1,10\n2,0.5,0.4,0.1,{dices[1]},0.001,1,10\n")
    out = tmp_path / "docs" / "ds.png"
    assert main([str(tmp_path / "on"), str(tmp_path / "off"), "--labels", "DS", "no DS", "-o", str(out)]) == 0
    assert Image.open(out).format == "PNG" and Image.open(out).size[0] > 500
    assert [r["val_dice"] for r in read_log(tmp_path / "on")] == ["0.5", "0.8"]


def test_labels_must_match_runs(tmp_path):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a"), str(tmp_path / "b"), "--labels", "only one", "-o", str(tmp_path / "x.png")])
