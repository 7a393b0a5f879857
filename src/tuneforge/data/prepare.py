"""The prepare stage: raw files -> validated, cleaned, split dataset folder.

    tuneforge prepare tickets.jsonl --out data/tickets
    tuneforge prepare intents.csv --input-col text --output-col category --out data/intents

Two streaming passes keep memory bounded: the first validates, redacts and
deduplicates each record, counts its tokens, and spools the survivors to disk
with a few numbers per record kept in memory (hashes, length, label, MinHash
signature); whole-dataset decisions (contradictions, near-duplicate groups,
outliers, the split) are then made on those arrays, and the second pass copies
each spooled record into its split file.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge import tasks
from tuneforge.data import clean, outdir, pii
from tuneforge.data.config import PrepareConfig
from tuneforge.data.columns import Plan
from tuneforge.data.formats import Columns, Normalised
from tuneforge.data.readers import check_input
from tuneforge.data.report import render_markdown, token_stats, write_json
from tuneforge.data.split import DROP, SPLIT_NAMES, TEST, TRAIN, VAL, assign_splits
from tuneforge.data.tokens import TokenCounter
from tuneforge.data.validate import Validator
from tuneforge.errors import Problem, TuneforgeError

BATCH = 4096


class Collector:
    """First pass: validate, redact, dedupe, count tokens, spool; keep per-record numbers."""

    def __init__(self, cfg: PrepareConfig, counter: TokenCounter, spool):
        self.cfg, self.counter, self.spool = cfg, counter, spool
        self.validator = Validator(cfg.format, Columns(cfg.input_col, cfg.output_col, cfg.system))
        self.sources: list[str] = []
        self.records_in = 0
        self.errors: list[dict[str, Any]] = []
        self.mapped: dict[str, dict[str, str]] = {}  # file -> inferred input/output columns
        self.notes: list[str] = []  # for the report's warnings
        self.pii: Counter[str] = Counter()
        self.exact = 0
        self.seen: set[int] = set()
        self.tally = tasks.Tally()  # what the answers look like, for the task decision
        self.labels = self.tally.labels
        self.pending: list[tuple] = []
        self.inflight: tuple[list[tuple], Future] | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self.tokens, self.line, self.source = array("i"), array("I"), array("H")
        self.in_hash, self.out_hash, self.label = array("Q"), array("Q"), array("i")
        self.given = array("B")
        self.sigs: list[np.ndarray] = []

    def error(self, source: int, line: int, problem: Problem, whole_file: bool = False) -> None:
        self.errors.append({"file": self.sources[source], "line": line, "code": problem.code,
                            "message": problem.message, **({"whole_file": True} if whole_file else {})})

    @property
    def kind(self) -> str:
        return self.validator.kind

    def add_file(self, path: Path, given: int) -> None:
        self.sources.append(str(path))
        source = len(self.sources) - 1
        for item in self.validator.check(path, on_plan=lambda plan: self._note_columns(source, plan)):
            if item.whole_file:  # the header's (or the file's) problem stands for every row
                self._unreadable(source, item.line, item.problems)
                break
            self.records_in += 1
            for problem in item.problems:
                self.error(source, item.line, problem)
            if item.record is None:
                continue
            if self.cfg.redact_pii:
                self._redact(item.record)
            self._stage(item.record, source, item.line, given)
        self.flush(final=True)

    def _note_columns(self, source: int, plan: Plan) -> None:
        if plan.mapped:
            self.mapped[self.sources[source]] = plan.mapped
            if plan.unused:
                self.notes.append(f"{self.sources[source]}: read column '{plan.mapped['input']}' as the input and "
                                  f"'{plan.mapped['output']}' as the output; not used: {', '.join(plan.unused)} "
                                  "(pass --input-col/--output-col to choose)")

    def _unreadable(self, source: int, line: int, problems: list[Problem]) -> None:
        for problem in problems:
            self.error(source, line, problem, whole_file=True)
            self.notes.append(f"{self.sources[source]} was not read: {problem.message}")

    def _redact(self, rec: Normalised) -> None:
        def clean_text(text: str) -> str:
            redacted, found = pii.redact(text)
            self.pii.update(found)
            return redacted

        for message in rec.messages:
            message["content"] = clean_text(message["content"])
        rec.chosen, rec.rejected, rec.text = (clean_text(t) if t else t for t in (rec.chosen, rec.rejected, rec.text))

    def _stage(self, rec: Normalised, source: int, line: int, given: int) -> None:
        # exact keys keep case (names, SQL literals, code); near-duplicate signatures fold it
        if rec.kind == "text":
            key_in, key_out = clean.exact_text(rec.text), ""
        else:
            turns = rec.messages[:-1] if rec.kind == "chat" else rec.messages
            key_in = "\x1e".join(f"{m['role']}:{clean.exact_text(m['content'])}" for m in turns)
            key_out = (clean.exact_text(rec.messages[-1]["content"]) if rec.kind == "chat"
                       else clean.exact_text(rec.chosen) + "\x1f" + clean.exact_text(rec.rejected))
        full = clean.hash64(key_in + "\x1d" + key_out)
        if full in self.seen:
            self.exact += 1
            return
        self.seen.add(full)
        self.pending.append((rec, source, line, given, key_in, key_out))
        if len(self.pending) >= BATCH:
            self.flush()

    def _count(self, recs: list[Normalised]) -> list[int]:
        if self.kind == "text":
            return self.counter.count_texts([r.text for r in recs])
        if self.kind == "chat":
            return self.counter.count_chats([r.messages for r in recs])
        chosen = self.counter.count_chats([r.messages + [{"role": "assistant", "content": r.chosen}] for r in recs])
        rejected = self.counter.count_chats([r.messages + [{"role": "assistant", "content": r.rejected}] for r in recs])
        return [max(a, b) for a, b in zip(chosen, rejected)]

    def flush(self, final: bool = False) -> None:
        """Hand the pending batch to the tokenizer thread and finish the batch before it.

        The Rust tokenizer releases the GIL, so counting batch k overlaps with parsing
        batch k+1 in Python; batches still finish in file order."""
        batch, self.pending = self.pending, []
        if self.inflight is not None:
            done, future = self.inflight
            self.inflight = None
            self._finish(done, future.result())
        if batch:
            self.inflight = (batch, self.pool.submit(self._count, [item[0] for item in batch]))
        if final and self.inflight is not None:
            self.flush(final=True)

    def _finish(self, batch: list[tuple], counts: list[int]) -> None:
        texts = []
        limit = self.cfg.max_seq_len
        for (rec, source, line, given, key_in, key_out), n in zip(batch, counts):
            if n > limit and self.kind != "text":
                self.error(source, line, Problem(
                    "too_long", f"{n} tokens with the chat template, over --max-seq-len {limit}: it would be "
                    "truncated; shorten it or raise --max-seq-len"))
                continue
            self.tokens.append(n)
            self.line.append(line)
            self.source.append(source)
            self.given.append(given)
            self.in_hash.append(clean.hash64(key_in) if self.kind == "chat" else 0)
            self.out_hash.append(clean.hash64(key_out) if self.kind == "chat" else 0)
            self.label.append(self._label(rec))
            texts.append(clean.near_text(key_in + " " + key_out))
            self.spool.write(json.dumps(_canonical(rec), ensure_ascii=False) + "\n")
        if texts:
            self.sigs.append(clean.signatures(texts))

    def _label(self, rec: Normalised) -> int:
        if self.kind != "chat":
            return -1
        return self.tally.add(rec.messages[-1]["content"])


def _canonical(rec: Normalised) -> dict[str, Any]:
    if rec.kind == "text":
        return {"text": rec.text}
    out: dict[str, Any] = {"messages": rec.messages}
    if rec.kind == "preference":
        out.update(chosen=rec.chosen, rejected=rec.rejected)
    return out


def detect_task(col: Collector, requested: str) -> str:
    """The same rules as eval's (tuneforge.tasks), on the counts of the first pass."""
    return tasks.resolve(requested, col.kind, col.tally)


def _problems(errors: list[dict[str, Any]]) -> list[Problem]:
    # line 0 is the file as a whole (a Parquet schema, an unreadable file)
    return [Problem(e["code"], e["message"], f"{e['file']}:{e['line']}" if e["line"] else e["file"]) for e in errors]


def prepare(cfg: PrepareConfig, progress=None) -> dict[str, Any]:
    """Run the stage; returns the report (also written to `cfg.out/report.json`)."""
    # held-out files first, so an exact copy in the training files is the one dropped
    files = [(p, TEST) for p in cfg.test] + [(p, VAL) for p in cfg.val] + [(p, TRAIN) for p in cfg.inputs]
    missing = [problem for p, _ in files if (problem := check_input(p)) is not None]
    if missing:
        raise TuneforgeError(missing)
    # the output folder is checked before the tokenizer loads or any input is read
    bad_out = outdir.check_out(cfg.out, [p for p, _ in files])
    if bad_out:
        raise TuneforgeError(bad_out)
    created = not cfg.out.exists()
    outdir.make_out(cfg.out)
    spool_path = cfg.out / ".prepare-spool.jsonl"
    try:
        from tuneforge.models import load_tokenizer

        counter = TokenCounter(load_tokenizer(cfg.model))
        with outdir.writing(spool_path), open(spool_path, "w", encoding="utf-8") as spool:
            col = Collector(cfg, counter, spool)
            for path, given in files:
                if progress:
                    progress(f"reading {path}")
                col.add_file(path, given)
        order = {name: i for i, name in enumerate(col.sources)}
        col.errors.sort(key=lambda e: (order[e["file"]], e["line"]))
        report = _decide_and_write(cfg, col, spool_path, progress)
    finally:
        # whatever stopped the run, no spool or half-written split is left behind, nor a
        # folder this run created and never wrote to (the model failed to load, say)
        outdir.remove_debris(cfg.out)
        if created and not any(cfg.out.iterdir()):
            cfg.out.rmdir()
    return report


def _decide_and_write(cfg: PrepareConfig, col: Collector, spool_path: Path, progress) -> dict[str, Any]:
    n = len(col.tokens)
    task = detect_task(col, cfg.task)
    tokens = np.frombuffer(col.tokens, dtype=np.int32) if n else np.zeros(0, dtype=np.int32)
    decision = np.frombuffer(col.given, dtype=np.uint8).copy() if n else np.zeros(0, dtype=np.uint8)
    given_split = decision.copy()
    warnings: list[str] = []

    contradictions, contradicted = _contradictions(col, cfg.on_contradiction)
    decision[contradicted] = DROP

    outliers = clean.length_outliers(tokens)
    if cfg.drop_outliers:
        decision[outliers] = DROP

    if progress:
        progress("finding near duplicates")
    sigs = np.concatenate(col.sigs) if col.sigs else np.zeros((0, clean.NUM_PERM), dtype=np.uint32)
    uf = clean.near_duplicate_groups(sigs, cfg.near_dup_threshold)
    groups = np.arange(n)
    for member in list(uf.parent):
        groups[member] = uf.find(member)
    near = int((groups != np.arange(n)).sum())
    leaks = 0
    if cfg.drop_near_dups:
        decision[groups != np.arange(n)] = DROP
    elif cfg.val or cfg.test:
        # a training record that nearly repeats a given val/test record would leak it
        held_out_groups = np.unique(groups[(given_split != TRAIN)])
        leak = (given_split == TRAIN) & np.isin(groups, held_out_groups) & (decision != DROP)
        leaks = int(leak.sum())
        decision[leak] = DROP

    labels = np.frombuffer(col.label, dtype=np.int32) if n else np.zeros(0, dtype=np.int32)
    strata = labels if task == "classification" else np.zeros(n, dtype=np.int32)
    ratios = cfg.split
    if cfg.val or cfg.test:
        ratios = (1.0, 0.0, 0.0) if (cfg.val and cfg.test) else (
            (ratios[0] + ratios[1], 0.0, ratios[2]) if cfg.val else (ratios[0] + ratios[2], ratios[1], 0.0))
    free = (decision == TRAIN) & (given_split == TRAIN)
    if free.any():
        decision[free] = assign_splits(groups, strata, ratios, cfg.seed, mask=free)

    warnings += tasks.warnings(task, col.tally)
    if leaks:
        warnings.append(f"{leaks} training records nearly repeat a given val/test record and were dropped")

    label_names = {v: k for k, v in col.labels.items()}
    kept = decision != DROP
    label_counts: dict[str, int] = {}
    if task == "classification":
        ids, counts = np.unique(labels[kept], return_counts=True)
        label_counts = {label_names[int(i)]: int(c) for i, c in zip(ids, counts)}
        if counts.size and counts.max() > 5 * counts.min():
            warnings.append(f"labels are imbalanced: the largest class has {int(counts.max())} records, "
                            f"the smallest {int(counts.min())}; consider more data for the small ones")
        few = [k for k, c in label_counts.items() if c < 10]
        if few:
            warnings.append(f"labels with fewer than 10 examples: {', '.join(sorted(few)[:10])}")

    splits = {name: int((decision == code).sum()) for code, name in enumerate(SPLIT_NAMES)}
    warnings += col.notes + _empty_split_warnings(splits)
    # a record can have several problems; a header problem stands for a whole file, not a record
    bad_records = len({(e["file"], e["line"]) for e in col.errors if "whole_file" not in e})
    report: dict[str, Any] = {
        "status": "ok",
        "records_in": col.records_in,
        "records_out": int(kept.sum()),
        "kind": col.kind or "none",
        "task": task,
        "model": cfg.model,
        "errors": col.errors,
        "error_counts": dict(Counter(e["code"] for e in col.errors)),
        "bad_records": bad_records,
        "columns": col.mapped,
        "duplicates": {"exact": col.exact, "near": near, "near_dropped": bool(cfg.drop_near_dups),
                       "leaks_dropped": leaks},
        "contradictions": contradictions,
        "contradiction_records": int(contradicted.sum()),
        "outliers": {"count": int(outliers.sum()), "dropped": bool(cfg.drop_outliers),
                     "examples": _where(col, np.flatnonzero(outliers)[:20])},
        "pii": dict(col.pii),
        "labels": label_counts,
        "token_lengths": token_stats(tokens[kept]),
        "splits": splits,
        "memorisation": {"checked": 0, "reproduced": 0},
        "warnings": warnings,
        "settings": json.loads(cfg.model_dump_json()),
    }
    if col.errors and cfg.on_error == "fail":
        report.update(status="failed", records_out=0, splits={k: 0 for k in SPLIT_NAMES})
        _write_reports(cfg.out, report, tokens[kept])
        raise TuneforgeError(_problems(col.errors), exit_code=2, hint=_fail_hint(col.errors, bad_records, cfg.out))
    if report["records_out"] == 0:
        _write_reports(cfg.out, report | {"status": "failed"}, tokens[kept])
        raise TuneforgeError(Problem("no_records", "no valid records are left; see the report", str(cfg.out)))

    with outdir.writing(f"the split files in {cfg.out}"):
        sample = _write_splits(cfg, col, spool_path, decision, groups, task, label_names)
    if cfg.memorisation_check and sample:
        if progress:
            progress("memorisation check on the base model")
        from tuneforge.data.memorise import memorisation

        report["memorisation"] = memorisation(cfg.model, sample)
    _write_reports(cfg.out, report, tokens[kept])
    return report


def _fail_hint(errors: list[dict[str, Any]], bad_records: int, out: Path) -> str:
    per_record = [e for e in errors if "whole_file" not in e]
    hints = []
    if per_record:
        counts = ", ".join(f"{code} {k}" for code, k in sorted(Counter(e["code"] for e in per_record).items()))
        hints.append(f"{_plural(bad_records, 'bad record')} ({_plural(len(per_record), 'problem')}: {counts}); "
                     f"fix them, or pass --on-error drop to leave them out (they are listed in {out / 'report.json'})")
    files = sorted({e["file"] for e in errors if "whole_file" in e})
    if files:
        hints.append(f"{_plural(len(files), 'file')} cannot be read as given: {', '.join(files)}")
    return "; ".join(hints)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _empty_split_warnings(splits: dict[str, int]) -> list[str]:
    """An empty val or test split is legal but leaves a later stage blind; say which and why."""
    if not any(splits.values()):
        return []
    found = []
    if splits["val"] == 0:
        found.append("the val split is empty: training will have nothing held out to measure eval loss on or "
                     "to pick the best checkpoint; add records, give val a share in --split, or pass --val FILE")
    if splits["test"] == 0:
        found.append("the test split is empty: `tuneforge eval` will have nothing held out to score; add records, "
                     "give test a share in --split, or pass --test FILE")
    return found


def _where(col: Collector, indices) -> list[dict[str, Any]]:
    return [{"file": col.sources[col.source[i]], "line": int(col.line[i])} for i in indices]


def _contradictions(col: Collector, policy: str) -> tuple[list[list[dict[str, Any]]], np.ndarray]:
    n = len(col.tokens)
    dropped = np.zeros(n, dtype=bool)
    if col.kind != "chat" or n == 0:
        return [], dropped
    ins = np.frombuffer(col.in_hash, dtype=np.uint64)
    outs = np.frombuffer(col.out_hash, dtype=np.uint64)
    order = np.lexsort((outs, ins))
    s_in, s_out = ins[order], outs[order]
    starts = np.flatnonzero(np.concatenate(([True], s_in[1:] != s_in[:-1])))
    ends = np.concatenate((starts[1:], [n]))
    groups = []
    for a, b in zip(starts, ends):
        if b - a > 1 and s_out[a] != s_out[b - 1]:
            members = np.sort(order[a:b])
            groups.append(_where(col, members))
            if policy == "drop":
                dropped[members] = True
            elif policy == "keep_first":
                dropped[members[1:]] = True
    return groups, dropped


def _write_splits(cfg, col, spool_path, decision, groups, task, label_names) -> list[str]:
    """Second pass; returns texts sampled from train for the memorisation check."""
    rng = np.random.default_rng(cfg.seed)
    train_idx = np.flatnonzero(decision == TRAIN)
    picks = set(rng.choice(train_idx, size=min(cfg.memorisation_samples, len(train_idx)), replace=False).tolist())
    sample: list[str] = []
    tmp = {code: cfg.out / f".{name}.jsonl.tmp" for code, name in enumerate(SPLIT_NAMES)}
    handles = {code: open(path, "w", encoding="utf-8") for code, path in tmp.items()}
    try:
        with open(spool_path, encoding="utf-8") as spool:
            for i, raw in enumerate(spool):
                code = int(decision[i])
                if code == DROP:
                    continue
                rec = json.loads(raw)
                meta = {"source": col.sources[col.source[i]], "line": int(col.line[i]), "task": task,
                        "tokens": int(col.tokens[i])}
                if task == "classification":
                    meta["label"] = label_names[col.label[i]]
                if groups[i] != i:
                    meta["near_duplicate_of"] = _where(col, [int(groups[i])])[0]
                rec["meta"] = meta
                handles[code].write(json.dumps(rec, ensure_ascii=False) + "\n")
                if i in picks:
                    sample.append(rec["text"] if "text" in rec else "\n".join(
                        m["content"] for m in rec["messages"] if m["role"] != "system"))
    finally:
        for handle in handles.values():
            handle.close()
    for code, path in tmp.items():
        path.replace(cfg.out / f"{SPLIT_NAMES[code]}.jsonl")
    return sample


def _write_reports(out: Path, report: dict[str, Any], lengths: np.ndarray) -> None:
    with outdir.writing(out / "report.json"):
        write_json(out / "report.json", report)
    with outdir.writing(out / "report.md"):
        (out / "report.md").write_text(render_markdown(report, lengths), encoding="utf-8")
