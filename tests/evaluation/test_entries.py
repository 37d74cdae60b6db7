"""The rows of an evaluation: models and baselines, each raw and after every consistency step asked for."""

from evaluation.config import EvalRunConfig
from evaluation.entries import Entry, sweep_entries
from evaluation.experiment.results import markdown, tables


def test_each_row_comes_raw_and_after_each_consistency_step_next_to_each_other():
    config = EvalRunConfig(baselines=["bicubic"], nfe=[1, 4], consistency=["none", "projection"])
    labels = [entry.label for entry in sweep_entries(config, ["cfm"])]
    assert labels == [
        "bicubic",
        "bicubic + projection",
        "cfm euler 1",
        "cfm euler 1 + projection",
        "cfm euler 4",
        "cfm euler 4 + projection",
    ]
    assert Entry("cfm", "euler", 4).key == "cfm|euler|4"  # raw rows keep the keys of earlier results
    held = Entry("cfm", "euler", 4, "projection")
    assert held.key == "cfm|euler|4|projection" and held.without_consistency == Entry("cfm", "euler", 4)


def test_an_experiment_keeps_raw_outputs_under_nfe_and_corrected_ones_under_their_step():
    rows = [
        {"model": "bicubic", "solver": "-", "nfe": 0, "consistency": "none", "psnr": 30.0},
        {"model": "bicubic", "solver": "-", "nfe": 0, "consistency": "projection", "psnr": 31.0},
        {"model": "cfm", "solver": "euler", "nfe": 2, "consistency": "none", "psnr": 32.0, "lr_psnr": 40.0},
        {
            "model": "cfm",
            "solver": "euler",
            "nfe": 2,
            "consistency": "projection",
            "psnr": 33.0,
            "lr_psnr": 60.0,
        },
    ]
    results = tables(rows, ["cfm"])
    assert results["baselines"] == {"bicubic": {"psnr": 30.0}, "bicubic + projection": {"psnr": 31.0}}
    assert results["arms"]["cfm"]["nfe"]["2"] == {"solver": "euler", "psnr": 32.0, "lr_psnr": 40.0}
    assert results["arms"]["cfm"]["consistency"]["projection"]["nfe"]["2"]["lr_psnr"] == 60.0
    table = markdown(results)
    assert table.splitlines()[0] == "| method | NFE | PSNR ↑ | LR-PSNR ↑ |"
    assert "| cfm + projection | 2 | 33 | 60 |" in table
