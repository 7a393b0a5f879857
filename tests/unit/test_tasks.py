"""One task detector for prepare and eval: the per-answer predicates, the decision on counts, a
clear task_mismatch for a --task that does not fit, and prepare and eval agreeing on real files."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tuneforge import tasks
from tuneforge.data.config import PrepareConfig
from tuneforge.data.prepare import prepare
from tuneforge.errors import TuneforgeError
from tuneforge.evaluate.config import EvalConfig
from tuneforge.evaluate.examples import load_examples


def chat(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("text, kind", [
    ("SELECT name FROM users", "query"),
    ("select * from t where a = 1;", "query"),
    ("```sql\nSELECT 1\n```", "query"),
    ("-- all of them\nSELECT * FROM users", "query"),
    ("WITH x AS (SELECT 1 AS a) SELECT a FROM x", "query"),
    ("VALUES (1, 2)", "query"),
    ("INSERT INTO users (name) VALUES ('ann')", "change"),
    ("UPDATE users SET name = 'bob' WHERE id = 2", "change"),
    ("DELETE FROM users WHERE id = 1", "change"),
    ("REPLACE INTO users VALUES (1, 'x')", "change"),
    ("WITH old AS (SELECT id FROM users) DELETE FROM users WHERE id IN old", "change"),
    ("Select the best plan for me.", None),  # prose that starts with a SQL word
    ("Update: the meeting moved to 3pm", None),
    ("With pleasure!", None),
    ("CREATE TABLE t (a INTEGER)", None),  # schema changes are generation
    ("DROP TABLE users", None),
    ("SELECT 1; SELECT 2", None),  # one statement per answer
    ("", None),
])
def test_sql_kind(text, kind):
    assert tasks.sql_kind(text) == kind
    assert tasks.is_sql(text) is (kind is not None)


@pytest.mark.parametrize("text, expected", [
    ('{"a": 1}', True), ('[{"a": 1}, {"a": 2}]', True), ("[]", True), ('```json\n[1, 2]\n```', True),
    ('"text"', False), ("42", False), ("{not json}", False), ("[1, 2", False), ("", False),
])
def test_json_output_is_an_object_or_an_array(text, expected):
    assert tasks.is_json_output(text) is expected


def test_decide_on_counts():
    assert tasks.decide(tasks.tally(["INSERT INTO t VALUES (1)", "UPDATE t SET a = 2"] * 3)) == "sql"
    assert tasks.decide(tasks.tally(['[{"name": "ann"}]', '[]', '{"a": 1}'])) == "extraction"
    assert tasks.decide(tasks.tally(["yes", "no", "yes", "no", "yes", "no"])) == "classification"
    assert tasks.decide(tasks.tally(["yes", "no", "maybe"])) == "generation"  # labels must repeat
    assert tasks.decide(tasks.tally(["Select the best plan.", "Update me later."] * 5)) == "classification"
    assert tasks.decide(tasks.tally([])) == "generation"


def test_the_shape_of_an_answer_beats_its_repetition():
    # a templated query repeated many times is still SQL
    assert tasks.decide(tasks.tally(["SELECT count(*) FROM t", "SELECT 1"] * 10)) == "sql"


def test_a_requested_task_that_does_not_fit_is_named():
    long = tasks.tally([f"a long free-form answer number {i} that goes on well past any label length"
                        for i in range(8)])
    with pytest.raises(TuneforgeError) as caught:
        tasks.resolve("classification", "chat", long)
    problem = caught.value.problems[0]
    assert (problem.code, problem.where) == ("task_mismatch", "--task")
    assert "short labels" in problem.message and "100% of 8 answers are longer" in problem.message

    unique = tasks.tally([f"answer {i}" for i in range(13)] + ["yes", "yes"])
    message = pytest.raises(TuneforgeError, tasks.resolve, "classification", "chat", unique).value.problems[0].message
    assert message.startswith("--task classification needs short repeated labels; 87% of answers are unique")

    prose = tasks.tally(["hello there"] * 5)
    assert "sql" in pytest.raises(TuneforgeError, tasks.resolve, "sql", "chat", prose).value.problems[0].message
    assert tasks.resolve("generation", "chat", prose) == "generation"
    assert tasks.resolve("classification", "chat", tasks.tally(["a", "b", "a", "b"])) == "classification"


def test_kinds_without_answers():
    empty = tasks.Tally()
    assert tasks.resolve("auto", "text", empty) == "pretraining"
    assert tasks.resolve("auto", "preference", empty) == "preference"
    assert tasks.resolve("pretraining", "chat", tasks.tally(["x"])) == "pretraining"
    for requested, kind in (("classification", "text"), ("generation", "preference"), ("preference", "chat")):
        with pytest.raises(TuneforgeError) as caught:
            tasks.resolve(requested, kind, empty)
        assert caught.value.problems[0].code == "task_mismatch"


def _prepare(tiny_model, folder: Path, rows: list, **kw) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    return prepare(PrepareConfig(inputs=[write_jsonl(folder / "in.jsonl", rows)], out=folder / "data",
                                 model=tiny_model, memorisation_check=False, **kw))


def test_prepare_and_eval_agree_on_changes_and_arrays(tiny_model, tmp_path):
    db = tmp_path / "users.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    changes = [chat(f"add user {i}", f"INSERT INTO users (name) VALUES ('user{i}')") for i in range(10)]
    changes += [chat(f"rename user {i}", f"UPDATE users SET name = 'n{i}' WHERE id = {i}") for i in range(10)]
    arrays = [chat(f"people in note {i}", json.dumps([{"name": f"p{i}"}, {"name": f"q{i}"}])) for i in range(20)]
    for name, rows, task in (("changes", changes, "sql"), ("arrays", arrays, "extraction")):
        report = _prepare(tiny_model, tmp_path / name, rows, split=(0.5, 0.0, 0.5))
        assert report["task"] == task
        # eval detects the same task from the references alone, and accepts every one of them
        test_file = tmp_path / name / "data" / "test.jsonl"
        assert load_examples(EvalConfig(data=test_file, sql_db=db)).task == task


def test_prepare_refuses_a_task_that_does_not_fit_instead_of_crashing(tiny_model, tmp_path):
    long = [chat(f"question {i}", f"a long answer number {i} that is certainly far longer than a short label")
            for i in range(12)]
    with pytest.raises(TuneforgeError) as caught:
        _prepare(tiny_model, tmp_path / "long", long, task="classification")
    assert caught.value.problems[0].code == "task_mismatch"
    texts = [{"text": f"document {i} " * 5} for i in range(6)]
    with pytest.raises(TuneforgeError) as caught:
        _prepare(tiny_model, tmp_path / "text", texts, task="classification")
    assert caught.value.problems[0].code == "task_mismatch"
    assert "text records" in caught.value.problems[0].message


def test_prepare_warns_about_answers_eval_would_refuse(tiny_model, tmp_path):
    rows = [chat(f"extract {i}", json.dumps({"n": i})) for i in range(19)] + [chat("extract none", "nothing here")]
    report = _prepare(tiny_model, tmp_path, rows)
    assert report["task"] == "extraction"
    assert any("1 of 20 answers are not a JSON object or array" in w for w in report["warnings"])
