"""The evaluate report: `report.md` and a self-contained `report.html` (inline CSS and SVG, no JS).

Both show the same sections, computed once here: metrics side by side, a bar chart of the main
metric, the tuned variant's confusion matrix and most frequent confusions, the examples that flipped
between the baseline and the tuned variant, and the tuned variant's worst examples; with an LLM judge,
its verdict and reason next to each of those examples, and the examples it judged worst.
The baseline is "base-few-shot" when there is one, else the first variant; the tuned variant is
the last. Every text that comes from the user or the model is escaped.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from tuneforge.evaluate import judge, metrics
from tuneforge.evaluate.metrics import INVALID

LOWER_IS_BETTER = metrics.LOWER_IS_BETTER | judge.LOWER_IS_BETTER | {"loss"}
GENERAL = "general_accuracy"  # the row for the general-knowledge check
SHOWN = 10  # examples and confusions listed per section
CLIP = 300  # characters of an example shown; the predictions file has the whole text


def pick_variants(names: list[str]) -> tuple[str, str]:
    """(baseline, tuned): "base-few-shot" if present else the first variant, and the last variant."""
    return ("base-few-shot" if "base-few-shot" in names else names[0]), names[-1]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_table(result: dict) -> list[tuple[str, dict[str, float | None]]]:
    """Rows (metric, {variant: value or None}); the main metric first, general knowledge last."""
    variants = result["variants"]
    names = [result["main_metric"]]
    for metrics in variants.values():
        names += [k for k, v in metrics.items() if _is_number(v) and k not in names]
    rows = [(m, {v: variants[v].get(m) if _is_number(variants[v].get(m)) else None for v in variants}) for m in names]
    if result.get("general"):
        rows.append((GENERAL, {v: result["general"].get(v) for v in variants}))
    return rows


def best_of(metric: str, values: dict[str, float | None]) -> set[str]:
    """Variants with the best value; none when fewer than two have one or all are equal."""
    known = {v: x for v, x in values.items() if x is not None}
    if len(known) < 2 or len(set(known.values())) == 1:
        return set()
    best = (min if metric in LOWER_IS_BETTER else max)(known.values())
    return {v for v, x in known.items() if x == best}


def flips(predictions: list[dict], baseline: str, tuned: str) -> tuple[list[dict], list[dict]]:
    """(improved, regressed): examples where tuned scores above / below the baseline, biggest change first.

    With 1/0 scores these are exactly "baseline wrong, tuned right" and the reverse.
    """
    both = [p for p in predictions if baseline in p["scores"] and tuned in p["scores"]]
    gain = {p["index"]: p["scores"][tuned] - p["scores"][baseline] for p in both}
    improved = sorted((p for p in both if gain[p["index"]] > 0), key=lambda p: (-gain[p["index"]], p["index"]))
    regressed = sorted((p for p in both if gain[p["index"]] < 0), key=lambda p: (gain[p["index"]], p["index"]))
    return improved, regressed


def worst(predictions: list[dict], variant: str) -> list[dict]:
    """Examples sorted by the variant's score, lowest first."""
    scored = [p for p in predictions if variant in p["scores"]]
    return sorted(scored, key=lambda p: (p["scores"][variant], p["index"]))


def judge_worst(predictions: list[dict], variant: str) -> list[dict]:
    """The variant's examples the judge liked least: by score, lowest first, unscored last (rubric);
    losses, then invalid verdicts, then ties (pairwise; wins are left out)."""
    def rank(p: dict) -> tuple:
        entry = p["judge"][variant]
        if "score" in entry:
            return (entry["score"] if entry["score"] is not None else 6, p["index"])
        return ({"loss": 0, "invalid": 1, "tie": 2}.get(entry["verdict"], 3), p["index"])

    judged = [p for p in predictions if variant in (p.get("judge") or {})]
    return sorted((p for p in judged if rank(p)[0] < 3 or "score" in p["judge"][variant]), key=rank)


def _judged(rows: list[dict], columns: list[str]) -> list[str]:
    """The variants among `columns` the judge gave a verdict for in these rows."""
    return [v for v in columns if any(v in (p.get("judge") or {}) for p in rows)]


def _verdict(p: dict, variant: str) -> str | None:
    entry = (p.get("judge") or {}).get(variant)
    return judge.describe(entry) if entry else None


def top_confusions(confusion: dict) -> list[tuple[str, str, int]]:
    """(reference, predicted, count) for every wrong cell, most frequent first."""
    columns = confusion["labels"] + [INVALID]
    cells = [(ref, columns[j], n) for i, ref in enumerate(confusion["labels"])
             for j, n in enumerate(confusion["matrix"][i]) if n and j != i]
    return sorted(cells, key=lambda c: -c[2])


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def _clip(text: Any) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= CLIP else text[:CLIP] + "…"


def _sections(result: dict, predictions: list[dict]) -> dict[str, Any]:
    """Everything both renderers show, so the two files cannot disagree."""
    names = list(result["variants"])
    baseline, tuned = pick_variants(names)
    improved, regressed = flips(predictions, baseline, tuned) if baseline != tuned else ([], [])
    confusion = (result.get("confusion") or {}).get(tuned)
    main = result["main_metric"]
    return {
        "names": names, "baseline": baseline, "tuned": tuned, "main": main,
        "table": metric_table(result),
        "bars": [(v, result["variants"][v].get(main)) for v in names],
        "confusion": confusion,
        "confusions": top_confusions(confusion)[:SHOWN] if confusion else [],
        "improved": improved, "regressed": regressed,
        "worst": worst(predictions, tuned)[:SHOWN],
        "judge": result.get("judge"),
        "judge_worst": judge_worst(predictions, tuned)[:SHOWN],
    }


def _judge_note(s: dict) -> str:
    j = s["judge"]
    against = f", each answer against {j['baseline']}'s in both orders" if j.get("baseline") else ""
    return (f"{j['model']} at {j['url']}, mode {j['mode']}{against}, rubric: {j['rubric']}; "
            f"{j['requests']} requests, {j['failed_requests']} failed, {j['asked_again']} asked again "
            "after a reply that was not the JSON asked for")


def _judge_columns(s: dict) -> list[str]:
    """The worst-judged table shows the baseline's answer too in pairwise mode."""
    base = (s["judge"] or {}).get("baseline")
    return [base, s["tuned"]] if base and base != s["tuned"] else [s["tuned"]]


def _flip_sections(s: dict) -> list[tuple[str, list[dict]]]:
    base, tuned = s["baseline"], s["tuned"]
    return [(f"Improved: {tuned} better than {base}", s["improved"]),
            (f"Regressed: {tuned} worse than {base}", s["regressed"])]


# --- markdown ----------------------------------------------------------------------------------

def _md(text: Any) -> str:
    """Escaped for a markdown table cell: HTML escaped (renderers pass HTML through), | and newlines."""
    return html.escape(_clip(text)).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _md_examples(rows: list[dict], columns: list[str], scored: list[str]) -> list[str]:
    judged = _judged(rows, columns)
    head = ["#", *(f"{v} score" for v in scored), "input", "reference", *(f"{v} output" for v in columns),
            *(f"{v} judge" for v in judged)]
    lines = ["| " + " | ".join(_md(h) for h in head) + " |", "|" + "---|" * len(head)]
    for p in rows:
        cells = [str(p["index"]), *(_fmt(p["scores"].get(v)) for v in scored), _md(p["input"]), _md(p["reference"]),
                 *(_md(p["outputs"].get(v)) for v in columns), *(_md(_verdict(p, v) or "–") for v in judged)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def render_markdown(result: dict, predictions: list[dict]) -> str:
    s = _sections(result, predictions)
    base, tuned = s["baseline"], s["tuned"]
    lines = ["# Evaluation report", "",
             f"- task: {_md(result['task'])}, examples: {result['n']}, main metric: {_md(s['main'])}",
             f"- baseline: {_md(base)}, tuned: {_md(tuned)} (flips and worst examples compare these)",
             f"- texts longer than {CLIP} characters are shortened here; the predictions file has them whole",
             "", "## Metrics", "", "Best value per row in bold.", "",
             "| metric | " + " | ".join(_md(v) for v in s["names"]) + " |", "|---|" + "---:|" * len(s["names"])]
    for metric, values in s["table"]:
        best = best_of(metric, values)
        cells = [f"**{_fmt(values[v])}**" if v in best else _fmt(values[v]) for v in s["names"]]
        lines.append(f"| {_md(metric)} | " + " | ".join(cells) + " |")
    top = max([x for _, x in s["bars"] if _is_number(x)] + [1.0])
    lines += ["", f"## {_md(s['main'])} by variant", "", "```"]
    for name, value in s["bars"]:
        bar = "#" * int(round(40 * max(value or 0.0, 0.0) / top))
        lines.append(f"{_clip(name)[:24]:<24} {bar:<40} {_fmt(value)}")
    lines += ["```", ""]
    if s["confusion"]:
        labels = s["confusion"]["labels"]
        lines += [f"## Confusion matrix ({_md(tuned)})", "",
                  "Rows are the reference label, columns the prediction.", "",
                  "| reference \\ predicted | " + " | ".join(_md(c) for c in labels + [INVALID]) + " |",
                  "|---|" + "---:|" * (len(labels) + 1)]
        lines += [f"| {_md(label)} | " + " | ".join(map(str, row)) + " |"
                  for label, row in zip(labels, s["confusion"]["matrix"])]
        lines += ["", f"## Most frequent confusions ({_md(tuned)})", ""]
        if s["confusions"]:
            lines += ["| reference | predicted | n |", "|---|---|---:|"]
            lines += [f"| {_md(r)} | {_md(p)} | {n} |" for r, p, n in s["confusions"]]
        else:
            lines.append("None.")
        lines.append("")
    lines += ["## Flipped examples", ""]
    if base == tuned:
        lines += ["Only one variant: nothing to compare.", ""]
    else:
        for title, rows in _flip_sections(s):
            lines += [f"### {_md(title)} ({len(rows)}, first {min(len(rows), SHOWN)} shown)", ""]
            lines += _md_examples(rows[:SHOWN], [base, tuned], [base, tuned]) if rows else ["None.", ""]
    lines += [f"## Worst examples ({_md(tuned)})", ""]
    lines += _md_examples(s["worst"], [tuned], [tuned]) if s["worst"] else ["No examples.", ""]
    if s["judge"]:
        lines += ["## Judge", "", f"- {_md(_judge_note(s))}", "", f"### Judged worst ({_md(tuned)})", ""]
        lines += _md_examples(s["judge_worst"], _judge_columns(s), [tuned]) if s["judge_worst"] else ["None.", ""]
    return "\n".join(lines)


# --- html --------------------------------------------------------------------------------------

CSS = """
body { font: 15px/1.5 system-ui, sans-serif; color: #222; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; }
h1, h2, h3 { font-weight: 600; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6rem 0; }
th, td { border: 1px solid #ddd; padding: .25rem .55rem; vertical-align: top; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: 700; background: #e8f3e8; }
td.text { max-width: 26rem; white-space: pre-wrap; word-break: break-word; font-size: 13px; }
th { background: #f5f5f5; } .note { color: #666; }
"""


def _h(text: Any) -> str:
    return html.escape(_clip(text))


def _svg_bars(bars: list[tuple[str, float | None]]) -> str:
    top = max([x for _, x in bars if _is_number(x)] + [1.0])
    row, label_w, bar_w = 28, 180, 420
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 70}" height="{row * len(bars) + 10}" '
             'role="img" aria-label="main metric by variant">']
    for i, (name, value) in enumerate(bars):
        y = 5 + i * row
        width = bar_w * max(value or 0.0, 0.0) / top
        parts += [f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" font-size="13">'
                  f"{html.escape(name[:24])}</text>",
                  f'<rect x="{label_w}" y="{y + 3}" width="{width:.1f}" height="{row - 8}" fill="#4a78b5"/>',
                  f'<text x="{label_w + width + 6:.1f}" y="{y + 17}" font-size="13">{_fmt(value)}</text>']
    return "\n".join(parts + ["</svg>"])


def _html_confusion(confusion: dict) -> str:
    labels, matrix = confusion["labels"], confusion["matrix"]
    top = max([n for row in matrix for n in row] + [1])
    head = "".join(f"<th>{_h(c)}</th>" for c in labels + [INVALID])
    rows = []
    for i, (label, counts) in enumerate(zip(labels, matrix)):
        cells = []
        for j, n in enumerate(counts):
            shade = n / top  # darker = more examples; white text once the cell is dark
            style = f"background: rgba(74, 120, 181, {shade:.2f});" + (" color: #fff;" if shade > 0.55 else "")
            weight = " font-weight: 700;" if i == j else ""
            cells.append(f'<td class="num" style="{style}{weight}">{n}</td>')
        rows.append(f"<tr><th>{_h(label)}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th>reference \\ predicted</th>{head}</tr>\n" + "\n".join(rows) + "</table>"


def _html_examples(rows: list[dict], columns: list[str], scored: list[str]) -> str:
    if not rows:
        return "<p>None.</p>"
    judged = _judged(rows, columns)
    head = ["#", *(f"{v} score" for v in scored), "input", "reference", *(f"{v} output" for v in columns),
            *(f"{v} judge" for v in judged)]
    out = ["<table><tr>" + "".join(f"<th>{_h(h)}</th>" for h in head) + "</tr>"]
    for p in rows:
        texts = [p["input"], p["reference"], *(p["outputs"].get(v) for v in columns),
                 *(_verdict(p, v) or "–" for v in judged)]
        cells = [f'<td class="num">{p["index"]}</td>',
                 *(f'<td class="num">{_fmt(p["scores"].get(v))}</td>' for v in scored),
                 *(f'<td class="text">{_h(t)}</td>' for t in texts)]
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def render_html(result: dict, predictions: list[dict]) -> str:
    s = _sections(result, predictions)
    base, tuned = s["baseline"], s["tuned"]
    body = ["<h1>Evaluation report</h1>",
            f"<p>task: <b>{_h(result['task'])}</b>, examples: {result['n']}, main metric: <b>{_h(s['main'])}</b>; "
            f"baseline: <b>{_h(base)}</b>, tuned: <b>{_h(tuned)}</b>.</p>",
            f'<p class="note">Texts longer than {CLIP} characters are shortened here; '
            "the predictions file has them whole.</p>",
            '<h2 id="metrics">Metrics</h2><p class="note">Best value per row highlighted.</p>',
            "<table><tr><th>metric</th>" + "".join(f"<th>{_h(v)}</th>" for v in s["names"]) + "</tr>"]
    for metric, values in s["table"]:
        best = best_of(metric, values)
        body.append(f"<tr><th>{_h(metric)}</th>" + "".join(
            f'<td class="num{" best" if v in best else ""}">{_fmt(values[v])}</td>' for v in s["names"]) + "</tr>")
    body += ["</table>", f'<h2 id="chart">{_h(s["main"])} by variant</h2>', _svg_bars(s["bars"])]
    if s["confusion"]:
        body += [f'<h2 id="confusion">Confusion matrix ({_h(tuned)})</h2>',
                 '<p class="note">Rows are the reference label, columns the prediction; '
                 "darker cells hold more examples.</p>",
                 _html_confusion(s["confusion"]), f'<h2 id="confusions">Most frequent confusions ({_h(tuned)})</h2>']
        cells = "".join(f'<tr><td>{_h(r)}</td><td>{_h(p)}</td><td class="num">{n}</td></tr>'
                        for r, p, n in s["confusions"])
        body.append(f"<table><tr><th>reference</th><th>predicted</th><th>n</th></tr>{cells}</table>"
                    if s["confusions"] else "<p>None.</p>")
    body.append('<h2 id="flips">Flipped examples</h2>')
    if base == tuned:
        body.append("<p>Only one variant: nothing to compare.</p>")
    else:
        for title, rows in _flip_sections(s):
            body += [f"<h3>{_h(title)} ({len(rows)}, first {min(len(rows), SHOWN)} shown)</h3>",
                     _html_examples(rows[:SHOWN], [base, tuned], [base, tuned])]
    body += [f'<h2 id="worst">Worst examples ({_h(tuned)})</h2>', _html_examples(s["worst"], [tuned], [tuned])]
    if s["judge"]:
        body += ['<h2 id="judge">Judge</h2>', f'<p class="note">{html.escape(_judge_note(s))}</p>',
                 f"<h3>Judged worst ({_h(tuned)})</h3>", _html_examples(s["judge_worst"], _judge_columns(s), [tuned])]
    return ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>Evaluation report: {_h(result['task'])}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")  # written whole, then renamed: no half reports
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_reports(out: Path, result: dict, predictions: list[dict]) -> None:
    """Write `report.md` and `report.html` into the folder `out` (created if needed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "report.md", render_markdown(result, predictions))
    _write(out / "report.html", render_html(result, predictions))
