"""Evaluate metrics against hand-computed values; SQL against a small temporary SQLite database."""

from __future__ import annotations

import sqlite3
import sys
import time

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.evaluate import metrics
from tuneforge.evaluate.general import load_general, score_general
from tuneforge.evaluate.metrics import (
    classification,
    example_score,
    extraction,
    generation,
    match_label,
    parse_json_object,
    rouge_l,
    sql,
)

LABELS = ["billing", "technical", "feature_request", "account", "account locked"]


# --- match_label -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("billing", "billing"),
    ("Billing.", "billing"),
    ("  TECHNICAL \n", "technical"),
    ('"feature request"', "feature_request"),
    ("Feature_Request.", "feature_request"),
    ("'account'", "account"),
    ("billing - the customer was charged twice", "billing"),
    ("Technical: the app crashes", "technical"),
    ("account locked, needs a reset", "account locked"),  # nested labels: the longest prefix wins
    ("account", "account"),
    ("accounting", None),  # a prefix must end at a word boundary
    ("The label is billing", None),
    ("", None),
    (None, None),
])
def test_match_label(text, expected):
    assert match_label(text, LABELS) == expected


def test_match_label_refuses_labels_that_differ_only_in_case():
    assert match_label("YES", ["Yes", "yes"]) is None
    assert match_label("yes", ["Yes", "yes"]) == "yes"  # the exact spelling still wins


def test_match_label_keeps_punctuation_that_is_part_of_a_label():
    assert match_label("C++", ["c", "c++"]) == "c++"
    assert match_label("c.", ["c", "c++"]) == "c"
    assert match_label("Yes", ["yes.", "no."]) == "yes."


# --- classification ----------------------------------------------------------------------------

def test_classification_three_classes_by_hand():
    refs = ["a", "a", "a", "b", "b", "c", "c", "c", "c", "a"]
    preds = ["a", "a", "b", "b", None, "c", "c", "a", "c", "a"]
    got = classification(preds, refs, ["a", "b", "c", "d"])
    # a: tp 3 of 4 predicted, 4 true; b: tp 1 of 2 predicted, 2 true; c: tp 3 of 3 predicted, 4 true
    assert got["accuracy"] == pytest.approx(0.7)
    assert got["invalid_rate"] == pytest.approx(0.1)
    assert got["per_class"]["a"] == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4})
    assert got["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert got["per_class"]["c"] == pytest.approx({"precision": 1.0, "recall": 0.75, "f1": 6 / 7, "support": 4})
    assert got["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # d is neither a reference nor a prediction: it is not averaged in
    assert got["macro_f1"] == pytest.approx((0.75 + 0.5 + 6 / 7) / 3)
    assert got["confusion"] == {"labels": ["a", "b", "c", "d"],
                                "matrix": [[3, 1, 0, 0, 0], [0, 1, 0, 0, 1], [1, 0, 3, 0, 0], [0, 0, 0, 0, 0]]}


def test_classification_counts_a_label_missing_from_the_label_list():
    got = classification(["x", "a"], ["a", "a"], ["a"])
    assert got["confusion"] == {"labels": ["a", "x"], "matrix": [[1, 1, 0], [0, 0, 0]]}
    assert got["per_class"]["x"]["precision"] == 0.0
    assert got["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)  # a: P 1, R 0.5; x: predicted, so averaged


def test_classification_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        classification(["a", "b"], ["a"], ["a", "b"])


# --- extraction --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ('{"a": 1}', {"a": 1}),
    ('  \n {"a": 1}\n ', {"a": 1}),
    ('```json\n{"a": 1}\n```', {"a": 1}),
    ('```JSON\n{"a": 1}\n```', {"a": 1}),
    ('```\n{"a": 1}\n```', {"a": 1}),
    ('  ```json {"a": 1} ```  ', {"a": 1}),
    ('```python\n{"a": 1}\n```', None),
    ("[1, 2]", None),
    ('"text"', None),
    ('The answer is {"a": 1}', None),
    ('{"a": 1', None),
    ("", None),
    (None, None),
])
def test_parse_json_object(text, expected):
    assert parse_json_object(text) == expected


EXTRACTION_REFS = ['{"name": "Ada Lovelace", "year": 1815}', '{"city": "Oslo", "country": "Norway"}',
                   '{"a": 1}', '{"x": "y", "z": "w"}']
EXTRACTION_PREDS = [
    '```json\n{"name": "  ada lovelace ", "year": 1815.0}\n```',  # exact after normalising
    '{"city": "Oslo", "country": "Sweden"}',  # one field of two, right keys
    'The answer is {"a": 1}',  # not JSON: predicts nothing
    '{"x": "Y", "extra": true}',  # one field right, wrong key set
]


def test_extraction_by_hand():
    got = extraction(EXTRACTION_PREDS, EXTRACTION_REFS)
    # pairs: tp 2+1+0+1 = 4, predicted 2+2+0+2 = 6, reference 2+2+1+2 = 7
    assert got == pytest.approx({"json_valid_rate": 0.75, "exact_match": 0.25, "field_precision": 4 / 6,
                                 "field_recall": 4 / 7, "field_f1": 8 / 13, "schema_compliance": 0.5})


def test_extraction_types_matter_but_number_formatting_does_not():
    got = extraction(['{"n": true}', '{"n": "1"}', '{"n": 1.0}', '{"n": {"k": [" A "]}}'],
                     ['{"n": 1}', '{"n": 1}', '{"n": 1}', '{"n": {"k": ["a"]}}'])
    assert got["exact_match"] == 0.5
    assert got["schema_compliance"] == 1.0


def test_extraction_of_lists_scores_each_item_as_a_field():
    refs = ['[{"name": "Ada"}, {"name": "Alan"}]', '[{"name": "Grace"}]', "[]", '{"a": 1}']
    preds = ['[{"name": "alan"}, {"name": "Ada"}, {"name": "Linus"}]',  # order free, one extra
             '{"name": "Grace"}',  # an object where a list is wanted: no field matches
             "[]",  # nothing to extract, nothing extracted
             '[{"a": 1}]']  # a list where an object is wanted
    got = extraction(preds, refs)
    # tp 2 + 0 + 0 + 0; predicted 3 + 1 + 0 + 1; reference 2 + 1 + 0 + 1
    assert got == pytest.approx({"json_valid_rate": 1.0, "exact_match": 0.25, "field_precision": 2 / 5,
                                 "field_recall": 2 / 4, "field_f1": 4 / 9, "schema_compliance": 0.5})
    assert example_score("extraction", "[]", "[]") == 1.0
    assert example_score("extraction", "{}", "[]") == 0.0
    assert example_score("extraction", '[{"name": "ada"}]', refs[0]) == pytest.approx(2 / 3)


def test_every_metric_function_returns_exactly_its_declared_names(db):
    from tuneforge.evaluate.run import ALL_METRICS

    found = {"classification": classification(["a", None], ["a", "b"], ["a", "b"]),
             "extraction": extraction(['{"a": 1}'], ['{"a": 1}']),
             "generation": generation(["a b"], ["a c"]),
             "sql": sql(["SELECT 1"], ["SELECT 1"], db)}
    assert set(found) == set(metrics.TASKS) == set(metrics.TASK_METRICS)
    for task, values in found.items():
        numbers = {k for k, v in values.items() if isinstance(v, float)}
        assert numbers == set(metrics.TASK_METRICS[task]), task
        assert numbers <= ALL_METRICS
    assert set(metrics.RUN_METRICS) | set(metrics.CONSTRAINED_METRICS) <= ALL_METRICS
    assert metrics.LOWER_IS_BETTER <= ALL_METRICS


def test_extraction_reports_references_that_are_not_json():
    with pytest.raises(TuneforgeError) as caught:
        extraction(['{"a": 1}', '{"a": 1}'], ['{"a": 1}', "not json"])
    assert [(p.code, p.where) for p in caught.value.problems] == [("invalid_reference", "test example 1")]


# --- generation --------------------------------------------------------------------------------

def test_rouge_l_by_hand():
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert rouge_l("a b c d", "a c") == pytest.approx(2 / 3)  # LCS 2: P 2/4, R 2/2
    assert rouge_l("d c b a", "a b c d") == pytest.approx(0.25)  # order matters: LCS 1
    assert rouge_l("Hello, WORLD!", "hello world") == 1.0
    assert rouge_l("", "") == 1.0
    assert rouge_l(None, "x") == 0.0


def test_generation_metrics():
    got = generation(["the cat sat on the mat", "Hello   World", "zzzz"], ["the cat is on the mat", "hello world", "zzzz"])
    assert got["rouge_l"] == pytest.approx((5 / 6 + 1 + 1) / 3)
    assert got["exact_match"] == pytest.approx(2 / 3)
    assert 0.0 < got["chrf"] < 1.0
    assert generation(["same text here"], ["same text here"])["chrf"] == pytest.approx(1.0)
    assert generation(["aaaa"], ["zzzz"])["chrf"] == 0.0


def test_generation_without_sacrebleu_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    monkeypatch.setitem(sys.modules, "sacrebleu.metrics", None)
    with pytest.raises(TuneforgeError) as caught:
        generation(["a"], ["a"])
    assert caught.value.problems[0].code == "missing_dependency"
    assert "pip install 'sacrebleu" in caught.value.problems[0].message


# --- sql ---------------------------------------------------------------------------------------

@pytest.fixture
def db(tmp_path):
    path = tmp_path / "shop.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, age INTEGER)")
    conn.executemany("INSERT INTO people (name, age) VALUES (?, ?)",
                     [("Ada", 36), ("Alan", 41), ("Grace", 85), ("Linus", 28), ("Ada", 20)])
    conn.commit()
    conn.close()
    return path


def test_sql_scores_each_kind_of_answer(db):
    refs = ["SELECT name FROM people WHERE age > 30",
            "SELECT name FROM people WHERE age > 30",
            "SELECT name FROM people ORDER BY age",
            "SELECT name FROM people ORDER BY age",
            "SELECT name FROM people",
            "SELECT count(*) FROM people"]
    preds = ["select name from people where age > 30 order by name desc;",  # same rows, other order
             "```sql\nSELECT name FROM people WHERE age >= 36;;\n```",  # fenced, trailing semicolons
             "SELECT name FROM people ORDER BY age DESC",  # the reference asks for an order
             "SELECT nope FROM people",  # does not run
             "SELECT DISTINCT name FROM people",  # rows are a multiset: one Ada is missing
             "SELECT 5"]
    got = sql(preds, refs, db)
    assert [e["correct"] for e in got["per_example"]] == [True, True, False, False, False, True]
    assert [e["executed"] for e in got["per_example"]] == [True, True, True, False, True, True]
    assert "no such column: nope" in got["per_example"][3]["error"]
    assert got["exec_rate"] == pytest.approx(5 / 6)
    assert got["exec_accuracy"] == pytest.approx(3 / 6)


def test_sql_stops_a_runaway_query(db):
    forever = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r"
    start = time.monotonic()
    got = sql([forever], ["SELECT 1"], db, timeout_s=0.2)
    assert time.monotonic() - start < 3
    assert got["per_example"] == [{"executed": False, "correct": False, "error": "interrupted"}]


def test_sql_cannot_change_or_escape_the_database(db, tmp_path):
    other = tmp_path / "other.db"
    preds = ["DELETE FROM people", f"ATTACH DATABASE '{other}' AS other", "", None, "SELECT 1; SELECT 2",
             "-- only a comment"]
    got = sql(preds, ["SELECT 1"] * len(preds), db)
    assert [e["executed"] for e in got["per_example"]] == [False] * len(preds)
    assert "readonly" in got["per_example"][0]["error"]
    assert not other.exists()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM people").fetchone() == (5,)


def rows_of(db):
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT * FROM people ORDER BY id").fetchall()


def test_sql_changes_compare_the_tables_they_leave(db):
    before = rows_of(db)
    insert = "INSERT INTO people (name, age) VALUES ('Bob', 50)"
    update = "UPDATE people SET age = age + 1 WHERE name = 'Ada'"
    refs = [insert, insert, insert, update, update, update, "DELETE FROM people WHERE age > 80",
            "SELECT count(*) FROM people"]
    preds = ["insert into people (age, name) values (50, 'Bob');",  # same rows, other column order
             "INSERT INTO people (name, age) VALUES ('Bob', 51)",  # wrong value
             "SELECT 'Bob', 50",  # a query where a change is wanted
             "UPDATE people SET age = age + 1 WHERE id IN (1, 5)",  # other SQL, same effect
             "UPDATE people SET age = age + 1 WHERE id = 1",  # one Ada missed
             "UPDATE nope SET x = 1",  # does not run
             "DELETE FROM people WHERE name = 'Grace'",  # same effect
             "SELECT 5"]
    got = sql(preds, refs, db)
    assert [e["correct"] for e in got["per_example"]] == [True, False, False, True, False, False, True, True]
    assert [e["executed"] for e in got["per_example"]] == [True, True, True, True, True, False, True, True]
    assert rows_of(db) == before  # every change ran on a scratch copy and was rolled back


def test_sql_changes_cannot_escape_the_scratch_copy(db, tmp_path):
    before = rows_of(db)
    preds = ["DROP TABLE people", "COMMIT", "PRAGMA journal_mode = OFF", f"ATTACH DATABASE '{tmp_path / 'x.db'}' AS x",
             "INSERT INTO people (name, age) VALUES ('Bob', 50)"]
    got = sql(preds, ["INSERT INTO people (name, age) VALUES ('Bob', 50)"] * len(preds), db)
    assert [e["correct"] for e in got["per_example"]] == [False, False, False, False, True]
    assert not (tmp_path / "x.db").exists()
    assert rows_of(db) == before


def test_sql_reference_change_that_fails_is_a_data_error(db):
    with pytest.raises(TuneforgeError) as caught:
        sql(["SELECT 1"], ["INSERT INTO nope VALUES (1)"], db)
    assert [(p.code, p.where) for p in caught.value.problems] == [("sql_reference_error", "test example 0")]


def test_sql_missing_or_unreadable_database(tmp_path):
    for path in (tmp_path / "missing.db", tmp_path):
        with pytest.raises(TuneforgeError) as caught:
            sql(["SELECT 1"], ["SELECT 1"], path)
        assert caught.value.problems[0].code == "sql_db_not_found"
    text = tmp_path / "notes.db"
    text.write_text("this is not a database, just some text " * 20)
    with pytest.raises(TuneforgeError) as caught:
        sql(["SELECT 1"], ["SELECT 1"], text)
    assert caught.value.problems[0].code == "sql_db_not_found"


def test_sql_reference_that_fails_is_a_data_error(db):
    with pytest.raises(TuneforgeError) as caught:
        sql(["SELECT 1", "SELECT 1"], ["SELECT 1", "SELECT missing FROM people"], db)
    assert [(p.code, p.where) for p in caught.value.problems] == [("sql_reference_error", "test example 1")]


# --- one example -------------------------------------------------------------------------------

def test_example_score_per_task(db):
    assert example_score("classification", "Billing.", "billing", labels=LABELS) == 1.0
    assert example_score("classification", "technical", "billing") == 0.0
    assert example_score("classification", None, "billing") == 0.0
    assert example_score("extraction", EXTRACTION_PREDS[0], EXTRACTION_REFS[0]) == 1.0
    assert example_score("extraction", EXTRACTION_PREDS[1], EXTRACTION_REFS[1]) == pytest.approx(0.5)
    assert example_score("extraction", EXTRACTION_PREDS[2], EXTRACTION_REFS[2]) == 0.0
    assert example_score("extraction", "{}", "{}") == 1.0
    assert example_score("extraction", "oops", "{}") == 0.0
    assert example_score("generation", "the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert example_score("sql", "SELECT age FROM people WHERE name = 'Grace'", "SELECT 85", db_path=db) == 1.0
    assert example_score("sql", "SELECT 84", "SELECT 85", db_path=db) == 0.0
    assert example_score("sql", "ignored", "ignored", correct=True) == 1.0


def test_example_score_unknown_task_lists_the_tasks():
    with pytest.raises(TuneforgeError) as caught:
        example_score("translation", "a", "b")
    assert caught.value.problems[0].code == "unknown_task"
    assert ", ".join(metrics.TASKS) in caught.value.problems[0].message


# --- general knowledge -------------------------------------------------------------------------

def test_general_set_is_well_formed():
    items = load_general()
    assert len(items) == 60
    assert len({item["question"] for item in items}) == 60
    assert all(item["answers"] and all(isinstance(a, str) and a for a in item["answers"]) for item in items)
    assert items[0] == {"question": "What is the capital city of France?", "answers": ["Paris"]}
    # every item accepts its own first answer
    assert all(score_general(item["answers"][0], item["answers"]) for item in items)


@pytest.mark.parametrize("pred, answers, expected", [
    ("Paris", ["Paris"], True),
    ("The capital of France is Paris.", ["Paris"], True),
    ("PARIS!", ["paris"], True),
    ("Parisian", ["Paris"], False),
    ("It is 14.", ["4"], False),
    ("Water freezes at 0°C.", ["0", "zero"], True),
    ("About 1,000 grams.", ["1000", "1,000"], True),
    ("It is Buenos   Aires", ["Buenos Aires"], True),
    ("Buenos", ["Buenos Aires"], False),
    ("Zürich", ["Zurich"], True),
    ("", ["Paris"], False),
    (None, ["Paris"], False),
])
def test_score_general(pred, answers, expected):
    assert score_general(pred, answers) is expected


def test_perplexity_of_a_confidently_wrong_model_is_capped_not_a_crash(tiny_model, tmp_path, monkeypatch):
    import json as _json

    from tuneforge.evaluate import engine
    from tuneforge.evaluate.config import EvalConfig
    from tuneforge.evaluate.run import evaluate

    data = tmp_path / "test.jsonl"
    data.write_text("".join(_json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                      {"role": "assistant", "content": "a"}]}) + "\n"
                            for i in range(3)))
    monkeypatch.setattr(engine, "answer_logprobs", lambda *a, **k: [(-1e6, 2)] * 3)
    result = evaluate(EvalConfig(data=data, model=tiny_model, baselines=["zero-shot"], out=tmp_path / "eval",
                                 latency_samples=0), progress=False)
    assert result["variants"]["base-zero-shot"]["perplexity"] > 1e300
