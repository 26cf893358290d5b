"""Do the paper's claims hold here? Each "row A is faster than row B" checked on the measurements and the paper."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shufflenet.guidelines.experiments import EXPERIMENTS, TITLES

# The paper's claims as (faster row, slower row) pairs; the first of each list is the headline comparison.
CLAIMS: dict[str, list[tuple[str, str]]] = {
    "G1": [("1:1", "1:12"), ("1:1", "1:2"), ("1:2", "1:6"), ("1:6", "1:12")],
    "G2": [("g=1", "g=8"), ("g=1", "g=2"), ("g=2", "g=4"), ("g=4", "g=8")],
    "G3": [
        ("1-fragment", "4-fragment-parallel"),
        ("1-fragment", "2-fragment-series"),
        ("2-fragment-series", "4-fragment-series"),
        ("1-fragment", "2-fragment-parallel"),
        ("2-fragment-parallel", "4-fragment-parallel"),
    ],
    "G4": [("no ReLU/shortcut", "ReLU+shortcut"), ("shortcut only", "ReLU+shortcut"), ("ReLU only", "ReLU+shortcut")],
    # Not the paper's: what G4 predicts for ShuffleNetV2+ (SE and h-swish add ~0 FLOPs but take time), and that
    # v2 1.0x outruns V2+ Small at 7% fewer FLOPs. The paper has no figures for these rows.
    "v2_plus": [
        ("shufflenet_v2_plus_small no SE, ReLU", "shufflenet_v2_plus_small"),
        ("shufflenet_v2_plus_small no SE", "shufflenet_v2_plus_small"),
        ("shufflenet_v2_plus_small ReLU", "shufflenet_v2_plus_small"),
        ("shufflenet_v2_x1_0", "shufflenet_v2_plus_small"),
    ],
}


def _status(ratio: float | None, tol: float) -> str | None:
    if ratio is None:
        return None
    if ratio >= 1 + tol:
        return "holds"
    if ratio <= 1 - tol:
        return "reversed"
    return "tie"


def _overall(statuses: list[str]) -> str:
    holds, reversed_ = statuses.count("holds"), statuses.count("reversed")
    if statuses and holds == len(statuses):
        return "agrees"
    if reversed_ > holds or holds == 0:
        return "disagrees"
    return "partly agrees"


def _paper_overall(statuses: list[str | None]) -> str:
    known = [status for status in statuses if status]
    return _overall(known) if known else "no figures"  # v2_plus: the paper has no such rows


def _claims_for(experiment: str, rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    if experiment == "v1_vs_v2":
        names = list(dict.fromkeys(r["name"] for r in rows))
        return [(v2, v1) for v1, v2 in zip(names[0::2], names[1::2], strict=True)]
    return CLAIMS[experiment]


@dataclass
class Verdict:
    """How the paper's claims for one experiment fare on this machine (and in the paper's own columns)."""

    experiment: str
    title: str
    verdict: str
    holds: int
    ties: int
    reversed: int
    paper_gpu_verdict: str
    paper_arm_verdict: str
    headline: str = ""  # the first claim, e.g. "1:1 faster than 1:12"
    headline_holds: int = 0  # at how many multipliers (v1_vs_v2: widths) the headline claim holds
    headline_total: int = 0
    claims: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""


def verdicts(results: dict[str, Any], tolerance: float = 0.03) -> dict[str, dict[str, Any]]:
    """Per experiment: each claim 'row A is faster than row B' checked on the measurements and the paper.

    A claim holds when A's median beats B's by more than ``tolerance`` (or by more than the two rows' mean
    interquartile spread, if larger), is reversed when B wins by that much, and is a tie otherwise. The same
    rule (with ``tolerance`` alone) is applied to the paper's GPU and ARM columns.
    """
    out: dict[str, dict[str, Any]] = {}
    for experiment in EXPERIMENTS:
        rows = results.get(experiment)
        if not rows:
            continue
        claims = []
        for multiplier in dict.fromkeys(r["multiplier"] for r in rows):
            by_name = {r["name"]: r for r in rows if r["multiplier"] == multiplier}
            for faster, slower in _claims_for(experiment, rows):
                if faster not in by_name or slower not in by_name:
                    continue
                a, b = by_name[faster], by_name[slower]
                tol = max(tolerance, (a["spread_pct"] + b["spread_pct"]) / 200)
                ratio = a["images_per_s"] / b["images_per_s"]
                claim = {"faster": faster, "slower": slower, "multiplier": multiplier, "ratio": ratio, "tol": tol}
                claim["status"] = _status(ratio, tol)
                for platform_ in ("gpu", "arm"):
                    pa, pb = a[f"paper_{platform_}"], b[f"paper_{platform_}"]
                    paper_ratio = pa / pb if pa and pb else None
                    claim[f"paper_{platform_}_ratio"] = paper_ratio
                    claim[f"paper_{platform_}_status"] = _status(paper_ratio, tolerance)
                claims.append(claim)
        statuses = [c["status"] for c in claims]
        verdict = Verdict(
            experiment=experiment,
            title=TITLES[experiment],
            verdict=_overall(statuses),
            holds=statuses.count("holds"),
            ties=statuses.count("tie"),
            reversed=statuses.count("reversed"),
            paper_gpu_verdict=_paper_overall([c["paper_gpu_status"] for c in claims]),
            paper_arm_verdict=_paper_overall([c["paper_arm_status"] for c in claims]),
            claims=claims,
        )
        heads = _headline_claims(experiment, claims)
        verdict.headline_holds = sum(c["status"] == "holds" for c in heads)
        verdict.headline_total = len(heads)
        verdict.headline = (
            "v2 faster than v1 (g=3)"
            if experiment == "v1_vs_v2"
            else f"{heads[0]['faster']} faster than {heads[0]['slower']}"
        )
        verdict.text = _verdict_text(verdict)
        out[experiment] = asdict(verdict)
    return out


def _ratio_text(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _headline_claims(experiment: str, claims: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if experiment == "v1_vs_v2" or not claims:
        return claims  # one claim per width, each a headline
    first = (claims[0]["faster"], claims[0]["slower"])
    return [c for c in claims if (c["faster"], c["slower"]) == first]


def _verdict_text(v: Verdict) -> str:
    heads = _headline_claims(v.experiment, v.claims)
    head = heads[0]
    what = "v2 / v1 speed" if v.experiment == "v1_vs_v2" else f"{head['faster']} / {head['slower']} speed"
    where = "widths" if v.experiment == "v1_vs_v2" else "multipliers"
    detail = "; ".join(
        f"x{c['multiplier']:g} {_ratio_text(c['ratio'])} (paper GPU {_ratio_text(c['paper_gpu_ratio'])}, "
        f"ARM {_ratio_text(c['paper_arm_ratio'])})"
        for c in heads
    )
    return (
        f"{v.experiment} ({v.title}): {v.verdict} on this machine. Headline ({v.headline}) holds at "
        f"{v.headline_holds}/{v.headline_total} {where}; all pairwise claims: {v.holds}/"
        f"{len(v.claims)} hold, {v.ties} tie, {v.reversed} reversed (the paper's own columns under the same rule: "
        f"GPU {v.paper_gpu_verdict}, ARM {v.paper_arm_verdict}). {what}: {detail}."
    )
