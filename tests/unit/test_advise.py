"""tuneforge advise: the cost arithmetic against the guides' worked examples (corrected), the
decision tree with and without reports, the memory formulas against real PEFT models and
autograd's saved tensors (tiny model), and bad input through the CLI (one line per problem, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.advise.cost import advise_cost, text as cost_text
from tuneforge.advise.decide import advise_decide
from tuneforge.advise.method import (GB, MethodConfig, activation_bytes, advise_method, assumed_shape, config_shape,
                                     trainable)
from tuneforge.errors import TuneforgeError

COST_KEYS = {"api_monthly", "ft_monthly", "api_first_year", "ft_first_year", "first_year_savings", "breakeven_months"}


def assert_user_error(code: int, stderr: str, *expected: str) -> None:
    assert code == 2, stderr
    for what in expected:
        assert what in stderr, stderr
    assert "internal_error" not in stderr and "Traceback" not in stderr, stderr


# ---------------------------------------------------------------- cost


def test_the_guides_monthly_figures_pay_back_in_4_9_months():
    # $5,000 vs $500 a month is 100,000 requests at $0.05 vs $0.005; the upfront cost is the fine-tune's only
    r = advise_cost(dict(requests_per_month=100_000, api_cost_per_request=0.05, ft_cost_per_request=0.005,
                         upfront=22_000))
    assert {k: r[k] for k in COST_KEYS} == {"api_monthly": 5000, "ft_monthly": 500, "api_first_year": 60000,
                                            "ft_first_year": 28000, "first_year_savings": 32000,
                                            "breakeven_months": 4.9}
    assert r["pays_back_within_horizon"]
    assert "pays back within the 12-month horizon" in cost_text(r)


def test_the_guides_per_request_figures_do_not_pay_back_in_the_first_year():
    # 10,000 x $0.05 is $500 a month (the guide says $5,000)
    r = advise_cost(dict(requests_per_month=10_000, api_cost_per_request=0.05, ft_cost_per_request=0.005,
                         upfront=22_000))
    assert {k: r[k] for k in COST_KEYS} == {"api_monthly": 500, "ft_monthly": 50, "api_first_year": 6000,
                                            "ft_first_year": 22600, "first_year_savings": -16600,
                                            "breakeven_months": 48.9}
    assert not r["pays_back_within_horizon"]
    shown = cost_text(r)
    assert "does NOT pay back within the 12-month horizon" in shown and "48.9 months" in shown
    assert "$16,600 more" in shown


def test_a_fine_tune_that_saves_nothing_never_pays_back():
    r = advise_cost(dict(requests_per_month=1000, api_cost_per_request=0.01, ft_cost_per_request=0.02, upfront=10))
    assert r["breakeven_months"] is None and not r["pays_back_within_horizon"]
    assert "never pays back" in cost_text(r)
    free = advise_cost(dict(requests_per_month=1000, api_cost_per_request=0.02, ft_cost_per_request=0.01))
    assert free["breakeven_months"] == 0 and free["first_year_savings"] == 120


def test_the_horizon_changes_totals_not_the_first_year():
    r = advise_cost(dict(requests_per_month=10_000, api_cost_per_request=0.05, ft_cost_per_request=0.005,
                         upfront=22_000, months=60))
    assert r["api_first_year"] == 6000 and r["api_total"] == 30000 and r["ft_total"] == 25000
    assert r["pays_back_within_horizon"] and "within the 60-month horizon" in cost_text(r)


def test_token_form_turns_throughput_into_a_cost_per_request():
    # 1,000 tokens at $10/M = $0.01; 1,000 tokens at 500 tokens/s = 2 GPU-seconds at $3.60/h = $0.002
    r = advise_cost(dict(requests_per_month=50_000, tokens_per_request=1000, api_price_per_mtok=10, gpu_hourly=3.6,
                         throughput_tokens_per_s=500, upfront=1000))
    assert r["api_cost_per_request"] == pytest.approx(0.01) and r["ft_cost_per_request"] == pytest.approx(0.002)
    assert r["api_monthly"] == 500 and r["ft_monthly"] == 100 and r["breakeven_months"] == 2.5
    assert r["gpu_seconds_per_request"] == 2


def test_throughput_measured_by_eval(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"task": "classification", "main_metric": "accuracy", "variants": {
        "base-zero-shot": {"accuracy": 0.2, "tokens_per_s": 100.0}, "tuned": {"accuracy": 0.9, "tokens_per_s": 400.0}}}))
    values = dict(requests_per_month=1000, tokens_per_request=400, api_cost_per_request=0.01, gpu_hourly=3.6,
                  throughput_from=tmp_path)
    r = advise_cost(values)
    assert r["throughput_tokens_per_s"] == 400 and r["throughput_source"].startswith("tuned")
    assert r["ft_cost_per_request"] == pytest.approx(0.001)
    assert advise_cost(values | {"variant": "base-zero-shot"})["ft_cost_per_request"] == pytest.approx(0.004)
    with pytest.raises(TuneforgeError, match="no_throughput"):
        advise_cost(values | {"variant": "nope"})


def test_cost_cli_json(run_cli):
    code, stdout, _ = run_cli("advise", "cost", "--requests-per-month", "100000", "--api-cost-per-request", "0.05",
                              "--ft-cost-per-request", "0.005", "--upfront", "22000", "--json")
    assert code in (0, None)
    r = json.loads(stdout)
    assert COST_KEYS <= set(r) and r["breakeven_months"] == 4.9 and r["first_year_savings"] == 32000


def test_cost_bad_input_one_line_per_problem(run_cli, tmp_path):
    code, _, stderr = run_cli("advise", "cost", "--requests-per-month", "-5", "--api-cost-per-request", "0.05",
                              "--api-price-per-mtok", "3", "--ft-cost-per-request", "-1", "--upfront", "-2")
    assert_user_error(code, stderr, "--requests-per-month: invalid_value", "--ft-cost-per-request: invalid_value",
                      "--upfront: invalid_value", "--api-cost-per-request: conflicting_flags")
    assert len(stderr.strip().splitlines()) == 5  # and --tokens-per-request: missing_flag
    assert_user_error(*run_cli("advise", "cost", "--requests-per-month", "5")[::2], "missing_flag")
    bad = tmp_path / "eval.json"
    bad.write_text("{not json")
    args = ["advise", "cost", "--requests-per-month", "5", "--api-cost-per-request", "1", "--tokens-per-request",
            "10", "--gpu-hourly", "1"]
    assert_user_error(*run_cli(*args, "--throughput-from", bad)[::2], "invalid_report")
    assert_user_error(*run_cli(*args, "--throughput-from", tmp_path / "none.json")[::2], "file_not_found")


# ---------------------------------------------------------------- decide


@pytest.mark.parametrize("values, expected", [
    (dict(examples=50), "few-shot"),
    (dict(examples=300), "fine-tune-with-care"),
    (dict(examples=800), "fine-tune"),
    (dict(), "unknown"),
    (dict(examples=800, knowledge_task=True), "rag"),
    (dict(examples=800, changes_often=True), "rag"),
    (dict(examples=800, baseline_accuracy=0.93, target_accuracy=0.9), "prompting"),
    (dict(examples=800, baseline_accuracy=0.6, target_accuracy=0.9), "fine-tune"),
])
def test_decision_paths(values, expected):
    r = advise_decide(values)
    assert r["recommendation"] == expected
    assert r["reasons"] and r["title"] and r["next"]


def test_reasons_follow_the_tree():
    r = advise_decide(dict(examples=50, latency_ms=40, requests_per_month=2e6))
    shown = " | ".join(r["reasons"])
    assert "no baseline score" in shown and "fewer than 100" in shown
    assert "40 ms latency budget" in shown and "2,000,000 requests a month" in shown
    assert "pay off once you have 100+ examples" in shown  # too few examples: collect them first
    r = advise_decide(dict(examples=600, baseline_accuracy=0.6, target_accuracy=0.9, requests_per_month=2e6))
    assert any("fine-tuning pays off" in x for x in r["reasons"])
    assert any("30.0 points to close" in x for x in r["reasons"])
    small = advise_decide(dict(examples=600, baseline_accuracy=0.88, target_accuracy=0.9))
    assert any("better prompts or more shots" in x for x in small["reasons"])


def report(tmp_path: Path, **changes) -> Path:
    """A prepare report.json with the keys prepare writes (the real one is tested below)."""
    data = {"status": "ok", "records_in": 1000, "records_out": 900, "task": "classification", "bad_records": 0,
            "splits": {"train": 720, "val": 90, "test": 90},
            "duplicates": {"exact": 50, "near": 45, "near_dropped": False, "leaks_dropped": 0},
            "contradictions": [], "contradiction_records": 0,
            "labels": {"billing": 500, "technical": 300, "other": 100}, "warnings": []}
    data.update(changes)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))
    return path


def test_a_prepare_report_gives_the_real_count_and_warnings(tmp_path):
    r = advise_decide(dict(report=report(tmp_path), examples=10))
    # 720 training records, near duplicates (5% of the output) counted once
    assert r["examples"] == 684 and r["recommendation"] == "fine-tune"
    assert r["notes"] == ["--examples 10 is replaced by the report's count"]
    assert r["data"]["labels"]["ratio"] == 5.0 and not r["warnings"]
    r = advise_decide(dict(report=report(tmp_path, labels={"a": 600, "b": 20}, contradiction_records=40,
                                         splits={"train": 80, "val": 10, "test": 10}, bad_records=3,
                                         duplicates={"exact": 0, "near": 90})))
    assert r["recommendation"] == "few-shot"
    shown = " | ".join(r["warnings"])
    for what in ("only 72 training examples", "labels are imbalanced", "many records contradict each other",
                 "near duplicates", "3 malformed records"):
        assert what in shown


def test_a_real_prepare_report(tiny_model, tmp_path):
    from tuneforge.data.config import PrepareConfig
    from tuneforge.data.prepare import prepare

    rows = [{"messages": [{"role": "user", "content": f"ticket {i}: item {i * 13} is broken on day {i % 7}"},
                          {"role": "assistant", "content": ["billing", "technical"][i % 2]}]} for i in range(60)]
    src = tmp_path / "tickets.jsonl"
    src.write_text("".join(json.dumps(row) + "\n" for row in rows))
    prepare(PrepareConfig(inputs=[src], out=tmp_path / "data", model=tiny_model, memorisation_check=False))
    r = advise_decide(dict(report=tmp_path / "data"))
    assert r["examples_source"].startswith("report") and 0 < r["examples"] <= 60
    assert r["recommendation"] == "few-shot" and r["data"]["labels"]["classes"] == 2


def eval_json(tmp_path: Path, **variants) -> Path:
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"task": "classification", "main_metric": "accuracy",
                                "variants": {name: {"accuracy": v} for name, v in variants.items()}}))
    return path


def test_an_eval_report_gives_the_few_shot_score_and_the_gain(tmp_path):
    path = eval_json(tmp_path, **{"base-zero-shot": 0.2, "base-few-shot": 0.55})
    r = advise_decide(dict(examples=700, eval_report=path, target_accuracy=0.9))
    assert r["baseline"] == 0.55 and r["baseline_source"] == "base-few-shot (eval)"
    assert any("35.0 points to close" in x for x in r["reasons"])
    assert any("worth a try" in x for x in r["reasons"])
    r = advise_decide(dict(examples=700, eval_report=eval_json(tmp_path, **{"base-few-shot": 0.95}),
                           target_accuracy=0.9))
    assert r["recommendation"] == "prompting"
    r = advise_decide(dict(examples=700, eval_report=eval_json(tmp_path, **{"base-few-shot": 0.6, "tuned": 0.92}),
                           target_accuracy=0.9))
    assert any("+32.0 points" in x and "justifies" in x for x in r["reasons"])
    assert any("reaches the target" in x for x in r["reasons"])
    r = advise_decide(dict(examples=700, eval_report=eval_json(tmp_path, **{"base-few-shot": 0.6, "tuned": 0.62})))
    assert any("does not yet justify" in x for x in r["reasons"])
    # the user's own baseline wins over the report's
    assert advise_decide(dict(eval_report=path, baseline_accuracy=0.7))["baseline"] == 0.7


def test_decide_cli_text_and_json(run_cli, tmp_path):
    code, stdout, _ = run_cli("advise", "decide", "--examples", "800", "--baseline-accuracy", "0.6",
                              "--target-accuracy", "0.9", "--latency-ms", "50")
    assert code in (0, None)
    assert stdout.startswith("recommendation: Fine-tune (LoRA) [fine-tune]") and "because:" in stdout
    code, stdout, _ = run_cli("advise", "decide", "--report", report(tmp_path), "--json")
    assert json.loads(stdout)["examples"] == 684


def test_decide_bad_input_one_line_per_problem(run_cli, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "report.json").write_text(json.dumps({"records_in": "many", "splits": {}}))
    (bad / "eval.json").write_text("[1, 2]")
    code, _, stderr = run_cli("advise", "decide", "--report", bad, "--eval-report", bad, "--examples", "-1",
                              "--target-accuracy", "1.5")
    assert_user_error(code, stderr, "--examples: invalid_value", "--target-accuracy: invalid_value")
    code, _, stderr = run_cli("advise", "decide", "--report", bad, "--eval-report", bad)
    # every missing or mistyped key of the report, and the eval report, in one go
    assert_user_error(code, stderr, "'records_in' is 'many'", "'records_out' is missing", "expected a JSON object")
    assert len(stderr.strip().splitlines()) == 6
    assert_user_error(*run_cli("advise", "decide", "--report", tmp_path / "nope.json")[::2], "file_not_found")
    (tmp_path / "report.json").write_text("{")
    assert_user_error(*run_cli("advise", "decide", "--report", tmp_path / "report.json")[::2], "invalid_report")
    failed = report(tmp_path, status="failed")
    assert_user_error(*run_cli("advise", "decide", "--report", failed)[::2], "report_failed")


# ---------------------------------------------------------------- method

SMOLLM2 = {"hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536, "num_attention_heads": 9,
           "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True}


def test_shape_and_lora_size_of_the_built_in_model():
    shape = config_shape(SMOLLM2, "smollm2")
    assert shape.params == 134_515_008  # what transformers counts
    # what train's summary.json reports for LoRA r=16 on all linear layers
    assert trainable(shape, "lora", MethodConfig(model="x")) == 4_884_480


@pytest.mark.parametrize("method", ["lora", "full", "prefix", "prompt"])
def test_trainable_counts_match_peft(method, tiny_model):
    from tuneforge.train.config import TrainConfig
    from tuneforge.train.methods import build_model, count_params

    cfg = TrainConfig(data=Path("unused"), method=method, lora={"r": 4})
    got, total = count_params(build_model(cfg, tiny_model, "cpu", bf16=False))
    shape = config_shape(json.loads((Path(tiny_model) / "config.json").read_text()), "tiny")
    assert trainable(shape, method, MethodConfig(model="x", lora_r=4)) == got
    if method == "full":
        assert shape.params == total


@pytest.mark.parametrize("method", ["lora", "full", "prompt"])
def test_activation_formula_counts_what_autograd_saves(method, tiny_model):
    """One training forward of the tiny model the way train runs it (packed attention, fused
    LoRA), counting each tensor autograd keeps for backward once; the formula's saved bytes
    (no CPU retention, no logits, no working set) are within 10% of it."""
    import torch

    from tuneforge.train.config import TrainConfig
    from tuneforge.train.methods import build_model

    packing = method != "prompt"
    model = build_model(TrainConfig(data=Path("unused"), method=method, lora={"r": 4}), tiny_model, "cpu",
                        bf16=False, packing=packing)
    model.train()
    seq, n = 128, 4
    ids = torch.randint(3, 300, (n, seq))
    if packing:  # as train's packed batches: one row, positions and boundaries per example
        inputs = {"input_ids": ids.view(1, -1), "position_ids": torch.arange(seq).repeat(n).view(1, -1),
                  "cu_seq_lens_q": torch.arange(n + 1) * seq}
    else:
        inputs = {"input_ids": ids}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**inputs, logits_to_keep=1, use_cache=False)
    cfg = MethodConfig(model="x", device="cuda", seq_len=seq, batch=n, lora_r=4, answer_tokens=1,
                       virtual_tokens=20)
    shape = config_shape(json.loads((Path(tiny_model) / "config.json").read_text()), "tiny")
    expected = activation_bytes(shape, method, cfg, bf16=False, checkpointed=False)
    tokens = n * (seq + (20 if method == "prompt" else 0))
    expected -= 4 * (2 * tokens * (shape.hidden + shape.intermediate) + 2 * n * shape.vocab)  # working set, logits
    assert sum(kept.values()) == pytest.approx(expected, rel=0.10)


def test_memory_terms_by_method():
    r = advise_method(dict(model_params=7e9, gpu_gb=24, seq_len=2048, batch=4))
    rows, p = r["methods"], 7e9
    assert r["shape"]["layers"] == 33 and abs(r["shape"]["hidden"] - 4224) <= 64  # a 7B Llama: 32 x 4096
    assert rows["full"]["weights_gb"] == pytest.approx(4 * p / GB, rel=1e-3)
    assert rows["full"]["gradients_gb"] + rows["full"]["optimizer_gb"] == pytest.approx(12 * p / GB, rel=1e-3)
    assert rows["lora"]["weights_gb"] == pytest.approx(2 * p / GB, rel=1e-3)  # bf16 on cuda
    assert rows["qlora"]["weights_gb"] < rows["lora"]["weights_gb"] / 3
    assert rows["lora"]["adapter_mb"] == pytest.approx(4 * rows["lora"]["trainable_params"] / 2**20, rel=1e-3)
    for row in rows.values():
        assert row["activations_checkpointed_gb"] < row["activations_gb"] / 4
        assert row["total_gb"] == pytest.approx(row["weights_gb"] + row["gradients_gb"] + row["optimizer_gb"]
                                                + row["activations_gb"] + row["runtime_gb"], abs=0.01)
    # PEFT's prefix cache does not work with gradient checkpointing, so train refuses it
    assert rows["prefix"]["total_checkpointed_gb"] == rows["prefix"]["total_gb"]
    fp32 = advise_method(dict(model_params=7e9, precision="fp32"))["methods"]["lora"]
    assert fp32["weights_gb"] == pytest.approx(2 * rows["lora"]["weights_gb"], rel=1e-3)
    # int8_base keeps the float32 base and two int8 copies of each block-linear weight
    int8 = advise_method(dict(model_params=7e9, precision="int8"))
    block_linear = int8["shape"]["block_linear"]
    assert int8["methods"]["lora"]["weights_gb"] == pytest.approx(fp32["weights_gb"] + 2 * block_linear / GB, rel=1e-3)
    assert int8["methods"]["full"]["weights_gb"] == rows["full"]["weights_gb"]
    assert int8["precision"] == "fp32, lora's base in int8"


@pytest.mark.parametrize("gpu_gb, expected, fits", [(80, "lora", "yes"), (24, "lora", "with checkpointing"),
                                                    (12, "qlora", "with checkpointing"), (4, None, "no")])
def test_recommendation_follows_the_memory(gpu_gb, expected, fits):
    r = advise_method(dict(model_params=7e9, gpu_gb=gpu_gb, seq_len=2048, batch=4))
    assert r["recommendation"] == expected
    assert r["methods"][expected or "qlora"]["fits"] == fits


def test_cpu_mode_counts_the_process_and_the_allocator():
    cpu = advise_method(dict(model_params=1.35e8, device="cpu", gpu_gb=8, precision="fp32", seq_len=64, batch=8))
    gpu = advise_method(dict(model_params=1.35e8, device="cuda", gpu_gb=8, precision="fp32", seq_len=64, batch=8))
    assert cpu["methods"]["lora"]["runtime_gb"] == 0.47
    assert cpu["methods"]["lora"]["activations_gb"] == pytest.approx(2 * gpu["methods"]["lora"]["activations_gb"],
                                                                     rel=1e-2)


def test_method_cli(run_cli, tiny_model):
    code, stdout, _ = run_cli("advise", "method", "--model", tiny_model, "--device", "cpu", "--memory-gb", "4",
                              "--seq-len", "64", "--batch", "2", "--json")
    assert code in (0, None)
    r = json.loads(stdout)
    assert r["recommendation"] == "lora" and r["memory_gb"] == 4 and r["shape"]["layers"] == 2
    code, stdout, _ = run_cli("advise", "method", "--model-params", "7e9")
    assert "recommendation: lora" in stdout and "with checkpointing" in stdout


def test_method_bad_input(run_cli, tmp_path):
    assert_user_error(*run_cli("advise", "method")[::2], "missing_flag")
    assert_user_error(*run_cli("advise", "method", "--model-params", "7e9", "--model", "smollm2-135m")[::2],
                      "conflicting_flags")
    code, _, stderr = run_cli("advise", "method", "--model-params", "-7", "--seq-len", "0", "--precision", "fp8",
                              "--device", "tpu")
    assert_user_error(code, stderr, "--model-params: invalid_value", "--seq-len: invalid_value",
                      "--precision: invalid_value", "--device: invalid_value")
    assert_user_error(*run_cli("advise", "method", "--model", tmp_path / "nothing")[::2], "model_not_found")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 8}))
    assert_user_error(*run_cli("advise", "method", "--model", tmp_path / "m")[::2], "unknown_shape")
