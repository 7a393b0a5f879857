"""Command map: each subcommand builds a typed config and calls one stage function.

    tuneforge models
    tuneforge generate --model smollm2-135m --chat "Hello"
    tuneforge prepare data.jsonl --out data/prepared
    tuneforge serve --model smollm2-135m --adapter tickets=runs/lora
    tuneforge logs export --out corrected.jsonl
    tuneforge jobs list --base-url http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from tuneforge import outdir
from tuneforge.errors import Problem, TuneforgeError
from tuneforge.outdir import DISK_FULL

app = typer.Typer(
    help="tuneforge: prepare data, fine-tune, evaluate and serve small language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True, highlight=False, soft_wrap=True)
MAX_PRINTED = 200

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file; flags and --set override it")
SetOpt = typer.Option([], "--set", help="override a config key, e.g. --set seed=1 (repeatable)")


# Library warnings that fire on every run of some command and that users can do nothing about,
# as (category, message regex, regex of the module the warning is attributed to). Only these are
# hidden: any other warning, ours or a library's, still shows.
QUIET_WARNINGS = [
    # transformers 5 renamed gradient checkpointing; PEFT and accelerate still call the old names
    (FutureWarning, r"`(is_)?gradient_checkpointing\w*` is deprecated", r"transformers\."),
    # prefix tuning: PEFT passes past_key_values, deprecated in transformers 5 (attributed to the module call)
    (FutureWarning, r"(`past_key_values` is deprecated|Both `past_key_values` and `cache` are set)",
     r"(torch|transformers|peft)\."),
    # prompt tuning: PEFT drops the position ids every causal LM call passes
    (UserWarning, r"Position ids are not supported for parameter efficient tuning", r"peft\."),
]


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    for category, message, module in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    # bitsandbytes warns on import that an optional hub kernel is missing; we never fetch it
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def _split(value: str) -> Any:
    try:
        parts = tuple(float(x) for x in value.split(","))
    except ValueError:
        return value
    return parts


@app.command()
def prepare(
    inputs: list[Path] = typer.Argument(..., help="data files: .jsonl, .json, .csv, .parquet"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="output folder"),
    model: Optional[str] = typer.Option(None, help="model whose tokenizer counts tokens [smollm2-135m]"),
    format: Optional[str] = typer.Option(None, "--format", help="auto|openai|prompt_completion|alpaca|sharegpt|text|preference|columns"),
    input_col: Optional[str] = typer.Option(None, help="column with the input (CSV/Parquet)"),
    output_col: Optional[str] = typer.Option(None, help="column with the expected output (CSV/Parquet)"),
    system: Optional[str] = typer.Option(None, help="system prompt for records that have none"),
    split: Optional[str] = typer.Option(None, help="train,val,test shares [0.8,0.1,0.1]"),
    seed: Optional[int] = typer.Option(None, help="split and sampling seed [0]"),
    max_seq_len: Optional[int] = typer.Option(None, help="longer examples are errors (too_long) [2048]"),
    redact_pii: Optional[bool] = typer.Option(None, "--redact-pii", help="replace emails, phones, cards, IBANs, IPs, SSNs"),
    near_dup_threshold: Optional[float] = typer.Option(None, help="Jaccard similarity for near duplicates [0.9]"),
    drop_near_dups: Optional[bool] = typer.Option(None, "--drop-near-dups", help="keep one record per near-duplicate group"),
    drop_outliers: Optional[bool] = typer.Option(None, "--drop-outliers", help="drop length outliers (else flagged)"),
    on_error: Optional[str] = typer.Option(None, help="fail|drop: stop on bad records, or leave them out [fail]"),
    on_contradiction: Optional[str] = typer.Option(None, help="drop|keep_first|keep [drop]"),
    task: Optional[str] = typer.Option(None, help="auto|classification|extraction|generation|sql|preference|pretraining"),
    val: list[Path] = typer.Option([], "--val", help="use this file as the validation split"),
    test: list[Path] = typer.Option([], "--test", help="use this file as the test split"),
    memorisation_check: Optional[bool] = typer.Option(None, "--memorisation-check/--no-memorisation-check", help="check whether the base model reproduces the data [on]"),
    config: Optional[Path] = ConfigOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """Validate, clean and split a dataset; writes train/val/test.jsonl and report.json/.md."""
    from tuneforge.config import build_config
    from tuneforge.data.config import PrepareConfig
    from tuneforge.data.prepare import prepare as run_prepare

    values = dict(inputs=inputs, out=out_dir, model=model, format=format, input_col=input_col,
                  output_col=output_col, system=system, split=_split(split) if split else None, seed=seed,
                  max_seq_len=max_seq_len, redact_pii=redact_pii, near_dup_threshold=near_dup_threshold,
                  drop_near_dups=drop_near_dups, drop_outliers=drop_outliers, on_error=on_error,
                  on_contradiction=on_contradiction, task=task, val=val or None, test=test or None,
                  memorisation_check=memorisation_check)
    cfg = build_config(PrepareConfig, config, overrides, values)
    report = run_prepare(cfg, progress=lambda msg: err.print(f"[dim]prepare: {msg}[/dim]"))
    _print_prepare(report, cfg.out)


def _print_prepare(report: dict[str, Any], folder: Path) -> None:
    from rich.table import Table

    table = Table(title=f"prepared {folder}", show_header=False)
    table.add_row("records", f"{report['records_in']} in, {report['records_out']} out")
    table.add_row("task", report["task"])
    table.add_row("splits", ", ".join(f"{k} {v}" for k, v in report["splits"].items()))
    table.add_row("dropped bad records", str(report["bad_records"]))  # records, not problems: one can have several
    table.add_row("duplicates", f"{report['duplicates']['exact']} exact removed, {report['duplicates']['near']} near")
    table.add_row("contradictions", f"{len(report['contradictions'])} groups ({report['contradiction_records']} records)")
    table.add_row("tokens", "min {min} / p50 {p50} / p95 {p95} / max {max}".format(**report["token_lengths"]))
    if report["labels"]:
        table.add_row("labels", ", ".join(f"{k} {v}" for k, v in sorted(report["labels"].items(), key=lambda kv: -kv[1])))
    if report["pii"]:
        table.add_row("PII redacted", ", ".join(f"{k} {v}" for k, v in report["pii"].items()))
    mem = report["memorisation"]
    if mem.get("checked"):
        table.add_row("memorisation", f"{mem['reproduced']}/{mem['checked']} reproduced by the base model")
    out.print(table)
    from rich.markup import escape

    for warning in report["warnings"]:  # escaped: warnings quote headers such as [text, label]
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    out.print(f"report: {folder / 'report.md'}")


@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="YAML config (see examples/train-*.yaml)"),
    data: Optional[Path] = typer.Option(None, help="prepared dataset folder"),
    model: Optional[str] = typer.Option(None, help="base model [smollm2-135m]"),
    method: Optional[str] = typer.Option(None, help="lora|qlora|dora|full|prefix|prompt|ia3 [lora]"),
    objective: Optional[str] = typer.Option(None, help="auto|sft|pretrain|dpo [auto]"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run folder"),
    epochs: Optional[str] = typer.Option(None, help="number of epochs or auto"),
    max_steps: Optional[int] = typer.Option(None, help="stop after this many optimizer steps"),
    resume: bool = typer.Option(False, "--resume", help="continue from the last checkpoint in --out"),
    overrides: list[str] = SetOpt,
) -> None:
    """Fine-tune a model on a prepared dataset; writes adapter/, metrics, loss.png, summary.json."""
    from tuneforge.config import build_config
    from tuneforge.train.config import TrainConfig
    from tuneforge.train.run import train as run_train

    values = dict(data=data, model=model, method=method, objective=objective, out=out_dir,
                  epochs=_int_or_auto(epochs), max_steps=max_steps, resume=resume or None)
    cfg = build_config(TrainConfig, config, overrides, values)
    summary = run_train(cfg)
    if summary:
        _print_summary(summary, cfg.out)


@app.command("eval")
def eval_command(
    data: Path = typer.Option(..., help="prepared folder (uses its test split) or a JSONL file of chat records"),
    model: Optional[str] = typer.Option(None, help="base model [smollm2-135m]"),
    adapter: list[str] = typer.Option([], help="NAME=RUN_DIR or RUN_DIR (named tuned); repeatable"),
    baselines: Optional[str] = typer.Option(None, help="zero-shot,few-shot (default both) or none"),
    shots: Optional[int] = typer.Option(None, help="examples shown to base-few-shot [5]"),
    task: Optional[str] = typer.Option(None, help="auto|classification|extraction|generation|sql"),
    sql_db: Optional[Path] = typer.Option(None, help="SQLite file for the sql task"),
    limit: Optional[int] = typer.Option(None, help="evaluate N examples drawn with --seed (stratified by label)"),
    seed: Optional[int] = typer.Option(None, help="seed of the --limit sample and the few-shot examples [0]"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for eval.json and the reports"),
    fail_if: Optional[str] = typer.Option(None, help='exit 1 when it holds, e.g. "tuned.accuracy < 0.9"'),
    general: bool = typer.Option(False, "--general", help="also check general knowledge (forgetting)"),
    judge_url: Optional[str] = typer.Option(None, help="LLM judge: base URL of an OpenAI-compatible API, e.g. "
                                            "http://127.0.0.1:8000/v1"),
    judge_model: Optional[str] = typer.Option(None, help="the judge's model name at --judge-url"),
    judge_key: Optional[str] = typer.Option(None, help="the judge's API key [$TUNEFORGE_JUDGE_KEY]"),
    judge_mode: Optional[str] = typer.Option(None, help="rubric (a 1-5 score per answer) or pairwise (each "
                                             "adapter vs the best baseline, both orders) [rubric]"),
    rubric: Optional[Path] = typer.Option(None, help="text file with the judge's grading rubric [built-in]"),
    config: Optional[Path] = typer.Option(None, help="YAML config with the same keys"),
    overrides: list[str] = SetOpt,
) -> None:
    """Score the base model (zero-shot, few-shot) and each fine-tune on held-out examples."""
    from tuneforge.config import build_config
    from tuneforge.evaluate.config import EvalConfig
    from tuneforge.evaluate.fail_if import check
    from tuneforge.evaluate.run import evaluate

    adapters = _named_adapters(adapter)
    kinds = None if baselines is None else [] if baselines.strip() == "none" else [
        b.strip() for b in baselines.split(",") if b.strip()]
    values = dict(data=data, model=model, adapters=adapters or None, baselines=kinds, shots=shots, task=task,
                  sql_db=sql_db, limit=limit, seed=seed, out=out_dir, fail_if=fail_if, general=general or None,
                  judge_url=judge_url, judge_model=judge_model, judge_key=judge_key, judge_mode=judge_mode,
                  rubric=rubric)
    cfg = build_config(EvalConfig, config, overrides, values)
    result = evaluate(cfg)  # checks --fail-if's names against the task's metrics before any inference
    _print_eval(result, cfg.out)
    if "judge" in result:
        from tuneforge.evaluate.judge import undecidable

        _print_judge(result)
        if cfg.fail_if and undecidable(cfg.fail_if, result["variants"]):
            raise TuneforgeError(undecidable(cfg.fail_if, result["variants"]))
    if cfg.fail_if and check(cfg.fail_if, result["variants"]):
        err.print(f"fail-if holds: {cfg.fail_if}", markup=False)
        raise typer.Exit(1)


def _print_judge(result: dict[str, Any]) -> None:
    judged = result["judge"]
    invalid = {name: v["judge_invalid_rate"] for name, v in result["variants"].items() if v.get("judge_invalid_rate")}
    out.print(f"judge: {judged['model']} at {judged['url']} ({judged['mode']}), {judged['requests']} requests",
              markup=False)
    if invalid:
        shares = ", ".join(f"{name} {rate:.0%}" for name, rate in invalid.items())
        err.print(f"warning: the judge gave no valid verdict for some answers ({shares}; "
                  f"{judged['failed_requests']} requests failed); the reasons are in predictions.jsonl", markup=False)


def _named_adapters(items: list[str]) -> dict[str, str]:
    named: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = ("tuned" if "tuned" not in named else f"tuned-{len(named) + 1}"), item
        if name in named:
            raise TuneforgeError(Problem("duplicate_variant", f"two adapters are named {name}", "--adapter"))
        named[name] = path
    return named


def _print_eval(result: dict[str, Any], folder: Path) -> None:
    from rich.table import Table

    names = list(result["variants"])
    table = Table(title=f"{result['task']} on {result['n']} held-out examples")
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    metrics = []
    for values in result["variants"].values():
        metrics += [k for k, v in values.items() if isinstance(v, (int, float)) and k not in metrics]
    for metric in metrics:
        cells = [result["variants"][n].get(metric) for n in names]
        table.add_row(metric, *[f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells])
    if result.get("general"):
        table.add_row("general_accuracy", *[f"{result['general'][n]:.3f}" for n in names])
    out.print(table)
    out.print(f"report: {folder / 'report.html'}", markup=False)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="folder for everything the demo writes"),
    data: Optional[Path] = typer.Option(None, help="tickets to use instead of examples/support_tickets.jsonl"),
    epochs: int = typer.Option(2, min=1, help="LoRA epochs"),
    precision: str = typer.Option("auto", help="auto (as train: bf16 where the CPU has it, else the int8 base "
                                  "on x86 with AVX2, else fp32), bf16, fp32 or int8 (int8_base training)"),
) -> None:
    """Prepare the example tickets, score the base model, fine-tune with LoRA, score again."""
    from tuneforge.demo import demo as run_demo

    result = run_demo(out_dir, data, epochs, precision=precision)
    _print_eval(result, out_dir)
    scores = {name: values["accuracy"] for name, values in result["variants"].items()}
    best_base = max(v for k, v in scores.items() if k.startswith("base-"))
    gain = scores["tuned"] - best_base
    out.print(f"tuned accuracy {scores['tuned']:.3f} vs best baseline {best_base:.3f}: "
              f"{gain * 100:+.1f} points, in {result['demo_seconds'] / 60:.1f} minutes ({result['precision']})",
              markup=False)


@app.command()
def merge(
    run: Path = typer.Argument(..., help="run folder from `tuneforge train` (or its adapter/)"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="folder for the merged model"),
    samples: int = typer.Option(16, min=1, help="validation texts used for the KL check"),
) -> None:
    """Fold an adapter into its base model; checks next-token distributions match (max KL)."""
    from tuneforge.train.merge import KL_TOLERANCE, merge as run_merge

    report = run_merge(run, out_dir, samples)
    out.print(f"merged model: {report['merged']}", markup=False)
    verdict = "matches the adapter" if report["ok"] else f"DIFFERS from the adapter (tolerance {KL_TOLERANCE})"
    out.print(f"max KL(adapter || merged) over {report['checked_texts']} texts: {report['max_kl']:.2e}: {verdict}",
              markup=False)
    if not report["ok"]:
        raise typer.Exit(1)


def _int_or_auto(value: Optional[str]) -> Any:
    return int(value) if value and value.isdigit() else value


def _print_summary(summary: dict[str, Any], folder: Path) -> None:
    from rich.table import Table

    table = Table(title=f"trained {folder}", show_header=False)
    for key in ("method", "objective", "train_examples", "steps", "train_seconds", "tokens_per_second",
                "best_eval_loss", "final_eval_loss", "trainable_params", "peak_rss_mb", "artifact"):
        value = summary.get(key)
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) and key.endswith("loss") else str(value))
    out.print(table)


@app.command()
def models() -> None:
    """List the built-in models and the models in the cache."""
    from rich.table import Table

    from tuneforge.models.resolve import BUILTIN, cached_models

    table = Table(title="models")
    for col in ("name", "kind", "status", "path"):
        table.add_column(col)
    builtin_dirs = set()
    for name, spec in BUILTIN.items():
        ready = (spec.cache_dir() / "config.json").exists()
        available = ready or spec.gguf_path() is not None
        status = "cached" if ready else ("converted on first use" if available else f"needs {spec.package}")
        table.add_row(name, "built-in", status, str(spec.cache_dir()))
        builtin_dirs.add(spec.cache_dir())
    for folder in cached_models():
        if folder not in builtin_dirs:
            table.add_row(folder.name, "cached", "cached", str(folder))
    out.print(table)


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="text to continue, or the user message with --chat"),
    model: str = typer.Option("smollm2-135m", help="built-in name, model folder, .gguf file or hub id"),
    chat: bool = typer.Option(False, "--chat", help="wrap the prompt in the model's chat template"),
    max_new_tokens: int = typer.Option(64, min=1, max=4096),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy"),
    adapter: Optional[Path] = typer.Option(None, help="a run folder from `tuneforge train` (or its adapter/)"),
) -> None:
    """Print a completion from a model or a fine-tune, to see it work."""
    from tuneforge.models.generate import complete

    if not prompt.strip():  # checked before the model loads: an empty prompt has nothing to continue
        raise TuneforgeError(Problem("empty_prompt", "the prompt is empty; pass the text to continue (or, with "
                                     "--chat, the user's message)", "prompt"))
    out.print(complete(model, prompt, chat=chat, max_new_tokens=max_new_tokens, temperature=temperature,
                       adapter=adapter), markup=False)


@app.command()
def serve(
    model: Optional[str] = typer.Option(None, help="base model [smollm2-135m]"),
    adapter: list[str] = typer.Option([], help="NAME=RUN_DIR loaded at start; repeatable"),
    config: Optional[Path] = ConfigOpt,
    host: Optional[str] = typer.Option(None, help="bind address [127.0.0.1]"),
    port: Optional[int] = typer.Option(None, help="port [8000]"),
    api_key: list[str] = typer.Option([], help="a key clients must send (hashed at once); repeatable"),
    admin_key: Optional[str] = typer.Option(None, help="key for /v1/adapters, /v1/routes, /admin/reload"),
    models_dir: Optional[Path] = typer.Option(None, help="folder run-time adapter loads are confined to"),
    backend: Optional[str] = typer.Option(None, help="tuneforge|vllm [tuneforge]"),
    log_db: Optional[Path] = typer.Option(None, help="SQLite request log [$TUNEFORGE_HOME/serve/log.db]"),
    overrides: list[str] = SetOpt,
) -> None:
    """Serve a base model and its adapters over OpenAI's API (chat, completions, models)."""
    from tuneforge.serve.config import load_serve_config
    from tuneforge.serve.runner import serve as run_serve

    values = dict(model=model, adapters=_named_adapters(adapter) or None, host=host, port=port,
                  models_dir=models_dir, backend=backend, log_db=log_db)

    def load():
        return load_serve_config(config, overrides, values, api_key, admin_key)

    run_serve(load(), reload=load if config else None, say=lambda line: err.print(line, markup=False))


logs_app = typer.Typer(help="the serve request log: export training data, read an A/B test", no_args_is_help=True)
app.add_typer(logs_app, name="logs")
DbOpt = typer.Option(None, "--db", help="the server's request log [$TUNEFORGE_HOME/serve/log.db]")


@logs_app.command("export")
def logs_export(
    out_file: Path = typer.Option(..., "--out", "-o", help="JSONL file to write"),
    db: Optional[Path] = DbOpt,
    min_score: Optional[float] = typer.Option(None, help="also export answers whose feedback score is at least this"),
) -> None:
    """Corrected (and, with --min-score, well-scored) chats as training JSONL, ready for `tuneforge prepare`."""
    from tuneforge.serve.config import default_log_db
    from tuneforge.serve.log import export

    counts = export(db or default_log_db(), out_file, min_score)
    out.print(f"wrote {counts['written']} chats to {out_file} ({counts['corrected']} corrected, "
              f"{counts['scored']} by score; {counts['skipped_not_chat']} /v1/completions answers skipped)",
              markup=False)


@logs_app.command("stats")
def logs_stats(
    db: Optional[Path] = DbOpt,
    control: Optional[str] = typer.Option(None, help="variant the others are compared with [the busiest]"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
) -> None:
    """Per route and variant: volume, errors, latency p50/p95, feedback; variants vs control (Welch t-test)."""
    import json

    from tuneforge.serve.abtest import stats
    from tuneforge.serve.config import default_log_db

    result = stats(db or default_log_db(), control)
    if as_json:
        out.print(json.dumps(result, indent=2), markup=False)
        return
    _print_stats(result)


def _print_stats(result: dict[str, Any]) -> None:
    from rich.table import Table

    def num(value, fmt="{:.0f}"):
        return "-" if value is None else fmt.format(value)

    table = Table(title="requests by route and variant")
    for col in ("route", "variant", "requests", "errors", "p50 ms", "p95 ms", "tokens", "feedback", "mean score"):
        table.add_column(col, justify="left" if col in ("route", "variant") else "right")
    for v in result["variants"]:
        table.add_row(v["route"], v["variant"], str(v["requests"]), str(v["errors"]), num(v["p50_ms"]),
                      num(v["p95_ms"]), str(v["completion_tokens"]), str(v["feedback"]),
                      num(v["mean_score"], "{:.3f}"))
    out.print(table)
    if result["comparisons"]:
        tests = Table(title=f"feedback vs control (Welch t-test, alpha {result['alpha']})")
        for col in ("route", "control", "variant", "diff", "t", "df", "p", "verdict"):
            tests.add_column(col)
        for c in result["comparisons"]:
            tests.add_row(c["route"], c["control"], c["variant"], num(c.get("diff"), "{:+.3f}"),
                          num(c.get("t"), "{:.2f}"), num(c.get("df"), "{:.1f}"), num(c.get("p"), "{:.4f}"),
                          c["verdict"])
        out.print(tests)


advise_app = typer.Typer(help="should you fine-tune, with which method, at what cost", no_args_is_help=True)
app.add_typer(advise_app, name="advise")
JsonOpt = typer.Option(False, "--json", help="print JSON instead of text")


def _advise_print(result: dict[str, Any], as_json: bool, text) -> None:
    import json

    out.print(json.dumps(result, indent=2) if as_json else text(result), markup=False, soft_wrap=True)


@advise_app.command("decide")
def advise_decide(
    report: Optional[Path] = typer.Option(None, help="prepare report.json (or its folder): real counts and rates"),
    examples: Optional[int] = typer.Option(None, help="labelled examples you have (without --report)"),
    baseline_accuracy: Optional[float] = typer.Option(None, help="what prompting scores now (0-1)"),
    target_accuracy: Optional[float] = typer.Option(None, help="what the task needs (0-1)"),
    knowledge_task: bool = typer.Option(False, "--knowledge-task", help="the answers depend on facts to look up"),
    changes_often: bool = typer.Option(False, "--changes-often", help="the information behind them changes often"),
    latency_ms: Optional[float] = typer.Option(None, help="latency budget per answer"),
    requests_per_month: Optional[float] = typer.Option(None, help="expected traffic"),
    eval_report: Optional[Path] = typer.Option(None, help="eval.json (or its folder): the base model's scores"),
    as_json: bool = JsonOpt,
) -> None:
    """Prompting, RAG, few-shot or fine-tuning: the guides' decision tree over your numbers, with reasons."""
    from tuneforge.advise.decide import advise_decide as run, text

    _advise_print(run(dict(report=report, examples=examples, baseline_accuracy=baseline_accuracy,
                           target_accuracy=target_accuracy, knowledge_task=knowledge_task,
                           changes_often=changes_often, latency_ms=latency_ms,
                           requests_per_month=requests_per_month, eval_report=eval_report)), as_json, text)


@advise_app.command("method")
def advise_method(
    model_params: Optional[float] = typer.Option(None, help="parameters of the base model, e.g. 7e9"),
    model: Optional[str] = typer.Option(None, help="built-in name or model folder: its config gives the shape"),
    device: Optional[str] = typer.Option(None, help="cuda|cpu [cuda]"),
    gpu_gb: Optional[float] = typer.Option(None, "--gpu-gb", "--memory-gb", help="memory available in GB "
                                           "[cuda: 24; cpu: this machine's RAM]"),
    seq_len: Optional[int] = typer.Option(None, help="tokens per example [2048]"),
    batch: Optional[int] = typer.Option(None, help="examples per micro-batch [4]"),
    answer_tokens: Optional[int] = typer.Option(None, help="tokens per example that carry a loss [seq-len]"),
    precision: Optional[str] = typer.Option(None, help="auto|bf16|fp32|int8 [auto: as train picks]"),
    lora_r: Optional[int] = typer.Option(None, help="LoRA rank [16]"),
    virtual_tokens: Optional[int] = typer.Option(None, help="prefix/prompt tuning virtual tokens [20]"),
    as_json: bool = JsonOpt,
) -> None:
    """Memory of full, LoRA, QLoRA, prefix and prompt tuning; which fit; which to use."""
    from tuneforge.advise.method import advise_method as run, text

    _advise_print(run(dict(model_params=model_params, model=model, device=device, gpu_gb=gpu_gb, seq_len=seq_len,
                           batch=batch, answer_tokens=answer_tokens, precision=precision, lora_r=lora_r,
                           virtual_tokens=virtual_tokens)), as_json, text)


@advise_app.command("cost")
def advise_cost(
    requests_per_month: Optional[float] = typer.Option(None, help="requests a month"),
    api_cost_per_request: Optional[float] = typer.Option(None, help="what one API request costs"),
    ft_cost_per_request: Optional[float] = typer.Option(None, help="what one request to the fine-tune costs"),
    upfront: Optional[float] = typer.Option(None, help="one-off cost of the fine-tune [0]"),
    months: Optional[int] = typer.Option(None, help="horizon in months [12]"),
    tokens_per_request: Optional[float] = typer.Option(None, help="token form: tokens per request, in and out"),
    api_price_per_mtok: Optional[float] = typer.Option(None, help="token form: API price per million tokens"),
    gpu_hourly: Optional[float] = typer.Option(None, help="token form: hourly price of the serving machine"),
    throughput_tokens_per_s: Optional[float] = typer.Option(None, help="token form: tokens/s it serves"),
    throughput_from: Optional[Path] = typer.Option(None, help="token form: eval.json (or folder) with tokens_per_s"),
    variant: Optional[str] = typer.Option(None, help="the eval variant whose throughput counts [first adapter]"),
    as_json: bool = JsonOpt,
) -> None:
    """API vs fine-tuned: monthly and first-year cost, savings, break-even month."""
    from tuneforge.advise.cost import advise_cost as run, text

    _advise_print(run(dict(requests_per_month=requests_per_month, api_cost_per_request=api_cost_per_request,
                           ft_cost_per_request=ft_cost_per_request, upfront=upfront, months=months,
                           tokens_per_request=tokens_per_request, api_price_per_mtok=api_price_per_mtok,
                           gpu_hourly=gpu_hourly, throughput_tokens_per_s=throughput_tokens_per_s,
                           throughput_from=throughput_from, variant=variant)), as_json, text)


jobs_app = typer.Typer(help="fine-tuning jobs on a tuneforge server (OpenAI's jobs API, over HTTP)",
                       no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
BaseUrlOpt = typer.Option("http://127.0.0.1:8000/v1", "--base-url", help="the server's OpenAI base URL")
ApiKeyOpt = typer.Option(None, "--api-key", envvar="TUNEFORGE_API_KEY", show_envvar=False,
                         help="the server's API key [$TUNEFORGE_API_KEY]")
JsonOpt = typer.Option(False, "--json", help="print the API's JSON instead of a table")


def _jobs(base_url: str, api_key: Optional[str]):
    from tuneforge.jobs.client import JobsClient

    return JobsClient(base_url, api_key)


@jobs_app.command("list")
def jobs_list(
    limit: int = typer.Option(20, min=1, max=100, help="jobs to show, newest first"),
    after: Optional[str] = typer.Option(None, help="show the jobs created before this job id"),
    base_url: str = BaseUrlOpt, api_key: Optional[str] = ApiKeyOpt, as_json: bool = JsonOpt,
) -> None:
    """Fine-tuning jobs, newest first."""
    import json

    from rich.table import Table

    page = _jobs(base_url, api_key).get("/fine_tuning/jobs", limit=limit, after=after)
    if as_json:
        out.print(json.dumps(page, indent=2), markup=False)
        return
    table = Table(title="fine-tuning jobs")
    for col in ("id", "status", "model", "fine_tuned_model", "trained_tokens", "created"):
        table.add_column(col, no_wrap=col == "id")
    for job in page["data"]:
        table.add_row(job["id"], job["status"], job["model"], job["fine_tuned_model"] or "-",
                      str(job["trained_tokens"] or "-"), _when(job["created_at"]))
    out.print(table)
    if page["has_more"]:
        out.print(f"more: tuneforge jobs list --after {page['data'][-1]['id']}", markup=False)


@jobs_app.command("show")
def jobs_show(job_id: str = typer.Argument(..., help="the job's id (ftjob-...)"), base_url: str = BaseUrlOpt,
              api_key: Optional[str] = ApiKeyOpt, as_json: bool = JsonOpt) -> None:
    """One job: status, model, hyperparameters, error."""
    import json

    job = _jobs(base_url, api_key).get(f"/fine_tuning/jobs/{job_id}")
    if as_json:
        out.print(json.dumps(job, indent=2), markup=False, soft_wrap=True)
        return
    for key in ("id", "status", "model", "fine_tuned_model", "training_file", "validation_file", "trained_tokens",
                "seed"):
        out.print(f"{key}: {job.get(key) if job.get(key) is not None else '-'}", markup=False, soft_wrap=True)
    out.print(f"method: {json.dumps(job.get('method'))}", markup=False, soft_wrap=True)
    for key in ("created_at", "estimated_finish", "finished_at"):
        out.print(f"{key}: {_when(job[key]) if job.get(key) else '-'}", markup=False, soft_wrap=True)
    if job.get("error"):
        out.print(f"error: {job['error']['code']}: {job['error']['message']}", markup=False, soft_wrap=True)


@jobs_app.command("events")
def jobs_events(job_id: str = typer.Argument(..., help="the job's id (ftjob-...)"),
                limit: int = typer.Option(100, min=1, max=1000, help="the latest N events"),
                base_url: str = BaseUrlOpt, api_key: Optional[str] = ApiKeyOpt, as_json: bool = JsonOpt) -> None:
    """A job's events, oldest first: validation, progress (step and loss), checkpoints, completion."""
    import json

    page = _jobs(base_url, api_key).get(f"/fine_tuning/jobs/{job_id}/events", limit=limit)
    if as_json:
        out.print(json.dumps(page, indent=2), markup=False, soft_wrap=True)
        return
    for event in reversed(page["data"]):
        out.print(f"{_when(event['created_at'])} [{event['level']}] {event['message']}", markup=False, soft_wrap=True)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str = typer.Argument(..., help="the job's id (ftjob-...)"), base_url: str = BaseUrlOpt,
                api_key: Optional[str] = ApiKeyOpt) -> None:
    """Cancel a job: its training stops at once; its events and checkpoints stay."""
    job = _jobs(base_url, api_key).post(f"/fine_tuning/jobs/{job_id}/cancel")
    out.print(f"{job['id']}: {job['status']}", markup=False, soft_wrap=True)


def _when(seconds: int) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _serve_config(config: Optional[Path]):
    from tuneforge.serve.config import load_serve_config

    return load_serve_config(config)


@app.command()
def monitor(
    route: str = typer.Option(..., "--route", help="the rollout route to watch"),
    since: Optional[str] = typer.Option(None, help="window: 30m, 24h, 7d [the config's monitor.since, 7d]"),
    db: Optional[Path] = typer.Option(None, "--db", help="the server's request log [the config's log_db]"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="the serve config (routes, adapters, "
                                          "monitor: thresholds)"),
    adapter: list[str] = typer.Option([], help="NAME=RUN_DIR of a served adapter the config does not list"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    fail_if: Optional[str] = typer.Option(None, help='exit 1 when it holds, e.g. "tickets.input_ngram_p < 0.01 or '
                                          'support.failed_checks > 0"'),
) -> None:
    """Input drift, output drift and feedback of a route's variants; checks; promotion history.
    The figures also go to the log DB, where the server's /metrics shows them."""
    from tuneforge.monitor.run import Request, fail_if as holds, monitor as run_monitor, to_json
    from tuneforge.monitor.show import print_report

    cfg = _serve_config(config)
    adapters = {**cfg.adapters, **{k: Path(v) for k, v in _named_adapters(adapter).items()}}
    report = run_monitor(Request(route=route, db=db or cfg.log_db, config=cfg.monitor, since=since,
                                 routes={n: r.variants for n, r in cfg.routes.items()}, adapters=adapters))
    failed = holds(fail_if, report) if fail_if else False
    if as_json:
        out.print(to_json(report), markup=False, soft_wrap=True)
    else:
        print_report(report, out)
    if failed:
        err.print(f"fail-if holds: {fail_if}", markup=False)
        raise typer.Exit(1)


retrain_app = typer.Typer(help="retrain a route's adapter on logged corrections; promote it step by step")
app.add_typer(retrain_app, name="retrain")
AdminKeyOpt = typer.Option(None, "--admin-key", envvar="TUNEFORGE_ADMIN_KEY", help="the server's admin key "
                           "[$TUNEFORGE_ADMIN_KEY]")
ServerOpt = typer.Option(None, "--server", help="the server's base URL, e.g. http://127.0.0.1:8000 "
                         "(with --admin-key: take the first promotion step at once)")


@retrain_app.callback(invoke_without_command=True)
def retrain(
    ctx: typer.Context,
    route: Optional[str] = typer.Option(None, "--route", help="the rollout route whose adapter is retrained"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="the new run folder"),
    min_new: Optional[int] = typer.Option(None, min=1, help="logged corrections/good answers needed "
                                          "[monitor.min_new, 20]"),
    margin: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="how much better (main metric) the "
                                           "candidate must be [monitor.margin, 0]"),
    name: Optional[str] = typer.Option(None, help="the candidate's served name [ROUTE-RUNNAME]"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="the serve config"),
    db: Optional[Path] = typer.Option(None, "--db", help="the server's request log [the config's log_db]"),
    adapter: list[str] = typer.Option([], help="NAME=RUN_DIR of a served adapter the config does not list"),
    server: Optional[str] = ServerOpt,
    admin_key: Optional[str] = AdminKeyOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """Dataset from the adapter's training data plus logged corrections (prepare), a candidate from the
    same config (train), current vs candidate on held-out plus fresh examples (eval): exit 1 unless
    the candidate is better by --margin. Then `tuneforge retrain promote` moves it 10% -> 50% -> 100%."""
    if ctx.invoked_subcommand is not None:
        return
    from tuneforge.monitor.retrain import RetrainRequest, retrain as run_retrain

    missing = [Problem("missing_option", f"{flag} is required", flag) for flag, v in
               (("--route", route), ("--out", out_dir)) if v is None]
    if missing:
        raise TuneforgeError(missing)
    cfg = _serve_config(config)
    adapters = {**cfg.adapters, **{k: Path(v) for k, v in _named_adapters(adapter).items()}}
    result = run_retrain(RetrainRequest(route=route, out=out_dir, db=db or cfg.log_db, config=cfg.monitor,
                                        routes={n: r.variants for n, r in cfg.routes.items()}, adapters=adapters,
                                        min_new=min_new, margin=margin, name=name, overrides=overrides),
                         say=lambda line: err.print(line, markup=False))
    out.print(f"candidate {result['candidate']} accepted: {result['metric']} {result['candidate_score']:.4f} vs "
              f"{result['current_score']:.4f} ({result['diff']:+.4f}, margin {result['margin']:g}) on "
              f"{result['test_examples']} test examples, {result['fresh_examples']} of them fresh", markup=False)
    if server and admin_key:
        _promote_step(route, config, db, server, admin_key)
    else:
        out.print(f"next: tuneforge retrain promote --route {route} --server URL --admin-key KEY (from cron)",
                  markup=False)


def _promote_step(route: str, config: Optional[Path], db: Optional[Path], server: str, admin_key: str) -> None:
    from tuneforge.monitor.promote import PromoteRequest, promote

    cfg = _serve_config(config)
    row = promote(PromoteRequest(route=route, db=db or cfg.log_db, server=server, admin_key=admin_key,
                                 config=cfg.monitor, adapters=dict(cfg.adapters)))
    state = "nothing to do: " if row.get("done") or row.get("unchanged") else ""
    out.print(f"{state}{row['candidate']} {row['action']} ({_pct(row['percent'])}): {row['why']}", markup=False)


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:g}%"


@retrain_app.command("promote")
def retrain_promote(
    route: str = typer.Option(..., "--route", help="the route whose candidate is being promoted"),
    server: str = typer.Option(..., "--server", help="the server's base URL, e.g. http://127.0.0.1:8000"),
    admin_key: Optional[str] = AdminKeyOpt,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="the serve config (monitor: thresholds)"),
    db: Optional[Path] = typer.Option(None, "--db", help="the server's request log [the config's log_db]"),
) -> None:
    """One promotion step (run it from cron): first share, hold for feedback, next share, or roll back
    (exit 1) when a monitor check fails on the candidate."""
    if not admin_key:
        raise TuneforgeError(Problem("missing_option", "the server's admin key is required (--admin-key or "
                                     "$TUNEFORGE_ADMIN_KEY)", "--admin-key"))
    _promote_step(route, config, db, server, admin_key)


@app.command("export")
def export_command(
    run: Path = typer.Argument(..., help="run folder from `tuneforge train` (or its adapter/)"),
    format: str = typer.Option("gguf", "--format", help="gguf (the only format so far)"),
    quant: str = typer.Option("f16", "--quant", help="f16|q8_0|q4_k_m (q4_k_m needs llama-cpp-python)"),
    out_file: Path = typer.Option(..., "--out", "-o", help="the .gguf file to write"),
    samples: int = typer.Option(16, min=1, help="validation prompts in the parity check"),
) -> None:
    """The merged model as GGUF, an Ollama Modelfile beside it, and a parity check against the adapter
    through llama.cpp (greedy answers, next-token KL) written to FILE.export.json; exit 1 beyond tolerance."""
    from tuneforge.export.gguf import export

    if format != "gguf":
        raise TuneforgeError(Problem("invalid_value", f"--format {format!r}: only gguf is supported", "--format"))
    report = export(run, out_file, quant, samples)
    out.print(f"wrote {report['gguf']} ({report['bytes'] / 1e6:.0f} MB, {quant}) and {report['modelfile']} "
              f"(stop {report['stop_token']})", markup=False)
    check = report["parity"]
    if not check["checked"]:
        err.print(f"warning: parity not checked: {check['reason']}", markup=False)
        return
    tol = check["tolerance"]
    out.print(f"parity over {check['prompts']} validation prompts: tokenizer {check['tokenizer_match']:.0%}, "
              f"max KL {check['max_kl']:.2e} (<= {tol['max_kl']:g}), greedy answers {check['greedy_match']:.0%} "
              f"(>= {tol['greedy_match']:.0%}), answer tokens {check['forced_match']:.0%} (>= {tol['forced_match']:.0%}), "
              f"top-1 {check['top1_match']:.0%}", markup=False)
    if not check["ok"]:
        raise TuneforgeError(Problem("parity_failed", f"the GGUF file does not answer like the adapter (see "
                                     f"{out_file.with_suffix('.export.json')})", str(out_file)), exit_code=1)


def _report(error: TuneforgeError) -> None:
    lines = [p.line() for p in error.problems]
    for line in lines[:MAX_PRINTED]:
        err.print(line, markup=False)
    if len(lines) > MAX_PRINTED:
        err.print(f"... and {len(lines) - MAX_PRINTED} more problems", markup=False)
    if error.hint:
        err.print(f"hint: {error.hint}", markup=False)


def _disk_full(exc: OSError) -> None:
    """A full disk (or quota) is the machine's state, not a tuneforge bug: say which file."""
    err.print(outdir.disk_full(exc.filename or "a file").line(), markup=False)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    _quiet_libraries()
    try:
        app(args=argv, standalone_mode=True)
    except TuneforgeError as error:
        _report(error)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # the last line of defence: a bug, said plainly
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            _disk_full(exc)
        if os.environ.get("TUNEFORGE_DEBUG") == "1":
            raise
        problem = Problem("internal_error", f"{type(exc).__name__}: {exc} (this is a tuneforge bug; "
                          "rerun with TUNEFORGE_DEBUG=1 for the traceback and report it)")
        err.print(problem.line(), markup=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
