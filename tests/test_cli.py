"""The command line as a user runs it: console script, python -m, one-line errors."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_images
from shufflenet.cli import main

BIN = Path(sys.executable).parent


def test_models_table_and_json(tmp_path, capsys) -> None:
    assert main(["models", "shufflenet_v2_*"]) == 0
    out = capsys.readouterr().out
    assert "shufflenet_v2_x1_0" in out and "2,278,604" in out and "v2 Table 5" in out
    path = tmp_path / "models.json"
    assert main(["models", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    assert len(rows) == 32  # v1: 25, v2: 4, V2+: 3
    g3 = next(r for r in rows if r["name"] == "shufflenet_v1_g3_x1_0")
    assert g3["paper_mflops"] == 137 and abs(g3["mflops"] - 137) / 137 < 0.02 and g3["mac_m"] > 0


def test_unknown_pattern_is_a_one_line_error(capsys) -> None:
    assert main(["models", "resnet*"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shufflenet models: error: no model matches 'resnet*'") and err.count("\n") == 1


def test_json_goes_into_a_new_folder(tmp_path, capsys) -> None:
    """--json creates its folder, as --out does (a long eval must not end in "No such file or directory")."""
    path = tmp_path / "new" / "sub" / "models.json"
    assert main(["models", "shufflenet_v2_x0_5", "--json", str(path)]) == 0
    assert [row["name"] for row in json.loads(path.read_text())] == ["shufflenet_v2_x0_5"]
    assert [p.name for p in path.parent.iterdir()] == ["models.json"]  # no temporary file left beside it


def test_a_path_that_is_a_folder_is_a_one_line_error(tmp_path, capsys) -> None:
    assert main(["models", "shufflenet_v2_x0_5", "--json", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shufflenet models: error:") and str(tmp_path) in err and err.count("\n") == 1


def test_a_bug_keeps_its_traceback(monkeypatch, capsys) -> None:
    """A TypeError inside the library is shufflenet's bug, not the user's: it must not become a one-line error."""
    from shufflenet.cli import models

    def buggy_list_models(pattern=None):
        return sorted(["shufflenet_v2_x0_5", 2])  # a programming error: str < int raises TypeError

    monkeypatch.setattr(models, "list_models", buggy_list_models)
    with pytest.raises(TypeError, match="'<' not supported"):
        main(["models"])
    assert "error:" not in capsys.readouterr().err


def test_a_missing_extra_is_one_line_but_a_broken_own_import_is_a_bug(monkeypatch, capsys) -> None:
    from shufflenet.cli import models

    def needs_extra(pattern=None):
        raise ImportError("the table needs the onnx package: pip install 'shufflenet[onnx]'")

    monkeypatch.setattr(models, "list_models", needs_extra)
    assert main(["models"]) == 2
    assert (
        capsys.readouterr().err == "shufflenet models: error: the table needs the onnx package: pip install "
        "'shufflenet[onnx]'\n"
    )

    def broken_import(pattern=None):
        from shufflenet.models import no_such_name  # noqa: F401

    monkeypatch.setattr(models, "list_models", broken_import)
    with pytest.raises(ImportError, match="no_such_name"):
        main(["models"])


def test_console_script_and_module_entry_point() -> None:
    script = subprocess.run([BIN / "shufflenet", "--version"], capture_output=True, text=True, check=True)
    assert script.stdout.startswith("shufflenet ")
    module = subprocess.run(
        [sys.executable, "-m", "shufflenet", "models", "shufflenet_v1_g8_x0_5"], capture_output=True, text=True
    )
    assert module.returncode == 0 and "shufflenet_v1_g8_x0_5" in module.stdout and "megvii" in module.stdout


@pytest.fixture(scope="module")
def user_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image folders, run folder) of a real 1-epoch `shufflenet train` run: a user's checkpoints."""
    base = tmp_path_factory.mktemp("user")
    data, run = base / "data", base / "run"
    write_images(data / "train", 6)
    write_images(data / "val", 3, seed=1)
    tiny = ["--model", "shufflenet_v2_x0_5", "--img-size", "32", "--batch-size", "4", "--device", "cpu", "--quiet"]
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", *tiny]) == 0
    return data, run


def files_under(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_demo_refuses_a_folder_holding_another_run(user_run: tuple[Path, Path], capsys) -> None:
    _, run = user_run
    before = files_under(run)
    assert {"best.pt", "last.pt", "config.json"} <= set(before)
    assert main(["demo", "--out", str(run), "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"shufflenet demo: error: --out {run} is not a demo run folder") and "--overwrite" in err
    assert files_under(run) == before  # not one byte of the user's run changed, no digits written into it


def test_demo_recognises_its_own_run_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A demo folder is replaced by the next demo (test_cli_train reruns one), also when named from elsewhere."""
    from shufflenet.cli.demo import check_demo_folder, is_demo_run

    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", "demo", "--epochs", "1", "--quiet"]) == 0
    out = tmp_path / "demo"
    assert json.loads((out / "config.json").read_text())["options"]["data"] == str(out / "data")
    monkeypatch.chdir(out / "data")
    assert is_demo_run(out)
    check_demo_folder(out, overwrite=False)  # no error: the demo may replace it
    options = json.loads((out / "config.json").read_text())
    options["options"]["model"] = "shufflenet_v2_x1_0"  # a run on the demo's data with the user's own options
    (out / "config.json").write_text(json.dumps(options))
    assert not is_demo_run(out)


def test_eval_writes_nothing_unless_asked(user_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    data, run = user_run
    before = files_under(run)
    assert main(["eval", "--weights", str(run / "best.pt"), "--data", str(data), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "confusion matrix:" not in printed
    assert files_under(run) == before
    out = tmp_path / "eval"
    assert main(["eval", "--weights", str(run / "best.pt"), "--data", str(data), "--out", str(out), "--quiet"]) == 0
    assert sorted(files_under(out)) == ["confusion_matrix.json", "confusion_matrix.png"]
    assert f"confusion matrix: {out / 'confusion_matrix.png'}" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["eval", "predict"])
@pytest.mark.parametrize(
    ("weights", "options", "named"),
    [
        ("best.pt", ["--backend", "onnxruntime"], "--backend onnxruntime"),
        ("best.pt", ["--precision", "int8"], "--precision int8"),
        ("model.onnx", [], "the exported file"),
    ],
)
def test_a_gpu_device_with_the_cpu_runtimes_is_an_error_not_ignored(
    user_run: tuple[Path, Path], command: str, weights: str, options: list[str], named: str, capsys
) -> None:
    data, run = user_run
    where = ["--data", str(data)] if command == "eval" else [str(data / "val")]
    argv = [command, "--weights", str(run / weights), *where, *options, "--device", "cuda"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"shufflenet {command}: error: --device cuda: {named}") and "runs on the CPU" in err


@pytest.fixture(scope="module")
def exported(user_run: tuple[Path, Path]) -> Path:
    """The user run's best.pt exported as an fp32 ONNX file (dynamic batch)."""
    pytest.importorskip("onnxruntime")
    from shufflenet import deploy
    from shufflenet.checkpoints import load_model

    _, run = user_run
    return deploy.export_onnx(load_model(run / "best.pt"), run.parent / "model.onnx", dynamic_batch=True)


def test_precision_of_an_exported_file_is_honoured_or_refused(
    user_run: tuple[Path, Path], exported: Path, tmp_path: Path, capsys
) -> None:
    data, _ = user_run
    assert main(["eval", "--weights", str(exported), "--data", str(data), "--precision", "int8", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--precision int8: {exported} is an fp32 file" in err and "shufflenet quantize" in err
    from shufflenet import deploy

    if not (deploy.backend_available("openvino") and deploy.cpu_has_bf16()):
        pytest.skip("bf16 of an .onnx file runs on OpenVINO with a CPU that has native bf16")
    report = tmp_path / "bf16.json"
    argv = ["eval", "--weights", str(exported), "--data", str(data), "--precision", "bf16", "--json", str(report)]
    assert main([*argv, "--quiet"]) == 0
    result = json.loads(report.read_text())
    assert (result["backend"], result["precision"]) == ("openvino", "bf16") and result["num_images"] == 6


def test_predict_without_a_readable_image_says_so(user_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    _, run = user_run
    (tmp_path / "scan.jpg").write_bytes(b"not a picture")
    assert main(["predict", "--weights", str(run / "best.pt"), str(tmp_path / "scan.jpg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        "scan.jpg" in err[0]
        and err[-1]
        == "shufflenet predict: error: none of the 1 image file(s) could be read (the skipped list above says why)"
    )
