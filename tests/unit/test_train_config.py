"""The train config: example files, unknown keys, impossible combinations, --set overrides and
`auto` resolution. Nothing here loads a model or reads a dataset."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from tuneforge import cli
from tuneforge.config import build_config
from tuneforge.errors import TuneforgeError
from tuneforge.train import run
from tuneforge.train.config import TrainConfig
from tuneforge.train.run import LEARNING_RATES, auto_epochs, resolve

EXAMPLES = Path(__file__).parent.parent.parent / "examples"
QLORA_PROBLEM = "method qlora needs bitsandbytes: pip install bitsandbytes"
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None

# file -> (method, objective, data) the example must resolve to
EXPECTED = {
    "train-lora.yaml": ("lora", "auto", "runs/tickets-data"),
    "train-qlora.yaml": ("qlora", "auto", "runs/tickets-data"),
    "train-dora.yaml": ("dora", "auto", "runs/tickets-data"),
    "train-full.yaml": ("full", "auto", "runs/tickets-data"),
    "train-prefix.yaml": ("prefix", "auto", "runs/tickets-data"),
    "train-prompt.yaml": ("prompt", "auto", "runs/tickets-data"),
    "train-ia3.yaml": ("ia3", "auto", "runs/tickets-data"),
    "train-dpo.yaml": ("lora", "dpo", "runs/prefs-data"),
    "train-pretrain.yaml": ("lora", "pretrain", "runs/text-data"),
    "train-mix.yaml": ("lora", "auto", None),
}


def problems(**kw) -> list[str]:
    """The problem lines build_config reports, or [] when the config is valid."""
    try:
        build_config(TrainConfig, **kw)
    except TuneforgeError as error:
        return [p.line() for p in error.problems]
    return []


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- example configs


def test_every_train_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("train-*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_validates_like_the_cli_loads_it(name):
    method, objective, data = EXPECTED[name]
    path = EXAMPLES / name
    if method == "qlora" and not HAS_BNB:
        assert problems(path=path) == [f"{path}: invalid_value: (config): {QLORA_PROBLEM}"]
        return
    cfg = build_config(TrainConfig, path)
    assert (cfg.method, cfg.objective) == (method, objective)
    assert cfg.data == (Path(data) if data else None)
    assert cfg.out.parts[0] == "runs" and cfg.out != Path("runs/train")
    if name == "train-mix.yaml":
        assert [d.path for d in cfg.datasets][0] == Path("runs/tickets-data")
        assert len(cfg.datasets) >= 2
    # every auto resolves without a dataset-specific surprise
    settings = resolve(cfg.model_copy(update={"bf16": False}), n_train=500, longest=300, device="cpu")
    assert settings["packing"] is (method not in ("prefix", "prompt"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_is_documented(name):
    """A header with what the method is and the command, and a comment for every key."""
    lines = (EXAMPLES / name).read_text().splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    assert len(header) >= 3, "start with a comment saying what the method is and when to pick it"
    assert f"tuneforge train examples/{name}" in "\n".join(header)
    previous = ""
    for number, line in enumerate(lines, 1):
        if re.match(r"^\s*(- )?[A-Za-z_]+:\s*\S", line):  # a key with a value (section headers need none)
            assert "#" in line or previous.lstrip().startswith("#"), f"{name}:{number}: key without a comment"
        if line.strip():
            previous = line


def test_cli_passes_the_example_and_overrides_to_the_train_stage(monkeypatch):
    """`tuneforge train FILE --flag --set k=v` through the real command: YAML < flags < --set."""
    seen = {}

    def fake_train(cfg):
        seen["cfg"] = cfg
        return {}

    monkeypatch.setattr(cli, "_quiet_libraries", lambda: None)
    monkeypatch.setattr(run, "train", fake_train)
    with pytest.raises(SystemExit) as done:
        cli.main(["train", str(EXAMPLES / "train-lora.yaml"), "--method", "dora", "--epochs", "2",
                  "--set", "lora.r=8", "--set", "lora.target_modules=[q_proj, v_proj]", "--set", "out=runs/x"])
    assert done.value.code == 0
    cfg = seen["cfg"]
    assert (cfg.method, cfg.epochs, cfg.out) == ("dora", 2, Path("runs/x"))
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (8, 32, ["q_proj", "v_proj"])


def test_cli_prints_config_problems_one_line_each(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_quiet_libraries", lambda: None)
    monkeypatch.setattr(run, "train", lambda cfg: pytest.fail("must not train an invalid config"))
    path = write(tmp_path, "data: runs/d\nlora:\n  rr: 8\nepoch: 3\n")
    with pytest.raises(SystemExit) as done:
        cli.main(["train", str(path)])
    assert done.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{path}: unknown_key: ") for line in lines)
    assert "Traceback" not in "\n".join(lines)


# ---------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_is_named_with_the_valid_keys(tmp_path):
    path = write(tmp_path, "data: runs/d\nlerning_rate: 0.001\n")
    [line] = problems(path=path)
    assert line.startswith(f"{path}: unknown_key: 'lerning_rate' is not a known key; valid keys here: ")
    valid = line.split("valid keys here: ")[1].split(", ")
    assert valid == sorted(TrainConfig.model_fields)
    assert "learning_rate" in valid


@pytest.mark.parametrize("section, typo, valid", [
    ("lora", "rr", ["alpha", "dropout", "r", "target_modules"]),
    ("virtual", "num_virtual_token", ["init_text", "num_virtual_tokens"]),
    ("dpo", "betta", ["beta"]),
])
def test_unknown_nested_key_lists_the_keys_of_its_section(tmp_path, section, typo, valid):
    path = write(tmp_path, f"data: runs/d\n{section}:\n  {typo}: 1\n")
    assert problems(path=path) == [
        f"{path}: unknown_key: '{section}.{typo}' is not a known key; valid keys here: {', '.join(valid)}"]


def test_several_unknown_keys_are_reported_together(tmp_path):
    path = write(tmp_path, "data: runs/d\nepoch: 3\nlora:\n  rr: 8\n  alfa: 16\n")
    found = problems(path=path)
    assert sorted(re.search(r"'([^']+)'", line).group(1) for line in found) == ["epoch", "lora.alfa", "lora.rr"]


def test_unknown_key_in_a_dataset_entry_lists_the_valid_keys():
    [line] = problems(values={"datasets": [{"path": "runs/a", "wieght": 2}]})
    assert "'datasets.0.wieght'" in line and "valid keys here: path, weight" in line


def test_bad_choice_lists_the_valid_names():
    [line] = problems(values={"data": "d", "method": "loraa"})
    assert "method:" in line and all(m in line for m in ("lora", "qlora", "dora", "full", "prefix", "prompt", "ia3"))


# ---------------------------------------------------------------- impossible combinations


def test_impossible_combinations_are_reported_all_at_once():
    found = problems(values={"data": "runs/d", "datasets": [{"path": "runs/e"}], "method": "prompt",
                             "packing": True, "objective": "dpo"})
    assert len(found) == 3
    text = "\n".join(found)
    assert "give exactly one of data (a prepared folder) or datasets" in text
    assert "packing does not work with method prompt" in text
    assert "objective dpo is not supported with method prompt" in text


def test_neither_data_nor_datasets_and_prefix_packing_together():
    found = problems(values={"method": "prefix", "packing": True})
    assert len(found) == 2
    assert "give exactly one of data" in found[0] and "packing does not work with method prefix" in found[1]


@pytest.mark.parametrize("values", [
    {"method": "dora", "int8_base": True}, {"method": "lora", "int8_base": True, "bf16": True},
    {"method": "lora", "int8_base": True, "lora": {"dropout": 0.1}},
])
def test_an_int8_base_outside_plain_float32_lora_is_refused(values):
    [line] = problems(values={"data": "runs/d", **values})
    assert "int8_base works with method lora, lora.dropout 0, bf16 off and objective sft" in line


@pytest.mark.parametrize("values", [
    {"method": "prefix", "packing": "auto"}, {"method": "prefix", "packing": False},
    {"method": "prompt"}, {"method": "lora", "objective": "dpo"}, {"method": "full", "objective": "dpo"},
    {"method": "lora", "packing": True}, {"method": "lora", "int8_base": True},
    {"method": "lora", "int8_base": True, "bf16": False},
])
def test_possible_combinations_pass(values):
    assert problems(values={"data": "runs/d", **values}) == []


def test_only_datasets_is_enough():
    cfg = build_config(TrainConfig, values={"datasets": [{"path": "runs/a"}, {"path": "runs/b", "weight": 3}]})
    assert cfg.data is None and [d.weight for d in cfg.datasets] == [1.0, 3.0]


def test_field_errors_and_combination_errors_come_together():
    found = problems(values={"data": "runs/d", "lora": {"rr": 8}, "method": "prefix", "packing": True})
    assert any("lora.rr" in line for line in found) and any("packing does not work" in line for line in found)


@pytest.mark.parametrize("key", ["epochs", "eval_steps", "save_steps", "max_seq_len"])
def test_counts_must_be_positive(key):
    assert problems(values={"data": "runs/d", key: 0})


# ---------------------------------------------------------------- --set overrides


def test_set_overrides_a_nested_key_and_keeps_its_siblings():
    cfg = build_config(TrainConfig, EXAMPLES / "train-dora.yaml", ["lora.r=4", "epochs=2", "packing=false"])
    assert (cfg.lora.r, cfg.lora.alpha, cfg.epochs, cfg.packing) == (4, 16, 2, False)
    assert cfg.method == "dora"


@pytest.mark.parametrize("pair, key, value", [
    ("lora.r=8", ("lora", "r"), 8),
    ("lora.dropout=0.1", ("lora", "dropout"), 0.1),
    ("lora.target_modules=[q_proj,v_proj]", ("lora", "target_modules"), ["q_proj", "v_proj"]),
    ("virtual.init_text=Say yes or no.", ("virtual", "init_text"), "Say yes or no."),
    ("epochs=auto", ("epochs",), "auto"),
    ("max_steps=null", ("max_steps",), None),
    ("learning_rate=1e-4", ("learning_rate",), 1e-4),
    ("tracking=[]", ("tracking",), []),
])
def test_set_values_are_parsed_as_yaml(pair, key, value):
    cfg = build_config(TrainConfig, EXAMPLES / "train-lora.yaml", [pair])
    for part in key:
        cfg = getattr(cfg, part)
    assert cfg == value


def test_bad_overrides_are_reported_with_the_flag():
    found = problems(path=EXAMPLES / "train-lora.yaml", overrides=["lora.r", "method=full", "method.x=1"])
    assert found[0] == "--set: bad_override: 'lora.r' is not KEY=VALUE (e.g. --set lora.r=8)"
    assert found[1] == "--set: bad_override: 'method.x' sets a key below a value"


def test_overrides_are_validated_like_the_file():
    found = problems(path=EXAMPLES / "train-lora.yaml", overrides=["lora.rr=8", "lora.r=0"])
    assert any("unknown_key: 'lora.rr'" in line for line in found)
    assert any("invalid_value: lora.r: expected a number of at least 1, got 0" in line for line in found)


# ---------------------------------------------------------------- auto values


def cfg_for(**values) -> TrainConfig:
    return build_config(TrainConfig, values={"data": "runs/d", **values})


@pytest.mark.parametrize("n, epochs", [(1, 8), (100, 8), (300, 7), (500, 4), (666, 4), (667, 3), (1000, 3),
                                       (8000, 3), (10000, 2), (25000, 1), (1_000_000, 1)])
def test_auto_epochs_small_sets_get_more_passes_large_ones_fewer(n, epochs):
    assert auto_epochs(n) == epochs


def test_auto_epochs_is_monotonic_and_bounded():
    previous = auto_epochs(1)
    for n in range(1, 60000, 7):
        e = auto_epochs(n)
        assert 1 <= e <= 8 and e <= previous
        if n * 3 < 2000 and e < 8:
            assert n * e >= 2000  # small sets: at least 2000 examples seen in total, unless capped at 8 epochs
        assert n * e <= max(25000, n)  # large sets are not seen more than 25000 times in total
        previous = e


def test_resolve_fills_every_auto_from_the_data(monkeypatch):
    monkeypatch.setattr(run, "bf16_supported", lambda device: device == "cuda")
    monkeypatch.setattr(run, "int8_gemm_preferred", lambda device: device == "cpu")
    small = resolve(cfg_for(), n_train=100, longest=300, device="cpu")  # int8_base is auto by default
    assert small == {"epochs": 8, "learning_rate": 2e-4, "warmup": 0.05, "max_seq_len": 300, "packing": True,
                     "bf16": False, "int8_base": True}
    large = resolve(cfg_for(), n_train=50_000, longest=9000, device="cuda")
    assert (large["epochs"], large["max_seq_len"], large["bf16"], large["int8_base"]) == (1, 2048, True, False)


def test_auto_eval_steps_keep_validation_near_a_tenth_of_a_short_run():
    from tuneforge.train.loop import auto_eval_steps

    train, val = [[0] * 80] * 639, [[0] * 80] * 79  # the demo's sizes: 639 train and 79 validation examples
    # a pass over 79 examples is about 79 / (3 * 8) = 3.3 steps of batch 8: every 33 steps, not every 16
    assert auto_eval_steps(160, train, val, 8) == 33
    assert auto_eval_steps(3000, train, val, 8) == 300  # a long run keeps about ten
    assert auto_eval_steps(6, train, val, 8) == 2  # a tiny one still validates three times
    assert auto_eval_steps(160, train, [], 8) == 16
    assert auto_eval_steps(160, train, [[0] * 40] * 79, 8) == 17  # shorter examples cost less
    pairs = [([0] * 50, [0] * 30)] * 100  # dpo: a pair's two sequences
    assert auto_eval_steps(100, pairs, pairs[:60], 8) == 25


@pytest.mark.parametrize("update, int8", [
    ({}, True), ({"method": "dora"}, False), ({"method": "full"}, False), ({"objective": "dpo"}, False),
    ({"lora": {"dropout": 0.1}}, False), ({"bf16": True}, False), ({"int8_base": False}, False),
])
def test_auto_int8_base_is_for_plain_lora_where_the_cpu_prefers_int8(monkeypatch, update, int8):
    monkeypatch.setattr(run, "bf16_supported", lambda device: False)
    monkeypatch.setattr(run, "int8_gemm_preferred", lambda device: True)
    assert resolve(cfg_for(**{"int8_base": "auto", **update}), n_train=100, longest=300,
                   device="cpu")["int8_base"] is int8


def test_auto_int8_base_stays_off_where_the_cpu_has_bf16_or_no_avx2(monkeypatch, tmp_path):
    for flags, bf16 in [("fpu avx2 avx512f avx512_bf16", True), ("fpu sse4_2", False), ("fp asimd", False)]:
        (tmp_path / "cpuinfo").write_text(f"flags\t\t: {flags}\n")
        monkeypatch.setattr(run, "Path", lambda p, f=tmp_path / "cpuinfo": f)
        assert run.bf16_supported("cpu") is bf16 and run.int8_gemm_preferred("cpu") is False
    (tmp_path / "cpuinfo").write_text("flags\t\t: fpu avx2 fma\n")
    monkeypatch.setattr(run, "int8_gemm_speedup", lambda: 2.2)  # VNNI: int8 GEMMs about 2x float32
    assert run.bf16_supported("cpu") is False and run.int8_gemm_preferred("cpu") is True


def test_auto_int8_base_stays_off_where_int8_gemms_are_slower_than_float32(monkeypatch, tmp_path):
    """AVX2 without VNNI: PyTorch's int8 GEMM fell back to a kernel 30x slower than float32
    there, and an int8 base made the demo's training 50x slower."""
    (tmp_path / "cpuinfo").write_text("flags\t\t: fpu avx2 fma\n")
    monkeypatch.setattr(run, "Path", lambda p, f=tmp_path / "cpuinfo": f)
    monkeypatch.setattr(run, "int8_gemm_speedup", lambda: 0.035)
    assert run.int8_gemm_preferred("cpu") is False
    assert resolve(cfg_for(), n_train=100, longest=300, device="cpu")["int8_base"] is False


def test_int8_gemm_speedup_is_measured_once():
    first = run.int8_gemm_speedup()
    assert 0 < first < 1000 and run.int8_gemm_speedup() is first


@pytest.mark.parametrize("written, given, kept", [
    ({"bf16": False, "int8_base": True}, {}, {"bf16": False, "int8_base": True}),
    ({"bf16": True, "int8_base": False}, {"int8_base": False}, {"bf16": True, "int8_base": False}),
    ({"bf16": False, "int8_base": True}, {"bf16": False, "int8_base": False}, {"bf16": False, "int8_base": False}),
    (None, {}, {"bf16": "auto", "int8_base": "auto"}),
], ids=["auto-keeps-both", "explicit-wins", "explicit-both", "no-config"])
def test_a_resumed_run_keeps_the_precision_its_start_resolved(tmp_path, written, given, kept):
    if written is not None:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({"method": "lora", **written}))
    cfg = run._keep_resolved_precision(cfg_for(**given), tmp_path)
    assert (cfg.bf16, cfg.int8_base) == (kept["bf16"], kept["int8_base"])


@pytest.mark.parametrize("method", sorted(LEARNING_RATES))
def test_auto_learning_rate_and_packing_follow_the_method(method):
    if method == "qlora" and not HAS_BNB:
        pytest.skip("qlora needs bitsandbytes")
    settings = resolve(cfg_for(method=method, bf16=False), n_train=1000, longest=100, device="cpu")
    assert settings["learning_rate"] == LEARNING_RATES[method]
    assert settings["packing"] is (method not in ("prefix", "prompt"))
    assert LEARNING_RATES["full"] < LEARNING_RATES["lora"] < LEARNING_RATES["prefix"]


def test_auto_learning_rate_is_lower_for_dpo():
    settings = resolve(cfg_for(objective="dpo", bf16=False), n_train=1000, longest=100, device="cpu")
    assert settings["learning_rate"] == pytest.approx(LEARNING_RATES["lora"] / 4)


def test_explicit_values_win_over_auto():
    cfg = cfg_for(epochs=2, learning_rate=1e-3, warmup=0.1, max_seq_len=128, packing=False, bf16=True)
    assert resolve(cfg, n_train=10, longest=5000, device="cpu") == {
        "epochs": 2, "learning_rate": 1e-3, "warmup": 0.1, "max_seq_len": 128, "packing": False, "bf16": True,
        "int8_base": False}
    cfg = cfg_for(int8_base=True)
    assert resolve(cfg, n_train=10, longest=5000, device="cpu")["bf16"] is False  # int8 replaces bf16


def test_auto_settings_of_the_examples():
    def settings(name: str) -> dict:
        data = yaml.safe_load((EXAMPLES / name).read_text())
        data["bf16"] = False
        if data["method"] == "qlora" and not HAS_BNB:
            data["method"] = "lora"
        return resolve(TrainConfig.model_validate(data), n_train=200, longest=180, device="cpu")

    assert settings("train-lora.yaml")["epochs"] == 8
    assert settings("train-dpo.yaml")["learning_rate"] == pytest.approx(5e-5)
    assert settings("train-full.yaml")["learning_rate"] == 2e-5
    assert settings("train-pretrain.yaml")["max_seq_len"] == 1024
    assert settings("train-prefix.yaml")["packing"] is False and settings("train-prompt.yaml")["packing"] is False


@pytest.mark.parametrize("override, message", [
    ("batch_size=0", "batch_size: expected a number of at least 1, got 0"),
    ("lora.dropout=1", "lora.dropout: expected a number below 1.0, got 1"),
    ("lora.alpha=0", "lora.alpha: expected a number above 0.0, got 0"),
])
def test_range_errors_are_plain_words_not_pydantic(override, message):
    from tuneforge.config import build_config

    with pytest.raises(TuneforgeError) as caught:
        build_config(TrainConfig, overrides=[override, "data=runs/data"])
    assert [p.message for p in caught.value.problems] == [message]
