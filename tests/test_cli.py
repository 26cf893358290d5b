"""The command line as a user runs it: console script, python -m, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shufflenet.cli import main

BIN = Path(sys.executable).parent


def test_models_table_and_json(tmp_path, capsys) -> None:
    assert main(["models", "shufflenet_v2_*"]) == 0
    out = capsys.readouterr().out
    assert "shufflenet_v2_x1_0" in out and "2,278,604" in out and "v2 Table 5" in out
    path = tmp_path / "models.json"
    assert main(["models", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    assert len(rows) == 29
    g3 = next(r for r in rows if r["name"] == "shufflenet_v1_g3_x1_0")
    assert g3["paper_mflops"] == 137 and abs(g3["mflops"] - 137) / 137 < 0.02 and g3["mac_m"] > 0


def test_unknown_pattern_is_a_one_line_error(capsys) -> None:
    assert main(["models", "resnet*"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shufflenet models: error: no model matches 'resnet*'") and err.count("\n") == 1


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


def test_console_script_and_module_entry_point() -> None:
    script = subprocess.run([BIN / "shufflenet", "--version"], capture_output=True, text=True, check=True)
    assert script.stdout.startswith("shufflenet ")
    module = subprocess.run(
        [sys.executable, "-m", "shufflenet", "models", "shufflenet_v1_g8_x0_5"], capture_output=True, text=True
    )
    assert module.returncode == 0 and "shufflenet_v1_g8_x0_5" in module.stdout and "megvii" in module.stdout
