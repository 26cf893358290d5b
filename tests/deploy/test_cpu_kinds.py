"""Int8 per CPU kind, faked where the features are detected: what /proc/cpuinfo and numpy's dispatch table say.

``cpu_features()`` reads exactly two things, :data:`shufflenet.deploy.cpu.CPUINFO` and numpy's
``__cpu_features__`` (through ``_numpy_cpu_features``); each test replaces them by a real-looking CPU and checks
what ends up in the file ``quantize_run`` writes. The expected values are written here, from the hardware:
without VNNI, u8 x s8 pair sums saturate 16 bits unless weights have 7 bits (|w| <= 64).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from shufflenet import deploy
from shufflenet.deploy import cpu

pytest.importorskip("onnxruntime")

BASE = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ssse3 sse4_1 sse4_2 popcnt aes xsave avx f16c fma"
NONE = {name: False for name in cpu.FEATURES}

# name: (the flags line of /proc/cpuinfo, numpy's table, what cpu_features() must give, largest int8 weight,
# NNCF's overflow fix)
KINDS = {
    "haswell_avx2": (f"{BASE} avx2 bmi2", {"AVX2": True, "AVX512F": False}, {**NONE, "avx2": True}, 64, "enable"),
    "skylake_avx512": (
        f"{BASE} avx2 avx512f avx512dq avx512cd avx512bw avx512vl",
        {"AVX2": True, "AVX512F": True, "AVX512VNNI": False},
        {**NONE, "avx2": True, "avx512f": True},
        64,
        "enable",
    ),
    "cascade_lake_vnni": (
        f"{BASE} avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni",
        {"AVX2": True, "AVX512F": True, "AVX512VNNI": True},
        {**NONE, "avx2": True, "avx512f": True, "avx512_vnni": True},
        127,
        "disable",
    ),
    "sapphire_rapids_amx": (
        f"{BASE} avx2 avx512f avx512bw avx512vl avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8",
        {"AVX2": True, "AVX512F": True, "AVX512VNNI": True, "AVX512BF16": True},
        {name: True for name in cpu.FEATURES},
        127,
        "disable",
    ),
}


def cpuinfo(flags: str, processors: int = 2) -> str:
    """A /proc/cpuinfo of ``processors`` identical x86 cores."""
    core = "processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Fake CPU\nflags\t\t: {flags}\nbogomips\t: 4000\n"
    return "\n".join(core.format(i=i, flags=flags) for i in range(processors))


@pytest.fixture
def fake_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str | None, dict | None], None]:
    """``fake_cpu(text, numpy_table)``: /proc/cpuinfo reads ``text`` (None: unreadable), numpy reports the table."""

    def install(text: str | None, table: dict[str, bool] | None) -> None:
        path = tmp_path / "cpuinfo"
        if text is not None:
            path.write_text(text)
        monkeypatch.setattr(cpu, "CPUINFO", path)
        monkeypatch.setattr(cpu, "_numpy_cpu_features", lambda: None if table is None else dict(table))

    return install


# ---------------------------------------------------------------------------------------------- cpu_features()


def test_cpu_features_reads_the_flags_line_and_numpy(fake_cpu) -> None:
    flags, table, expected, *_ = KINDS["sapphire_rapids_amx"]
    fake_cpu(cpuinfo(flags), table)
    assert cpu.cpu_features() == expected
    fake_cpu(cpuinfo(flags), None)  # a numpy without the table: /proc alone
    assert cpu.cpu_features() == expected
    flags, table, expected, *_ = KINDS["haswell_avx2"]
    fake_cpu(cpuinfo(flags), table)
    assert cpu.cpu_features() == expected


def test_cpu_features_trusts_numpy_when_proc_describes_another_cpu(fake_cpu) -> None:
    """Under an emulator /proc/cpuinfo is the host's: its AMX and AVX-VNNI must not leak into a Haswell guest."""
    fake_cpu(cpuinfo(KINDS["sapphire_rapids_amx"][0]), {"AVX2": True, "AVX512F": False})
    assert cpu.cpu_features() == {**NONE, "avx2": True}


def test_cpu_features_without_proc_and_on_arm(fake_cpu) -> None:
    fake_cpu(None, {"AVX2": True, "AVX512F": True, "AVX512VNNI": True})
    assert cpu.cpu_features() == {**NONE, "avx2": True, "avx512f": True, "avx512_vnni": True}
    fake_cpu("processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\n", None)
    assert cpu.cpu_features() == NONE
    fake_cpu("processor\t: 0\nmodel name\t: no flags line\n", None)
    assert cpu.cpu_features() == NONE


# ---------------------------------------------------------------------------------------------- through the file


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_onnxruntime_int8_file_per_cpu_kind(kind: str, fake_cpu, run_dir: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    flags, table, expected_cpu, largest, _ = KINDS[kind]
    fake_cpu(cpuinfo(flags), table)
    out = tmp_path / "q.onnx"
    deploy.quantize_run(run_dir / "best.pt", "onnxruntime", out, calibration_size=5, max_drop=100)
    weights = [
        np.abs(numpy_helper.to_array(init).astype(np.int32)).max()
        for init in onnx.load(str(out)).graph.initializer
        if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 4
    ]
    assert len(weights) > 20 and max(weights) == largest
    settings = deploy.read_onnx_metadata(out)["int8"]
    assert settings["cpu"] == expected_cpu and settings["reduce_range"] is (largest == 64)


# NNCF's choice follows the same has_vnni() as ONNX Runtime's (all four kinds above); two kinds keep the time down.
@pytest.mark.parametrize("kind", ["skylake_avx512", "sapphire_rapids_amx"])
def test_nncf_ir_per_cpu_kind(kind: str, fake_cpu, run_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("nncf")
    import openvino

    flags, table, expected_cpu, largest, overflow_fix = KINDS[kind]
    fake_cpu(cpuinfo(flags), table)
    out = tmp_path / "q.xml"
    deploy.quantize_run(run_dir / "best.pt", "openvino", out, calibration_size=5, max_drop=100)
    settings = deploy.read_onnx_metadata(out)["int8"]
    assert settings["overflow_fix"] == overflow_fix and settings["cpu"] == expected_cpu
    weights = [
        np.abs(op.get_data().astype(np.int32)).max()
        for op in openvino.Core().read_model(str(out)).get_ops()
        if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "i8"
    ]
    assert len(weights) > 10 and max(weights) == largest
