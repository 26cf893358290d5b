"""Timing and the `shufflenet guidelines` CLI end to end on tiny inputs. Nothing here asserts a speed."""

import json
import math

import pytest
import torch
from PIL import Image

import shufflenet.guidelines
from shufflenet.cli import main
from shufflenet.guidelines.experiments import EXPERIMENTS, GuidelineConfig
from shufflenet.guidelines.runner import measure_group, run_guidelines


def test_measure_group_returns_one_sample_per_repeat() -> None:
    models = [torch.nn.Conv2d(4, 4, 1), torch.nn.Conv2d(4, 8, 1)]
    inputs = [torch.randn(2, 4, 8, 8)] * 2
    samples = measure_group(models, inputs, torch.device("cpu"), repeats=3, warmup=1, min_time=0.0)
    assert [len(s) for s in samples] == [3, 3]
    assert all(v > 0 and math.isfinite(v) for s in samples for v in s)


def test_quick_config() -> None:
    quick = GuidelineConfig.quick(batch_size=2)
    assert quick.multipliers == (1,) and quick.model_widths == (1.0,) and quick.batch_size == 2
    assert quick.repeats < GuidelineConfig().repeats
    assert GuidelineConfig().resolved_profile() == "arm"
    assert GuidelineConfig(device="cuda").resolved_profile() == "gpu"


def test_cli_quick_end_to_end(tmp_path, capsys) -> None:
    json_path, png_path = tmp_path / "g.json", tmp_path / "g.png"
    # Hidden knobs shrink the inputs so the whole --quick run takes seconds.
    tiny = ["--input-size", "8", "--model-input-size", "32", "--min-time", "0", "--repeats", "2", "--warmup", "1"]
    argv = ["guidelines", "--quick", "--batch-size", "2", *tiny, "--json", str(json_path), "--plot", str(png_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "paper GPU" in out and "paper ARM" in out and "Verdicts:" in out
    data = json.loads(json_path.read_text())
    assert set(EXPERIMENTS) <= set(data)
    for experiment in EXPERIMENTS:
        rows = data[experiment]
        assert rows and all({"name", "flops", "mac", "images_per_s", "relative"} <= set(r) for r in rows)
        assert all(r["images_per_s"] > 0 and r["flops"] > 0 and r["mac"] > 0 for r in rows)
        assert {r["multiplier"] for r in rows} == {1}
        # Each claim's ratio is its rows' medians (the verdict itself: test_verdict_of_constructed_timings).
        by_name = {r["name"]: r["images_per_s"] for r in rows}
        for claim in data["verdicts"][experiment]["claims"]:
            assert claim["ratio"] == pytest.approx(by_name[claim["faster"]] / by_name[claim["slower"]])
    assert data["settings"]["input_size"] == 8 and data["settings"]["batch_size"] == 2
    assert data["G1"][0]["relative"] == 1.0 and data["G1"][0]["paper_gpu"] == 1480
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png_path) as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 300


@pytest.mark.parametrize(
    ("speeds", "verdict", "holds", "ties", "reversed_"),
    [
        ((100.0, 90.0, 80.0, 70.0), "agrees", 4, 0, 0),  # 1:1 fastest, each wider ratio slower
        ((70.0, 80.0, 90.0, 100.0), "disagrees", 0, 0, 4),  # the paper's order reversed
        ((100.0, 99.0, 80.0, 70.0), "partly agrees", 3, 1, 0),  # 1:1 vs 1:2 within the 3% tolerance: a tie
    ],
)
def test_verdict_of_constructed_timings(
    speeds: tuple[float, ...], verdict: str, holds: int, ties: int, reversed_: int, tmp_path, capsys, monkeypatch
) -> None:
    """The G1 rows get known speeds (in the paper's row order 1:1, 1:2, 1:6, 1:12); the verdict must follow."""
    timed = []

    def constructed_timings(models, inputs, device, repeats, warmup, min_time):
        timed.append(len(models))
        return [[speed] * repeats for speed in speeds]

    monkeypatch.setattr(shufflenet.guidelines.runner, "measure_group", constructed_timings)
    json_path = tmp_path / "g.json"
    argv = [
        "guidelines",
        "--quick",
        "--experiments",
        "G1",
        "--input-size",
        "8",
        "--repeats",
        "2",
        "--json",
        str(json_path),
    ]
    assert main(argv) == 0
    assert timed == [4]
    data = json.loads(json_path.read_text())
    assert [(r["name"], r["images_per_s"]) for r in data["G1"]] == list(
        zip(("1:1", "1:2", "1:6", "1:12"), speeds, strict=True)
    )
    result = data["verdicts"]["G1"]
    assert (result["verdict"], result["holds"], result["ties"], result["reversed"]) == (verdict, holds, ties, reversed_)
    assert result["headline_holds"] == (verdict != "disagrees")  # 1:1 vs 1:12 holds unless reversed
    assert f"G1        {verdict:<14} headline '1:1 faster than 1:12'" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is absent")
def test_cli_cuda_without_cuda_is_a_clear_error(capsys) -> None:
    assert main(["guidelines", "--device", "cuda", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--device cpu" in err


def test_cli_makes_the_output_folders_and_says_what_it_wrote(tmp_path, capsys) -> None:
    json_path, png_path = tmp_path / "new" / "runs" / "g.json", tmp_path / "other" / "g.png"
    tiny = ["--input-size", "8", "--min-time", "0", "--repeats", "1", "--warmup", "0", "--batch-size", "1"]
    argv = ["guidelines", "--quick", "--experiments", "G1", *tiny, "--json", str(json_path), "--plot", str(png_path)]
    assert main(argv) == 0
    assert json.loads(json_path.read_text())["settings"]["experiments"] == ["G1"]
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().err.splitlines()[-2:] == [f"wrote {json_path}", f"wrote {png_path}"]


def test_cli_output_path_that_cannot_be_made_fails_before_timing(tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("in the way")
    assert main(["guidelines", "--quick", "--plot", str(tmp_path / "file" / "sub" / "g.png")]) == 2
    err = capsys.readouterr().err
    assert f"cannot make the folder {tmp_path / 'file' / 'sub'}, a file is in the way" in err
    assert "G1" not in err  # no experiment started


def test_run_without_onednn_restores_the_global_flag() -> None:
    before = torch.backends.mkldnn.enabled
    config = GuidelineConfig.quick(experiments=("G4",), input_size=8, batch_size=1, repeats=1, min_time=0.0)
    config.mkldnn = False
    results = run_guidelines(config)
    assert torch.backends.mkldnn.enabled == before
    assert results["settings"]["mkldnn"] is False and results["G4"][0]["name"] == "ReLU+shortcut"


def test_old_module_names_still_work() -> None:
    """``shufflenet.guidelines`` was one module; its public names are the package's modules' objects."""
    from shufflenet.guidelines import claims, experiments, plots, runner

    for module in (claims, experiments, plots, runner):
        for name in shufflenet.guidelines.__all__:
            if hasattr(module, name) and not name.startswith("_"):
                assert getattr(shufflenet.guidelines, name) is getattr(module, name), name
    assert shufflenet.guidelines.run_guidelines is run_guidelines
    assert shufflenet.guidelines.save_plot is plots.save_plot
    assert shufflenet.guidelines.verdicts is claims.verdicts  # the function, as before
