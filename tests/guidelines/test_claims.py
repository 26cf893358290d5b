"""Verdict logic: a claim holds, ties or is reversed by the measured medians and their spread."""

from shufflenet import tables
from shufflenet.guidelines.claims import verdicts


def fake_rows(experiment: str, speed_of: dict[str, float], spread: float = 1.0) -> list[dict]:
    return [
        {"name": n, "multiplier": 1, "images_per_s": v, "spread_pct": spread, "paper_gpu": v, "paper_arm": None}
        for n, v in speed_of.items()
    ]


def test_verdicts_follow_the_measurements() -> None:
    agree = fake_rows("G1", {"1:1": 100.0, "1:2": 90.0, "1:6": 80.0, "1:12": 70.0})
    reverse = fake_rows("G1", {"1:1": 70.0, "1:2": 80.0, "1:6": 90.0, "1:12": 100.0})
    mixed = fake_rows("G1", {"1:1": 100.0, "1:2": 99.0, "1:6": 80.0, "1:12": 70.0})
    noisy = fake_rows("G1", {"1:1": 100.0, "1:2": 90.0, "1:6": 80.0, "1:12": 70.0}, spread=50.0)
    assert verdicts({"G1": agree})["G1"]["verdict"] == "agrees"
    assert verdicts({"G1": agree})["G1"]["paper_gpu_verdict"] == "agrees"
    assert verdicts({"G1": reverse})["G1"]["verdict"] == "disagrees"
    result = verdicts({"G1": mixed})["G1"]
    assert (result["verdict"], result["holds"], result["ties"]) == ("partly agrees", 3, 1)
    assert verdicts({"G1": noisy})["G1"]["holds"] < 4  # a 50% spread turns small margins into ties
    assert "1:1 / 1:12 speed" in result["text"] and result["headline_holds"] == 1
    assert verdicts({"G1": reverse})["G1"]["headline_holds"] == 0


def test_paper_columns_under_the_verdict_rule() -> None:
    """The rule applied to the paper's own figures: every GPU column agrees; ARM G3 has ties (10.1 vs 10.1)."""
    rows = {
        "G1": [(n, r["gpu"], r["arm"]) for n, r in tables.V2_TABLE1_G1.items()],
        "G3": [(n, r["gpu"], r["arm"]) for n, r in tables.V2_TABLE3_G3.items()],
    }
    results = {
        exp: [
            {"name": n, "multiplier": m, "images_per_s": 1.0, "spread_pct": 0.0, "paper_gpu": g[i], "paper_arm": a[i]}
            for n, g, a in table
            for i, m in enumerate(tables.V2_GUIDELINE_MULTIPLIERS)
        ]
        for exp, table in rows.items()
    }
    out = verdicts(results)
    assert out["G1"]["paper_gpu_verdict"] == out["G1"]["paper_arm_verdict"] == "agrees"
    assert out["G3"]["paper_arm_verdict"] == "partly agrees"
    assert out["G1"]["verdict"] == "disagrees"  # equal measured speeds: no claim holds
