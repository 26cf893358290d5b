"""What this CPU can do for reduced precision: AVX2, AVX-512, VNNI (int8 dot products), AMX, bf16.

The answer comes from the CPUID instruction as numpy's runtime dispatch sees it (the CPU the process really
runs on, an emulator's included), completed with ``/proc/cpuinfo`` for the flags numpy does not test
(AVX-VNNI, AMX) when both sources agree on AVX-512, i.e. describe the same CPU.
"""

from __future__ import annotations

from pathlib import Path

# Names used everywhere (metadata, bench, settings): Linux /proc/cpuinfo spellings.
FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16")
_NUMPY_NAMES = {"avx2": "AVX2", "avx512f": "AVX512F", "avx512_vnni": "AVX512VNNI", "avx512_bf16": "AVX512BF16"}
CPUINFO = Path("/proc/cpuinfo")


def _proc_flags() -> set[str]:
    """The flags of the first processor in :data:`CPUINFO` (x86 ``flags``, Arm ``Features``); empty if unreadable."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def _numpy_cpu_features() -> dict[str, bool] | None:
    """numpy's runtime-dispatch table (``AVX2`` -> True, ...), or None where this numpy does not expose it."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return None
    return dict(__cpu_features__)


def _numpy_flags() -> dict[str, bool] | None:
    table = _numpy_cpu_features()
    if table is None:
        return None
    return {name: bool(table.get(key, False)) for name, key in _NUMPY_NAMES.items()}


def cpu_features() -> dict[str, bool]:
    """Each of :data:`FEATURES` -> whether this CPU has it."""
    proc = _proc_flags()
    numpy = _numpy_flags()
    if numpy is None:
        return {name: name in proc for name in FEATURES}
    features = dict(numpy)
    same_cpu = numpy["avx512f"] == ("avx512f" in proc)
    for name in FEATURES:
        if name not in features:
            features[name] = same_cpu and name in proc
    return {name: features[name] for name in FEATURES}


def has_vnni(features: dict[str, bool]) -> bool:
    """Whether int8 dot products accumulate in 32 bits (VNNI, AVX-VNNI or AMX) rather than saturating 16-bit pairs."""
    return any(features.get(name, False) for name in ("avx512_vnni", "avx_vnni", "amx_int8"))


def has_bf16(features: dict[str, bool]) -> bool:
    """Whether bf16 arithmetic is native (AVX-512 BF16 or AMX)."""
    return features.get("avx512_bf16", False) or features.get("amx_bf16", False)


def describe_cpu(features: dict[str, bool]) -> str:
    """One line, e.g. ``AVX2 yes, AVX-512 yes, VNNI yes, AMX yes, bf16 yes``."""
    parts = {
        "AVX2": features.get("avx2", False),
        "AVX-512": features.get("avx512f", False),
        "VNNI": has_vnni(features),
        "AMX": features.get("amx_int8", False),
        "bf16": has_bf16(features),
    }
    return ", ".join(f"{name} {'yes' if value else 'no'}" for name, value in parts.items())
