"""`shufflenet bench` says, from the measured rows, where a reduced precision was not faster than fp32."""

from __future__ import annotations

from shufflenet.bench import BenchRow, not_faster_notes


def row(label: str, precision: str, batch: int, median_ms: float) -> BenchRow:
    return BenchRow(
        model="m",
        label=label,
        backend=label.split()[0],
        precision=precision,
        batch_size=batch,
        img_size=32,
        threads=2,
        median_ms=median_ms,
        min_ms=median_ms,
        p10_ms=median_ms,
        p90_ms=median_ms,
        runs=10,
        others_cpu=0.0,
        clean=True,
        img_per_s=1000 * batch / median_ms,
        peak_mem_mib=None,
        mem_growth_mib=None,
        max_abs_diff=None,
        top1_agreement=None,
    )


def test_reduced_precisions_not_faster_than_the_fastest_fp32_are_named() -> None:
    rows = [
        row("torch fp32", "fp32", 1, 4.0),
        row("onnxruntime fp32", "fp32", 1, 2.0),
        row("onnxruntime int8", "int8", 1, 2.5),  # slower than ORT fp32, faster than torch
        row("openvino int8", "int8", 1, 1.0),
        row("openvino bf16", "bf16", 1, 2.0),  # a tie is not faster
        row("torch fp32", "fp32", 8, 10.0),
        row("onnxruntime int8", "int8", 8, 9.0),  # faster at batch 8: only batch 1 is named
        row("openvino bf16", "bf16", 8, 12.0),
    ]
    assert not_faster_notes(rows) == [
        "onnxruntime int8 is not faster than fp32 here (batch 1: 0.80x onnxruntime fp32): keep fp32 on this machine",
        "openvino bf16 is not faster than fp32 here (batch 1: 1.00x onnxruntime fp32; batch 8: 0.83x torch fp32): "
        "keep fp32 on this machine",
    ]


def test_no_note_when_every_reduced_precision_is_faster_or_absent() -> None:
    assert not_faster_notes([row("torch fp32", "fp32", 1, 4.0), row("openvino int8", "int8", 1, 1.0)]) == []
    assert not_faster_notes([row("onnxruntime int8", "int8", 1, 1.0)]) == []  # nothing to compare with
