"""``blpjax demo`` runs end to end on a small simulated dataset and prints every section."""

from __future__ import annotations

from blpjax._cli import main


def test_demo_small(capsys):
    main(["demo", "--markets", "20", "--agents", "50", "--survey-markets", "4", "--buyers", "200", "--draws", "10"])
    out = capsys.readouterr().out
    for section in (
        "1) Plain logit",
        "2) BLP random coefficients",
        "3) Counterfactual",
        "4) Micro moment",
        "5) Optimal micro moments",
    ):
        assert section in out
    assert "E[income | j > 0]" in out
    assert "score[pi[1, income]]" in out
    assert "optimal micro moment" in out
