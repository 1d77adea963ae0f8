"""`make demo` runs end to end (small sizes)."""

from msa.demo import DemoConfig, run


def test_demo_runs_end_to_end():
    lines: list[str] = []
    res = run(DemoConfig(documents=256, questions=2, eval_questions=4), out=lines.append)
    text = "\n".join(lines)
    assert res["documents"] == 256 and res["tokens"] > 0 and set(res["em"]) == {"single", "multi"}
    assert "round 1:" in text and "exact match on 4 held-out questions" in text
