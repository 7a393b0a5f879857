"""--fail-if conditions: what they compute, and a clear one-line error for every way to get one wrong."""

from __future__ import annotations

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.evaluate.fail_if import check, validate

VARIANTS = {
    "base": {"accuracy": 0.5, "macro_f1": 0.4, "invalid_rate": 0.2},
    "base-few-shot": {"accuracy": 0.7, "macro_f1": 0.6, "invalid_rate": 0.1},
    "tuned": {"accuracy": 0.9, "macro_f1": 0.85, "invalid_rate": 0.02, "per_class": {"a": 1.0}},
    "tuned_r16-v2": {"accuracy": 0.74, "macro_f1": 0.7, "invalid_rate": 0.0},
}


@pytest.mark.parametrize("expr, expected", [
    ("tuned.accuracy < base-few-shot.accuracy + 0.05", False),  # 0.9 < 0.75
    ("tuned_r16-v2.accuracy < base-few-shot.accuracy + 0.05", True),  # 0.74 < 0.75
    ("tuned.macro_f1 >= 0.8 and tuned.invalid_rate < 0.1", True),
    ("tuned.macro_f1 >= 0.9 or tuned.invalid_rate > 0.05", False),
    ("not tuned.accuracy > 0.8", False),
    ("tuned.accuracy-base.accuracy > 0.3", True),  # no spaces: the minus still reads as a minus
    ("0.8-base.accuracy < 0.31", True),  # "0.8" is a number, not the start of a name
    ("(tuned.accuracy - base.accuracy) / base.accuracy >= 0.8", True),  # 0.4 / 0.5
    ("tuned.accuracy - base.accuracy / base.accuracy > 0", False),  # precedence: 0.9 - 1
    ("2 * base.accuracy == 1", True),
    ("0.5 < tuned.accuracy <= 0.9", True),  # chained, as in Python
    ("base.accuracy != base.accuracy", False),
    ("-tuned.accuracy < -0.85", True),
    ("  tuned.accuracy > 1e-3  ", True),
])
def test_conditions(expr, expected):
    assert check(expr, VARIANTS) is expected


def problem(expr, variants=VARIANTS):
    with pytest.raises(TuneforgeError) as caught:
        check(expr, variants)
    assert len(caught.value.problems) == 1
    found = caught.value.problems[0]
    assert (found.code, found.where) == ("invalid_fail_if", "--fail-if")
    return found.message


def test_unknown_variant_lists_the_variants():
    message = problem("tunned.accuracy < 0.8")
    assert message == ("unknown variant 'tunned' in 'tunned.accuracy'; "
                       "variants: base, base-few-shot, tuned, tuned_r16-v2")


def test_unknown_metric_lists_the_numeric_metrics_of_that_variant():
    assert problem("tuned.acc < 0.8") == ("unknown metric 'acc' in 'tuned.acc'; "
                                          "metrics of tuned: accuracy, invalid_rate, macro_f1")
    assert problem("tuned.per_class < 0.8").startswith("unknown metric 'per_class'")  # not a number


@pytest.mark.parametrize("expr, fragment", [
    ("", "the condition is empty"),
    ("   ", "the condition is empty"),
    ("tuned.accuracy <", "cannot parse 'tuned.accuracy <'"),
    ("tuned.accuracy < (0.8", "cannot parse"),
    ("tuned.accuracy << 0.8", "the operator '<<'"),
    ("0 < tuned.accuracy is not 1", "the operator 'is not'"),
    ("tuned.accuracy ! 0.8", "cannot parse"),
    ("accuracy < 0.8", "the bare name 'accuracy' (write VARIANT.METRIC) is not allowed"),
    ("tuned.accuracy ** 2 < 0.8", "the operator '**' in 'tuned.accuracy ** 2' is not allowed"),
    ("tuned.accuracy % 2 < 0.8", "the operator '%'"),
    ("tuned.accuracy in [0.8]", "the operator 'in'"),
    ("__import__('os').system('true')", "is not allowed"),
    ("tuned.accuracy < 'high'", "\"'high'\" is not allowed"),
    ("tuned.accuracy < True", "'True' is not allowed"),
    ("tuned.accuracy", "'tuned.accuracy' is a number where a comparison is needed"),
    ("tuned.accuracy > 0.5 and 1", "'1' is a number where a comparison is needed"),
    ("(tuned.accuracy > 0.5) + 1 > 1", "'tuned.accuracy > 0.5' is true/false where a number is needed"),
])
def test_every_bad_condition_is_named(expr, fragment):
    assert fragment in problem(expr)
    # and refused the same way before inference, from the metric names alone
    with pytest.raises(TuneforgeError) as caught:
        validate(expr, NAMES)
    assert fragment in caught.value.problems[0].message


NAMES = {name: [k for k, v in metrics.items() if isinstance(v, float)] for name, metrics in VARIANTS.items()}


def test_validate_checks_names_without_computing():
    validate("tuned.accuracy / base-few-shot.accuracy < 1.1", NAMES)  # no value, so no division by zero
    validate("(tuned.accuracy - base.accuracy) / (base.accuracy - base.accuracy) > 0", NAMES)
    with pytest.raises(TuneforgeError) as caught:
        validate("tuned.rouge_l < 0.5", {"tuned": ["accuracy", "macro_f1"]})
    assert caught.value.problems[0].message == ("unknown metric 'rouge_l' in 'tuned.rouge_l'; "
                                                "metrics of tuned: accuracy, macro_f1")


def test_division_by_zero_on_the_real_values_is_a_clear_error():
    message = problem("tuned.accuracy / (base.accuracy - 0.5) > 1")
    assert message.startswith("division by zero in 'tuned.accuracy / (base.accuracy - 0.5)': "
                              "'base.accuracy - 0.5' is 0 in this evaluation")


def _cli(monkeypatch, capsys, tmp_path, expr: str, variants: dict) -> tuple[int, str]:
    from tuneforge import cli
    from tuneforge.evaluate import run

    monkeypatch.setattr(run, "evaluate", lambda cfg: {"task": "classification", "n": 4, "variants": variants})
    with pytest.raises(SystemExit) as caught:
        cli.main(["eval", "--data", str(tmp_path), "--out", str(tmp_path / "e"), "--fail-if", expr])
    return caught.value.code, capsys.readouterr().err


def test_the_cli_accepts_a_ratio_and_reports_a_zero_denominator(monkeypatch, capsys, tmp_path):
    ratio = "tuned.accuracy / base-few-shot.accuracy < 1.1"
    tuned = {"accuracy": 0.8}
    code, _ = _cli(monkeypatch, capsys, tmp_path, ratio, {"base-few-shot": {"accuracy": 0.5}, "tuned": tuned})
    assert code == 0
    code, err = _cli(monkeypatch, capsys, tmp_path, ratio, {"base-few-shot": {"accuracy": 0.0}, "tuned": tuned})
    assert code == 2 and "--fail-if: invalid_fail_if: division by zero" in err and "Traceback" not in err


def test_a_metric_that_is_not_a_finite_number_cannot_pass_silently():
    message = problem("tuned.accuracy < 0.8", {"tuned": {"accuracy": float("nan")}})
    assert message == "tuned.accuracy is nan, not a finite number; it cannot be compared"


def test_the_error_is_one_line_for_the_cli():
    with pytest.raises(TuneforgeError) as caught:
        check("nope.accuracy < 1", VARIANTS)
    assert str(caught.value).startswith("--fail-if: invalid_fail_if: unknown variant 'nope'")
    assert "\n" not in str(caught.value)
