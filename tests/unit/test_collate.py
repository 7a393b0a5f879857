"""Loss masks, packed and padded batches, epoch order, and proof on the tiny model that a packed
row computes exactly what each of its examples computes alone."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tuneforge.train.collate import (IGNORE, MIN_SHARED_PREFIX, Encoder, Example, epoch_order, needed_length,
                                     packed_batch, padded_batch, shared_prefix_length, targets)

SYSTEM = {"role": "system", "content": "Classify the ticket."}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str, **extra) -> dict:
    return {"role": "assistant", "content": text, **extra}


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def trained_spans(tokenizer, example: Example) -> list[str]:
    """Decoded text of each run of consecutive labelled tokens."""
    spans, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return [tokenizer.decode(ids) for ids in spans]


# ---------------------------------------------------------------- Encoder


def test_only_assistant_content_and_end_of_turn_are_trained(tokenizer):
    enc = Encoder(tokenizer, 512)
    example = enc.chat([SYSTEM, user("How do I reset my password?"), assistant("account"),
                        user("Thank you for your help!"), assistant("other")])
    assert trained_spans(tokenizer, example) == ["account<|im_end|>", "other<|im_end|>"]
    assert example.input_ids == tokenizer(enc.render([SYSTEM, user("How do I reset my password?"),
                                                       assistant("account"), user("Thank you for your help!"),
                                                       assistant("other")]), add_special_tokens=False)["input_ids"]
    assert (enc.stats.examples, enc.stats.truncated, enc.stats.dropped_no_target) == (1, 0, 0)


def test_weight_zero_turns_are_not_trained(tokenizer):
    enc = Encoder(tokenizer, 512)
    example = enc.chat([user("The app crashes."), assistant("technical", weight=0),
                        user("I was charged twice."), assistant("billing", weight=1)])
    assert trained_spans(tokenizer, example) == ["billing<|im_end|>"]


def test_train_on_inputs_trains_every_token(tokenizer):
    enc = Encoder(tokenizer, 512, train_on_inputs=True)
    example = enc.chat([SYSTEM, user("How do I reset my password?"), assistant("account", weight=0)])
    assert example.labels == example.input_ids
    assert tokenizer.decode(example.labels) == enc.render([SYSTEM, user("How do I reset my password?"),
                                                           assistant("account")])


def test_truncation_keeps_the_start_and_is_counted(tokenizer):
    messages = [user("Hi"), assistant("account"), user("The quick brown fox jumps over the lazy dog. " * 4),
                assistant("other")]
    full = Encoder(tokenizer, 512).chat(messages)
    first_answer_end = len(tokenizer(Encoder(tokenizer, 512).render(messages[:2]), add_special_tokens=False)
                           ["input_ids"])
    enc = Encoder(tokenizer, first_answer_end + 5)
    example = enc.chat(messages)
    assert len(example) == first_answer_end + 5 < len(full)
    assert example.input_ids == full.input_ids[: len(example)]
    assert trained_spans(tokenizer, example) == ["account<|im_end|>"]
    assert (enc.stats.examples, enc.stats.truncated, enc.stats.dropped_no_target) == (1, 1, 0)


def test_records_without_a_trained_token_are_dropped_and_counted(tokenizer):
    enc = Encoder(tokenizer, 512)
    assert enc.chat([user("Hello"), assistant("other", weight=0)]) is None
    # truncation that cuts off the only answer drops the record too, and counts as both
    short = Encoder(tokenizer, 8)
    assert short.chat([user("The quick brown fox jumps over the lazy dog."), assistant("other")]) is None
    assert (enc.stats.examples, enc.stats.dropped_no_target) == (0, 1)
    assert (short.stats.examples, short.stats.truncated, short.stats.dropped_no_target) == (0, 1, 1)


def test_preference_pairs_train_only_their_answer(tokenizer):
    enc = Encoder(tokenizer, 512)
    chosen, rejected = enc.preference({"messages": [user("How do I reset my password?")],
                                       "chosen": "Use the reset link.", "rejected": "No."})
    assert trained_spans(tokenizer, chosen) == ["Use the reset link.<|im_end|>"]
    assert trained_spans(tokenizer, rejected) == ["No.<|im_end|>"]


def test_texts_are_cut_into_chunks_ending_with_eos(tokenizer):
    enc = Encoder(tokenizer, 10)
    text = "The quick brown fox jumps over the lazy dog. Thank you for your help!"
    chunks = enc.texts(text)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert [t for c in chunks for t in c.input_ids] == ids[: sum(len(c) for c in chunks)]
    assert all(len(c) <= 10 and c.labels == c.input_ids for c in chunks)
    assert len(ids) % 10 == 1 or chunks[-1].input_ids[-1] == tokenizer.eos_token_id


# ---------------------------------------------------------------- batches


def examples_of(lengths: list[int], masked_prefix: int = 2) -> list[Example]:
    """Examples with distinct ids; the first `masked_prefix` labels of each are IGNORE."""
    out, next_id = [], 10
    for n in lengths:
        ids = list(range(next_id, next_id + n))
        next_id += n
        out.append(Example(ids, [IGNORE] * masked_prefix + ids[masked_prefix:]))
    return out


def test_packed_batch_restarts_positions_and_never_targets_across_examples():
    examples = examples_of([5, 3, 7])
    batch = packed_batch(examples)
    # each example's last token predicts nothing, so the row stops before it
    assert batch.input_ids.tolist() == [[t for ex in examples for t in ex.input_ids[:-1]]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 0, 1, 2, 3, 4, 5]]
    assert batch.cu_seq_lens.tolist() == [0, 4, 6, 12]
    assert batch.segment.tolist() == [[0] * 4 + [1] * 2 + [2] * 6]
    assert batch.attention_mask is None
    ids, tgt, seg = batch.input_ids[0].tolist(), batch.targets[0].tolist(), batch.segment[0].tolist()
    for a, b in zip(batch.cu_seq_lens[:-1].tolist(), batch.cu_seq_lens[1:].tolist()):
        assert tgt[b - 1] == examples[seg[a]].input_ids[-1]  # the row's last position predicts the last token
    for t, target in enumerate(tgt[:-1]):
        if target != IGNORE and seg[t + 1] == seg[t]:
            assert target == ids[t + 1]  # next token, same example
    assert tgt == [t for ex in examples for t in targets(ex)[:-1]]
    # tokens are counted over the whole examples: a rate over the data, as with padding
    assert batch.real_tokens == 15
    assert batch.target_tokens == sum(len(ex) - 2 for ex in examples) == int(batch.keep().sum())


def test_packed_rows_stop_at_the_last_trained_token():
    trained_middle = Example([1, 2, 3, 4, 5, 6], [IGNORE, IGNORE, 3, 4, IGNORE, IGNORE])
    assert needed_length(trained_middle) == 3  # position 3 predicts token 4, the last trained one
    batch = packed_batch([trained_middle, *examples_of([4])])
    assert batch.input_ids.tolist() == [[1, 2, 3, 10, 11, 12]]
    assert batch.targets.tolist() == [[IGNORE, 3, 4, IGNORE, 12, 13]]
    assert batch.target_tokens == 4 and batch.real_tokens == 10


def with_prefix(prefix: list[int], tails: list[list[int]], trained_from: int = 1) -> list[Example]:
    """Examples that start with `prefix`; each tail's tokens from `trained_from` on are trained."""
    out = []
    for tail in tails:
        ids = prefix + tail
        out.append(Example(ids, [IGNORE] * (len(prefix) + trained_from) + tail[trained_from:]))
    return out


def test_shared_prefix_is_the_common_untrained_start():
    prefix = list(range(100, 112))
    examples = with_prefix(prefix, [[1, 2, 3], [4, 5], [6, 7, 8, 9]])
    # the prefix's last position predicts each example's own first token, which is untrained here
    assert shared_prefix_length(examples) == 12
    # a trained first tail token: the last prefix position carries a loss, so it stays with the examples
    assert shared_prefix_length(with_prefix(prefix, [[1, 2, 3], [4, 5]], trained_from=0)) == 11
    # stops at the first token that differs
    differing = [Example(prefix + [1, 2], [IGNORE] * 14), Example(prefix[:10] + [0, 0, 3, 4], [IGNORE] * 14)]
    differing = [Example(ex.input_ids, [IGNORE] * (len(ex) - 1) + [ex.input_ids[-1]]) for ex in differing]
    assert shared_prefix_length(differing) == 10
    # nothing to share with, too short, or everything trained (train_on_inputs): no prefix
    assert shared_prefix_length(examples[:1]) == 0
    short = with_prefix(prefix[:MIN_SHARED_PREFIX - 1], [[1, 2], [3, 4]])
    assert shared_prefix_length(short) == 0
    assert shared_prefix_length([Example(ex.input_ids, list(ex.input_ids)) for ex in examples]) == 0
    # every example keeps at least one token of its own
    assert shared_prefix_length(with_prefix(prefix, [[], [1, 2]])) == 11


def test_packed_batch_with_a_shared_prefix_holds_it_once():
    prefix = list(range(100, 110))
    examples = with_prefix(prefix, [[1, 2, 3], [4, 5]])
    batch = packed_batch(examples, share_prefix=True)
    assert batch.prefix_len == 10
    assert batch.input_ids.tolist() == [prefix + [1, 2, 4]]  # each example's last token predicts nothing
    assert batch.position_ids.tolist() == [list(range(10)) + [10, 11, 10]]
    assert batch.cu_seq_lens.tolist() == [0, 10, 12, 13]
    assert batch.targets.tolist() == [[IGNORE] * 10 + [2, 3, 5]]
    assert batch.segment.tolist() == [[0] * 10 + [0, 0, 1]]
    # the same trained tokens as without sharing, and tokens counted over the whole examples
    plain = packed_batch(examples)
    assert batch.target_tokens == plain.target_tokens and batch.real_tokens == plain.real_tokens == 25
    assert plain.prefix_len == 0


def test_padded_batch_right_pads_with_a_mask():
    examples = examples_of([5, 2, 4], masked_prefix=1)
    batch = padded_batch(examples, pad_id=0)
    assert batch.input_ids.shape == (3, 5) and batch.position_ids is None and batch.cu_seq_lens is None
    for j, ex in enumerate(examples):
        n = len(ex)
        assert batch.input_ids[j].tolist() == ex.input_ids + [0] * (5 - n)
        assert batch.attention_mask[j].tolist() == [1] * n + [0] * (5 - n)
        assert batch.targets[j].tolist() == targets(ex) + [IGNORE] * (5 - n)
        assert batch.segment[j].tolist() == [j] * 5
    assert batch.real_tokens == 11
    assert batch.target_tokens == sum(len(ex) - 1 for ex in examples) == int(batch.keep().sum())


# ---------------------------------------------------------------- epoch order


@pytest.mark.parametrize("group", [False, True])
def test_epoch_order_is_a_deterministic_permutation_per_seed_and_epoch(group):
    lengths = np.random.default_rng(1).integers(1, 1000, size=103).tolist()
    order = epoch_order(lengths, 8, seed=0, epoch=0, group_by_length=group)
    flat = [i for batch in order for i in batch]
    assert sorted(flat) == list(range(103))
    assert len(order) == 13 and all(1 <= len(b) <= 8 for b in order)
    assert order == epoch_order(lengths, 8, seed=0, epoch=0, group_by_length=group)
    assert order != epoch_order(lengths, 8, seed=0, epoch=1, group_by_length=group)
    assert order != epoch_order(lengths, 8, seed=1, epoch=0, group_by_length=group)


def test_group_by_length_keeps_batches_narrow_but_shuffled():
    lengths = np.random.default_rng(2).integers(1, 1000, size=1000).tolist()

    def spread(order):
        return float(np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in order]))

    grouped = epoch_order(lengths, 8, seed=0, epoch=0, group_by_length=True)
    plain = epoch_order(lengths, 8, seed=0, epoch=0, group_by_length=False)
    assert spread(grouped) < 0.1 * spread(plain)
    means = [np.mean([lengths[i] for i in b]) for b in grouped]
    assert means != sorted(means) and means != sorted(means, reverse=True)  # batches still come in random order


# ---------------------------------------------------------------- packing is exact on a real model


@pytest.fixture(scope="module")
def chats(tokenizer) -> list[Example]:
    enc = Encoder(tokenizer, 512)
    pairs = [("How do I reset my password?", "account"),
             ("The app crashes when I open the camera view. Please add a dark mode.", "technical"),
             ("I was charged twice for my subscription this month.", "billing refund invoice")]
    examples = [enc.chat([SYSTEM, user(u), assistant(a)]) for u, a in pairs]
    assert len({len(ex) for ex in examples}) == 3
    return examples


def load_model(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()


def target_logps(logits: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    keep = tgt != IGNORE
    return torch.log_softmax(logits.float(), dim=-1)[keep].gather(-1, tgt[keep][:, None])[:, 0]


@torch.no_grad()
def alone(model, examples: list[Example]) -> torch.Tensor:
    """Log-prob of every target token, each example run as its own sequence."""
    return torch.cat([target_logps(model(input_ids=torch.tensor([ex.input_ids]), use_cache=False).logits[0],
                                   torch.tensor(targets(ex))) for ex in examples])


@torch.no_grad()
def packed(model, examples: list[Example], **extra) -> torch.Tensor:
    batch = packed_batch(examples)
    logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, **extra).logits
    return target_logps(logits[0], batch.targets[0])


def test_packed_row_matches_each_example_alone(tiny_model, chats):
    model = load_model(tiny_model)
    expected = alone(model, chats)
    assert expected.numel() == sum(int((torch.tensor(targets(ex)) != IGNORE).sum()) for ex in chats)
    torch.testing.assert_close(packed(model, chats), expected, atol=1e-4, rtol=0)
    # the check has teeth: the same row with one causal mask over everything differs
    batch = packed_batch(chats)
    with torch.no_grad():
        mixed = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                      attention_mask=torch.ones_like(batch.input_ids), use_cache=False).logits[0]
    assert (target_logps(mixed, batch.targets[0]) - expected).abs().max() > 1e-3


# the attention runs the segments one call each, or padded side by side in one call
PATHS = pytest.mark.parametrize("pad_cost", [0.0, 1e9], ids=["one_by_one", "side_by_side"])


@PATHS
def test_packed_attention_matches_each_example_alone(tiny_model, chats, pad_cost, monkeypatch):
    from tuneforge.train import attention
    from tuneforge.train.attention import NAME, use_packed_attention

    monkeypatch.setattr(attention, "PAD_COST", pad_cost)
    model = load_model(tiny_model)
    expected = alone(model, chats)
    use_packed_attention(model)
    assert model.config._attn_implementation == NAME
    batch = packed_batch(chats)
    torch.testing.assert_close(packed(model, chats, cu_seq_lens_q=batch.cu_seq_lens), expected, atol=1e-4, rtol=0)
    # and the boundaries are what keeps examples apart: one segment over the whole row differs
    whole = torch.tensor([0, batch.input_ids.shape[1]])
    assert (packed(model, chats, cu_seq_lens_q=whole) - expected).abs().max() > 1e-3


def test_training_loop_log_probs_match_for_packed_and_padded_batches(tiny_model, tokenizer, chats):
    """loop.token_logps (what training and eval use) agrees with the per-example reference."""
    from tuneforge.train.attention import use_packed_attention
    from tuneforge.train.loop import token_logps

    plan = SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu")), virtual_tokens=0, bf16=False)
    model = load_model(tiny_model)
    expected = alone(model, chats)
    with torch.no_grad():
        padded_logps, _, padded_segment = token_logps(plan, model, padded_batch(chats, tokenizer.pad_token_id))
        use_packed_attention(model)
        packed_logps, _, packed_segment = token_logps(plan, model, packed_batch(chats))
    torch.testing.assert_close(padded_logps, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(packed_logps, expected, atol=1e-4, rtol=0)
    assert padded_segment.tolist() == packed_segment.tolist()


@PATHS
def test_shared_prefix_rows_compute_what_each_example_computes_alone(tiny_model, chats, pad_cost, monkeypatch):
    from tuneforge.train import attention
    from tuneforge.train.attention import use_packed_attention
    from tuneforge.train.loop import token_logps

    monkeypatch.setattr(attention, "PAD_COST", pad_cost)
    plan = SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu")), virtual_tokens=0, bf16=False)
    model = load_model(tiny_model)
    expected = alone(model, chats)
    use_packed_attention(model)
    batch = packed_batch(chats, share_prefix=True)
    assert batch.prefix_len >= MIN_SHARED_PREFIX  # the system prompt and the user turn's opening
    with torch.no_grad():
        logps, _, segment = token_logps(plan, model, batch)
    torch.testing.assert_close(logps, expected, atol=1e-4, rtol=0)
    assert segment.tolist() == token_logps(plan, model, packed_batch(chats))[2].tolist()


@PATHS
def test_shared_prefix_rows_give_the_same_gradients(tiny_model, chats, pad_cost, monkeypatch):
    """The prefix is computed once but feeds every example: its gradient is the sum over
    them. The reference is each example's own attention call, without sharing."""
    from tuneforge.train import attention
    from tuneforge.train.attention import use_packed_attention
    from tuneforge.train.loop import token_logps

    plan = SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu")), virtual_tokens=0, bf16=False)
    model = load_model(tiny_model).train()
    use_packed_attention(model)
    grads = []
    for share, cost in ((False, 0.0), (False, pad_cost), (True, pad_cost)):
        monkeypatch.setattr(attention, "PAD_COST", cost)
        model.zero_grad()
        logps, _, _ = token_logps(plan, model, packed_batch(chats, share_prefix=share))
        (-logps.mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() == grads[2].keys() and len(grads[0]) > 10
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
        torch.testing.assert_close(grads[2][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    # attention layers below the top get gradient through the prefix too
    assert grads[2]["model.layers.0.self_attn.k_proj.weight"].abs().sum() > 0


def test_segments_go_side_by_side_only_where_padding_costs_little():
    from tuneforge.train.attention import _pads_little

    assert _pads_little([(0, 20), (20, 42), (42, 60)], prefix=30)  # short queries of similar length
    assert not _pads_little([(0, 20), (20, 40), (40, 900)], prefix=0)  # one long example would pad the rest
    assert not _pads_little([(0, 20)], prefix=30)  # a single segment: nothing to batch
