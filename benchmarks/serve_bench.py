"""Benchmark: `tuneforge serve` with continuous batching against the same server one request at a time.

    python benchmarks/serve_bench.py [--requests 256] [--clients 64] [--skip-adapters]

(About 10 minutes on 2 cores, most of it the one-at-a-time side; `--requests 16 --clients 8
--skip-adapters` is a one-minute check. Needs the `openai` client: `pip install -e '.[test]'`.)

The built-in model (smollm2-135m) behind the real tuneforge server (serve.runner's
build_engine + make_server, as `tuneforge serve` runs it: FastAPI under uvicorn, the
SQLite request log, metrics), in a child process listening on a free port of 127.0.0.1.
The load comes from this process: `--clients` concurrent callers sharing one real
`openai.AsyncOpenAI` client (no retries; its connection pool gives each caller its own
connection), taking the `--requests` chat requests in turn. Every prompt asks for a
long story (about 40 prompt tokens with the chat template) with `max_tokens=32` and
`temperature=0`, so answers run to 32 tokens; throughput counts only the completion tokens
each response's `usage` reports (answers that stopped early count what they produced, and
`short_answers` says how many did).

Sides, run one after the other, each on a fresh server warmed up first (a few requests the
timed load does not count):
- `batched`: the server's default `max_batch` (continuous batching: a request joins the
  running batch at the next decode step and leaves it as soon as it ends).
- `one_at_a_time`: the same server and engine with `max_batch=1`; everything else equal.
`speedup` is batched over one-at-a-time throughput (goal: 3x or more).
Then, unless `--skip-adapters`, the cost of mixing adapters: four LoRA adapters trained here
for 3 steps each (`tuneforge.train`, on 40 generated chat records; kept under `--work` and
reused by later runs), all loaded on one batched server; the same load is sent once all to
one adapter (`adapters_1`) and once round-robin over the four (`adapters_4`), and
`mixed_adapter_loss` is the throughput lost by mixing (goal: under 20%).

Throughput is completion tokens over the wall time of the whole load (first request sent to
last answer received); `p50_ms`/`p99_ms` are per-request latencies as the client saw them
(queueing included). `mean_decode_rows` is the engine's own count of rows per decode step.
The server and this client share the machine's cores. Prints one final JSON line; `isa`
names the CPU's vector extensions, `precision` the engine's (bf16 autocast or fp32).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from itertools import product
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import cpu_isa  # noqa: E402

MODEL = "smollm2-135m"
MAX_TOKENS = 32
ADAPTERS = 4
WORK = Path(tempfile.gettempdir()) / "tuneforge-serve-bench"

ADJECTIVES = ["brave", "clever", "sleepy", "curious", "lonely", "cheerful", "grumpy", "tiny"]
ANIMALS = ["fox", "owl", "whale", "tiger", "rabbit", "dragon", "penguin", "horse"]
PLACES = ["Paris", "the desert", "a forest", "the moon"]


def prompts(count: int) -> list[str]:
    """Distinct requests for a long story: about 40 tokens with SmolLM2's chat template."""
    topics = list(product(ADJECTIVES, ANIMALS, PLACES))  # 256; past that, the same topics as "Part 2", ...
    texts = []
    for i in range(count):
        a, b, c = topics[i % len(topics)]
        part = f" Part {i // len(topics) + 1}." if i >= len(topics) else ""
        texts.append(f"Write a long story about a {a} {b} in {c}.{part}")
    return texts


WARMUP = ["Write a long poem about the sea.", "Describe a busy market in detail.",
          "Tell me a long story about a robot.", "Explain how bread is made, step by step."]


# -- the server, in a child process --------------------------------------------------------

def child(config_file: Path, info_file: Path) -> None:
    """Run the real server (what `tuneforge serve` runs) on a free loopback port; write the
    port and the engine's settings to `info_file` once the model is loaded."""
    import torch

    from tuneforge.serve.config import ServeConfig
    from tuneforge.serve.runner import build_engine, make_server

    config = ServeConfig.model_validate(json.loads(config_file.read_text()))
    engine = build_engine(config)
    server = make_server(config, engine, log_level="warning")
    # proto IPPROTO_TCP, as asyncio's own listeners have: asyncio sets TCP_NODELAY on accepted
    # connections only then (with proto 0 every response waits ~40 ms on Nagle and delayed ACKs)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    info = {"port": sock.getsockname()[1], "bf16": bool(engine.bf16), "max_batch": engine.max_batch,
            "models": engine.models(), "torch_threads": torch.get_num_threads()}
    tmp = info_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(info_file)
    server.run(sockets=[sock])  # SIGTERM drains (nothing is in flight by then) and exits


class Server:
    """A child process serving `config` (ServeConfig fields) until `stop`."""

    def __init__(self, name: str, config: dict, folder: Path):
        self.name = name
        self.folder = folder / name
        self.folder.mkdir(parents=True)
        config = {**config, "host": "127.0.0.1", "port": 0, "log_db": str(self.folder / "log.db")}
        config_file, self.info_file = self.folder / "config.json", self.folder / "info.json"
        config_file.write_text(json.dumps(config))
        self.stderr = open(self.folder / "stderr.log", "wb")
        self.proc = subprocess.Popen([sys.executable, __file__, "--child", str(config_file), str(self.info_file)],
                                     stdout=subprocess.DEVNULL, stderr=self.stderr, cwd=ROOT)
        self.info = self._wait_ready()
        self.url = f"http://127.0.0.1:{self.info['port']}"

    def _fail(self, why: str) -> None:
        self.stop()
        tail = (self.folder / "stderr.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"server {self.name}: {why}\n{tail}")

    def _wait_ready(self, timeout: float = 600.0) -> dict:
        deadline = time.monotonic() + timeout
        info = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._fail(f"exited with {self.proc.returncode}")
            if info is None and self.info_file.exists():
                info = json.loads(self.info_file.read_text())
            if info is not None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{info['port']}/health", timeout=5) as r:
                        if r.status == 200:
                            return info
                except OSError:
                    pass
            time.sleep(0.2)
        self._fail("did not start in time")
        raise AssertionError  # unreachable

    def engine_stats(self) -> dict[str, float]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as r:
            text = r.read().decode()
        stats = {}
        for line in text.splitlines():
            if line.startswith("tuneforge_engine_"):
                name, _, value = line.partition(" ")
                stats[name.removeprefix("tuneforge_engine_")] = float(value)
        return stats

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # a drain: nothing is in flight, so it exits at once
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


# -- the load --------------------------------------------------------------------------

async def load(url: str, models: list[str], texts: list[str], clients: int, max_tokens: int) -> dict:
    """`clients` concurrent callers of one AsyncOpenAI client take the requests in turn;
    request i goes to models[i % len(models)]. Returns what came back, timed by the client."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600.0)
    queue = list(range(len(texts)))
    latencies: list[float] = []
    completion_tokens = prompt_tokens = short = 0
    errors: list[str] = []

    async def worker() -> None:
        nonlocal completion_tokens, prompt_tokens, short
        while queue:
            i = queue.pop(0)
            start = time.perf_counter()
            try:
                reply = await client.chat.completions.create(
                    model=models[i % len(models)], messages=[{"role": "user", "content": texts[i]}],
                    max_tokens=max_tokens, temperature=0)
            except Exception as exc:  # noqa: BLE001 - every failure is an error of the load test
                errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            latencies.append(time.perf_counter() - start)
            completion_tokens += reply.usage.completion_tokens
            prompt_tokens += reply.usage.prompt_tokens
            short += reply.choices[0].finish_reason != "length"

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - start
    await client.close()
    return {"wall_s": wall, "latencies": latencies, "completion_tokens": completion_tokens,
            "prompt_tokens": prompt_tokens, "short": short, "errors": errors}


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def run_side(name: str, server: Server, models: list[str], texts: list[str], clients: int) -> dict:
    before = server.engine_stats()
    got = asyncio.run(load(server.url, models, texts, clients, MAX_TOKENS))
    after = server.engine_stats()
    steps = after.get("steps", 0) - before.get("steps", 0)
    done = len(got["latencies"])
    # each answer's first token comes from its prefill; the rest from decode steps
    decoded = after.get("tokens_generated", 0) - before.get("tokens_generated", 0) - done
    side = {
        "tokens_per_s": round(got["completion_tokens"] / got["wall_s"], 1),
        "wall_s": round(got["wall_s"], 2),
        "completion_tokens": got["completion_tokens"],
        "prompt_tokens_mean": round(got["prompt_tokens"] / done, 1) if done else None,
        "short_answers": got["short"],
        "errors": len(got["errors"]),
        "p50_ms": round(percentile(got["latencies"], 50) * 1000, 1) if done else None,
        "p99_ms": round(percentile(got["latencies"], 99) * 1000, 1) if done else None,
        "mean_decode_rows": round(decoded / steps, 2) if steps else None,
        # the machine's 1-minute load as the side ended: this benchmark alone (2 torch threads and the
        # client) puts about 2 to 3 there; much more means others shared the cores and the figures are noisy
        "load_1m": round(os.getloadavg()[0], 2),
    }
    for error in got["errors"][:5]:
        print(f"{name}: {error}", file=sys.stderr)
    print(f"{name}: {side}", file=sys.stderr)
    return side


def warm_up(server: Server, models: list[str], clients: int) -> None:
    """A few concurrent requests through every model, not timed."""
    texts = (WARMUP * 4)[:max(len(models), min(clients, 8))]
    got = asyncio.run(load(server.url, models, texts, len(texts), 8))
    if got["errors"]:
        raise SystemExit(f"warm-up on {server.name} failed: {got['errors'][0]}")


# -- adapters ----------------------------------------------------------------------------

def train_adapters(work: Path) -> list[Path]:
    """Four small LoRA adapters (3 steps each, different seeds) on 40 generated chat records;
    reused from `work` when a previous run made them."""
    adapters = [work / "adapters" / f"a{i}" for i in range(ADAPTERS)]
    if all((a / "adapter" / "adapter_config.json").exists() for a in adapters):
        print(f"adapters: reusing {work / 'adapters'}", file=sys.stderr)
        return adapters
    from tuneforge.data.config import PrepareConfig
    from tuneforge.data.prepare import prepare
    from tuneforge.train.config import TrainConfig
    from tuneforge.train.run import train

    data = work / "data"
    if not (data / "train.jsonl").exists():
        shutil.rmtree(data, ignore_errors=True)
        products = ["card", "loan", "account", "transfer", "statement"]
        problems = ["was charged twice", "is blocked", "shows a wrong balance", "never arrived",
                    "cannot be opened", "has an unknown fee", "was closed", "is delayed"]
        records = [{"messages": [{"role": "user", "content": f"Ticket {i}: my {p} {q}. What should I do?"},
                                 {"role": "assistant", "content": f"Sorry that your {p} {q}. Our team will "
                                  f"look into ticket {i} today and write back within one day."}]}
                   for i, (p, q) in enumerate(product(products, problems))]
        raw = work / "records.jsonl"
        raw.write_text("".join(json.dumps(r) + "\n" for r in records))
        prepare(PrepareConfig(inputs=[raw], out=data, model=MODEL, memorisation_check=False))
    for i, folder in enumerate(adapters):
        if (folder / "adapter" / "adapter_config.json").exists():
            continue
        scratch = folder.with_name(folder.name + ".partial")
        shutil.rmtree(scratch, ignore_errors=True)
        start = time.perf_counter()
        train(TrainConfig(model=MODEL, data=data, out=scratch, method="lora", max_steps=3, batch_size=8,
                          seed=i, learning_rate=1e-3, tracking=[]), progress=False)
        shutil.rmtree(scratch / "checkpoints", ignore_errors=True)  # ~150 MB each; only adapter/ is served
        shutil.rmtree(folder, ignore_errors=True)
        scratch.rename(folder)  # a run cut short leaves only a .partial folder, retrained next time
        print(f"adapter a{i}: trained in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return adapters


# -- main --------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=None,
                        help="the batched side's max_batch (default: the server's own default)")
    parser.add_argument("--skip-adapters", action="store_true", help="skip the 4-adapters-vs-1 comparison")
    parser.add_argument("--work", type=Path, default=WORK, help="where the trained adapters are kept")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.requests < 1 or args.clients < 1:
        parser.error("--requests and --clients must be >= 1")

    from tuneforge.models import resolve_model
    from tuneforge.serve.config import ServeConfig

    resolve_model(MODEL)  # fails here, clearly, when the built-in model is missing
    default_batch = ServeConfig().max_batch
    batch = args.max_batch or default_batch
    texts = prompts(args.requests)
    args.work.mkdir(parents=True, exist_ok=True)
    adapters = [] if args.skip_adapters else train_adapters(args.work)
    logs = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    print(f"{args.requests} requests, {args.clients} clients, max_tokens {MAX_TOKENS}, isa {cpu_isa()}, "
          f"server logs in {logs}", file=sys.stderr)

    if os.getloadavg()[0] > 1.0:
        print(f"warning: the machine is busy before the start (load {os.getloadavg()[0]:.1f}); other work on "
              "these cores slows the sides unevenly (the one-at-a-time side most)", file=sys.stderr)
    sides: dict[str, dict] = {}
    precision = threads = None
    plan = [("batched", {"max_batch": batch}), ("one_at_a_time", {"max_batch": 1})]
    for name, settings in plan:
        server = Server(name, {"model": MODEL, **settings}, logs)
        try:
            precision = "bf16" if server.info["bf16"] else "fp32"
            threads = server.info["torch_threads"]
            warm_up(server, [MODEL], args.clients)
            sides[name] = run_side(name, server, [MODEL], texts, args.clients)
        finally:
            server.stop()

    if adapters:
        names = [f"a{i}" for i in range(ADAPTERS)]
        config = {"model": MODEL, "max_batch": batch, "adapters": {n: str(a) for n, a in zip(names, adapters)}}
        server = Server("adapters", config, logs)
        try:
            warm_up(server, names, args.clients)
            sides["adapters_1"] = run_side("adapters_1", server, names[:1], texts, args.clients)
            sides["adapters_4"] = run_side("adapters_4", server, names, texts, args.clients)
        finally:
            server.stop()

    def each(key: str, names=("batched", "one_at_a_time")) -> dict:
        return {n: sides[n][key] for n in names if n in sides}

    batched, single = sides["batched"], sides["one_at_a_time"]
    result = {
        "isa": cpu_isa(), "precision": precision, "client": "openai.AsyncOpenAI", "model": MODEL,
        "requests": args.requests, "clients": args.clients, "max_tokens": MAX_TOKENS, "server_torch_threads": threads,
        "max_batch": {"batched": batch, "one_at_a_time": 1},
        "prompt_tokens_mean": batched["prompt_tokens_mean"],
        "errors": each("errors", tuple(sides)),
        "short_answers": each("short_answers", tuple(sides)),
        "throughput_tokens_per_s": each("tokens_per_s"),
        "speedup": round(batched["tokens_per_s"] / single["tokens_per_s"], 2) if single["tokens_per_s"] else None,
        "p50_ms": each("p50_ms", tuple(sides)), "p99_ms": each("p99_ms", tuple(sides)),
        "mean_decode_rows": each("mean_decode_rows", tuple(sides)),
        "load_1m": each("load_1m", tuple(sides)),
    }
    if adapters:
        one, four = sides["adapters_1"]["tokens_per_s"], sides["adapters_4"]["tokens_per_s"]
        result.update({"adapters_1_tokens_per_s": one, "adapters_4_tokens_per_s": four,
                       "mixed_adapter_loss": round(1 - four / one, 3) if one else None})
    shutil.rmtree(logs, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
