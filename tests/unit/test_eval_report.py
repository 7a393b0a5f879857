"""The evaluate report: the sections people look for, the right examples in them, and escaped text."""

from __future__ import annotations

import re

import pytest

from tuneforge.evaluate.report import best_of, flips, pick_variants, top_confusions, worst, write_reports

EVIL = "<script>alert('x')</script> & | pipe"


def classification_result() -> dict:
    return {
        "task": "classification", "n": 6, "main_metric": "accuracy",
        "variants": {
            "base": {"accuracy": 0.25, "macro_f1": 0.2, "invalid_rate": 0.5},
            "base-few-shot": {"accuracy": 0.5, "macro_f1": 0.45, "invalid_rate": 0.25},
            "tuned": {"accuracy": 0.75, "macro_f1": 0.7, "invalid_rate": 0.0},
        },
        "confusion": {"tuned": {"labels": ["billing", "tech <ops>"],
                                "matrix": [[3, 2, 1], [4, 5, 0]]}},
        "general": {"base": 0.9, "base-few-shot": 0.9, "tuned": 0.8},
    }


def prediction(i: int, base: float, tuned: float, text: str = "") -> dict:
    return {"index": i, "input": text or f"question {i}", "reference": "billing",
            "outputs": {"base": "?", "base-few-shot": f"baseline says {i}", "tuned": f"tuned says {i}"},
            "scores": {"base": 0.0, "base-few-shot": base, "tuned": tuned}}


PREDICTIONS = [prediction(0, 0.0, 1.0, EVIL), prediction(1, 1.0, 0.0), prediction(2, 1.0, 1.0),
               prediction(3, 0.0, 1.0), prediction(4, 0.0, 0.0), prediction(5, 0.2, 0.9)]


def test_pick_variants():
    assert pick_variants(["base", "base-few-shot", "tuned"]) == ("base-few-shot", "tuned")
    assert pick_variants(["zero-shot", "lora", "qlora"]) == ("zero-shot", "qlora")
    assert pick_variants(["tuned"]) == ("tuned", "tuned")


def test_best_of_knows_which_way_is_better():
    assert best_of("accuracy", {"a": 0.5, "b": 0.7, "c": 0.7}) == {"b", "c"}
    assert best_of("invalid_rate", {"a": 0.5, "b": 0.1}) == {"b"}
    assert best_of("accuracy", {"a": 0.5, "b": 0.5}) == set()  # a tie everywhere marks nothing
    assert best_of("accuracy", {"a": 0.5, "b": None}) == set()


@pytest.mark.parametrize("metric", ["latency_ms_p50", "perplexity", "invalid_rate"])
def test_lower_is_better_for_latency_perplexity_and_invalid_rate(metric):
    assert best_of(metric, {"a": 120.0, "b": 80.5, "c": 300.0}) == {"b"}


def test_the_html_report_marks_the_fastest_variant(tmp_path):
    result = {"task": "generation", "n": 1, "main_metric": "rouge_l",
              "variants": {"base": {"rouge_l": 0.2, "latency_ms_p50": 40.0, "perplexity": 9.0},
                           "tuned": {"rouge_l": 0.4, "latency_ms_p50": 95.0, "perplexity": 3.0}}}
    write_reports(tmp_path, result, [])
    page = (tmp_path / "report.html").read_text()
    assert re.search(r'<th>latency_ms_p50</th><td class="num best">40\.000</td><td class="num">95\.000</td>', page)
    assert re.search(r'<th>perplexity</th><td class="num">9\.000</td><td class="num best">3\.000</td>', page)
    assert "| latency_ms_p50 | **40.000** | 95.000 |" in (tmp_path / "report.md").read_text()


def test_flips_worst_and_confusions():
    improved, regressed = flips(PREDICTIONS, "base-few-shot", "tuned")
    assert [p["index"] for p in improved] == [0, 3, 5]  # biggest gain first, then by index
    assert [p["index"] for p in regressed] == [1]
    assert [p["index"] for p in worst(PREDICTIONS, "tuned")] == [1, 4, 5, 0, 2, 3]
    confusion = classification_result()["confusion"]["tuned"]
    assert top_confusions(confusion) == [("tech <ops>", "billing", 4), ("billing", "tech <ops>", 2),
                                         ("billing", "(invalid)", 1)]


@pytest.fixture
def reports(tmp_path):
    write_reports(tmp_path / "eval", classification_result(), PREDICTIONS)
    return (tmp_path / "eval" / "report.md").read_text(), (tmp_path / "eval" / "report.html").read_text()


def test_markdown_report(reports):
    md, _ = reports
    for heading in ["# Evaluation report", "## Metrics", "## accuracy by variant", "## Confusion matrix (tuned)",
                    "## Most frequent confusions (tuned)", "## Flipped examples",
                    "### Improved: tuned better than base-few-shot (3, first 3 shown)",
                    "### Regressed: tuned worse than base-few-shot (1, first 1 shown)", "## Worst examples (tuned)"]:
        assert heading + "\n" in md
    assert "| metric | base | base-few-shot | tuned |" in md
    assert "| accuracy | 0.250 | 0.500 | **0.750** |" in md
    assert "| invalid_rate | 0.500 | 0.250 | **0.000** |" in md  # lower is better
    assert "| general_accuracy | **0.900** | **0.900** | 0.800 |" in md
    assert "| tech &lt;ops&gt; | 4 | 5 | 0 |" in md
    assert "| tech &lt;ops&gt; | billing | 4 |" in md
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; \\| pipe" in md
    assert "<script>" not in md
    improved = md.split("### Improved")[1].split("### Regressed")[0]
    assert re.findall(r"^\| (\d+) \|", improved, re.M) == ["0", "3", "5"]
    worst_part = md.split("## Worst examples (tuned)")[1]
    assert re.findall(r"^\| (\d+) \|", worst_part, re.M) == ["1", "4", "5", "0", "2", "3"]


def test_html_report_is_self_contained_and_escaped(reports):
    _, page = reports
    for section in ['<h2 id="metrics">Metrics</h2>', '<h2 id="chart">accuracy by variant</h2>',
                    '<h2 id="confusion">Confusion matrix (tuned)</h2>', '<h2 id="confusions">',
                    '<h2 id="flips">Flipped examples</h2>', '<h2 id="worst">Worst examples (tuned)</h2>']:
        assert section in page
    assert page.startswith("<!doctype html>") and "<style>" in page
    assert "<script" not in page and "<link" not in page and "src=" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; | pipe" in page
    assert "<th>tech &lt;ops&gt;</th>" in page
    # one bar per variant, scaled to the value (420 px for 1.0)
    assert re.findall(r'<rect x="180" y="\d+" width="([\d.]+)"', page) == ["105.0", "210.0", "315.0"]
    assert page.count('class="num best"') == 5  # accuracy, macro_f1, invalid_rate, and the general tie
    # the most frequent cell is the darkest and gets white text; the diagonal is bold
    assert 'style="background: rgba(74, 120, 181, 1.00); color: #fff; font-weight: 700;">5</td>' in page
    assert 'style="background: rgba(74, 120, 181, 0.80); color: #fff;">4</td>' in page


def test_generation_report_with_one_variant_and_long_text(tmp_path):
    long_input = "word " * 200
    result = {"task": "generation", "n": 1, "main_metric": "rouge_l", "variants": {"tuned": {"rouge_l": 0.4, "chrf": 0.5}}}
    rows = [{"index": 0, "input": long_input, "reference": "ref", "outputs": {"tuned": "out"}, "scores": {"tuned": 0.4}}]
    write_reports(tmp_path, result, rows)
    md = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    assert "Confusion" not in md and "Confusion" not in page
    assert "Only one variant: nothing to compare." in md and "Only one variant: nothing to compare." in page
    assert "| rouge_l | 0.400 |" in md  # a single variant has no "best"
    assert long_input[:300] + "…" in md and long_input not in md
    assert "| 0 | 0.400 |" in md


def test_empty_predictions_still_write_a_report(tmp_path):
    write_reports(tmp_path, classification_result(), [])
    md = (tmp_path / "report.md").read_text()
    assert "(0, first 0 shown)" in md and "No examples." in md
    assert "<p>None.</p>" in (tmp_path / "report.html").read_text()
