"""Input pipeline on a small generated numbers corpus: the numbers themselves, the tokenizer, the
packed training stream (determinism, host slices, unpacking, resuming) and evaluation batches."""

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from num2words import num2words

import input_pipeline as ip
from configs import default
from data import numbers, statistics
from tests.conftest import REPO_ROOT

TRAIN_SIZE = 1500


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """The default config on a small numbers corpus, prepared once for this module."""
    config = default.get_config()
    config.data.prepared_dir = str(tmp_path_factory.mktemp("prepared"))
    config.data.numbers_train_size = TRAIN_SIZE
    config.data.numbers_eval_size = 70
    config.data.numbers_test_size = 60
    config.data.vocab_size = 200
    config.data.max_length = 32
    config.data.max_eval_length = 32
    config.batch_size = 8
    config.seed = 3
    return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("workdir")


@pytest.fixture(scope="module")
def tokenizer(config, workdir):
    return ip.get_tokenizer(config.data, str(workdir))


def encoded_split(config, tokenizer, split):
    """Brute-force reference: every (inputs, targets) pair of a split as token tuples."""
    return [
        (tuple(tokenizer.encode(s)), tuple(tokenizer.encode(t)))
        for s, t in ip.raw_examples(config.data, split)
    ]


def unpack(batch):
    """Splits packed rows back into (inputs, targets) token tuples, checking the packing metadata.

    In each row and side: segments 1..k in order, each contiguous, padding (segment 0, token 0,
    position 0) only after them; positions restart at 0 per segment; every segment ends with
    its only EOS; inputs and targets have the same segments.
    """
    examples = []
    for row in range(batch["targets"].shape[0]):
        sides = {}
        for side in ("inputs", "targets"):
            tokens = batch[side][row]
            segments = batch[f"{side}_segment_ids"][row]
            positions = batch[f"{side}_positions"][row]
            used = np.count_nonzero(segments)
            assert segments[0] == 1 and np.all(segments[used:] == 0)
            assert np.all(tokens[used:] == 0) and np.all(positions[used:] == 0)
            assert set(np.diff(segments[:used]).tolist()) <= {0, 1}
            sides[side] = []
            for segment in range(1, segments.max() + 1):
                ids = tokens[segments == segment]
                assert np.array_equal(positions[segments == segment], np.arange(len(ids)))
                assert ids[-1] == ip.EOS_ID and ip.EOS_ID not in ids[:-1] and 0 not in ids
                sides[side].append(tuple(int(i) for i in ids))
        assert len(sides["inputs"]) == len(sides["targets"])
        examples += list(zip(sides["inputs"], sides["targets"], strict=True))
    return examples


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ---------------------------------------------------------------- numbers corpus


# How split_numbers draws each split: tests/test_numbers.py.


def test_numbers_corpus_is_num2words_of_the_split_numbers(config):
    drawn = numbers.split_numbers(
        {"train": TRAIN_SIZE, "validation": 70, "test": 60}, config.data.numbers_max, 0
    )
    expected = [(num2words(int(n)), num2words(int(n), lang="de")) for n in drawn["test"]]
    assert ip.raw_examples(config.data, "test") == expected
    assert len(ip.raw_examples(config.data, "train")) == TRAIN_SIZE


def test_unknown_num2words_language_is_a_clear_error(config, tmp_path):
    data = config.data.copy_and_resolve_references()
    data.prepared_dir = str(tmp_path)
    data.target_lang = "xx"
    with pytest.raises(ip.DataError, match="num2words has no language 'xx'"):
        ip.prepare(data)
    assert not any(tmp_path.rglob("dataset_info.json"))


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_encode_decode_and_serialization(config, tokenizer, workdir):
    assert tokenizer.vocab_size == config.data.vocab_size
    for source, target in ip.raw_examples(config.data, "validation")[:20]:
        for text in (source, target):
            ids = tokenizer.encode(text)
            assert ids[-1] == ip.EOS_ID and ip.EOS_ID not in ids[:-1] and ip.PAD_ID not in ids
            assert tokenizer.decode(ids) == text
            # Decoding stops at the first EOS and skips padding.
            assert tokenizer.decode([0] + ids + [5, 6, ip.EOS_ID, 0, 0]) == text
            assert tokenizer.encode_batch([text]) == [ids]
    copy = ip.Tokenizer.from_bytes(tokenizer.to_bytes())
    loaded = ip.Tokenizer.load(workdir / "tokenizer" / "spm.model")
    text = "seven hundred and three"
    assert copy.encode(text) == loaded.encode(text) == tokenizer.encode(text)


def test_get_tokenizer_trains_on_process_0_only_and_calls_barrier(config, tmp_path):
    calls = []
    with pytest.raises(ip.DataError, match="shared by all processes"):
        ip.get_tokenizer(config.data, str(tmp_path), process_index=1, barrier=lambda: None)
    first = ip.get_tokenizer(config.data, str(tmp_path), barrier=lambda: calls.append(1))
    model_file = tmp_path / "tokenizer" / "spm.model"
    stamp = model_file.stat().st_mtime_ns
    other = ip.get_tokenizer(config.data, str(tmp_path), process_index=1)
    assert calls == [1] and model_file.stat().st_mtime_ns == stamp
    assert other.to_bytes() == first.to_bytes()
    data = config.data.copy_and_resolve_references()
    data.vocab_size = 300
    with pytest.raises(ip.DataError, match="has 200 pieces but data.vocab_size=300"):
        ip.get_tokenizer(data, str(tmp_path))


def test_vocabulary_too_large_is_a_clear_error(config, tmp_path):
    data = config.data.copy_and_resolve_references()
    data.vocab_size = 50_000
    with pytest.raises(ip.DataError, match="vocab_size=50000 is too large for this corpus"):
        ip.get_tokenizer(data, str(tmp_path))
    assert not (tmp_path / "tokenizer" / "spm.model").exists()


# ---------------------------------------------------------------- training stream


def test_train_batches_shapes_and_determinism(config, tokenizer):
    batches = take(ip.train_iterator(config, tokenizer, process_index=0, process_count=1), 4)
    for batch in batches:
        assert set(batch) == set(ip.TRAIN_KEYS)
        for value in batch.values():
            assert value.dtype == np.int32 and value.shape == (8, 32)
    again = take(ip.train_iterator(config, tokenizer, process_index=0, process_count=1), 4)
    assert_same_batches(batches, again)
    reseeded = config.copy_and_resolve_references()
    reseeded.seed = 4
    other = take(ip.train_iterator(reseeded, tokenizer, process_index=0, process_count=1), 1)
    assert not np.array_equal(other[0]["targets"], batches[0]["targets"])


@pytest.mark.parametrize("process_count", [2, 4])
def test_host_slices_are_disjoint_rows_of_the_global_batch(config, tokenizer, process_count):
    global_batches = take(ip.train_iterator(config, tokenizer, process_index=0, process_count=1), 3)
    per_host = [
        take(ip.train_iterator(config, tokenizer, process_index=p, process_count=process_count), 3)
        for p in range(process_count)
    ]
    for step, global_batch in enumerate(global_batches):
        for key in ip.TRAIN_KEYS:
            rows = [per_host[p][step][key] for p in range(process_count)]
            assert all(r.shape == (8 // process_count, 32) for r in rows)
            np.testing.assert_array_equal(np.concatenate(rows), global_batch[key])


def test_one_epoch_over_hosts_packs_every_fitting_example_once(config, tokenizer):
    reference = encoded_split(config, tokenizer, "train")
    lengths = np.array([max(len(s), len(t)) for s, t in reference])
    # The shortest rows that drop at most a fifth of the examples (and at least one).
    max_length = min(n for n in range(2, lengths.max()) if np.mean(lengths > n) <= 0.2)
    cfg = config.copy_and_resolve_references()
    cfg.data.max_length = max_length
    fitting = Counter(e for e in reference if max(len(e[0]), len(e[1])) <= max_length)
    assert 0 < len(reference) - sum(fitting.values()) <= len(reference) // 5

    hosts = [ip.train_iterator(cfg, tokenizer, process_index=p, process_count=2) for p in (0, 1)]
    seen, repeats_before_epoch_1 = Counter(), 0
    while True:  # until every virtual shard has finished epoch 0
        for host in hosts:
            seen.update(unpack(next(host)))
        epochs = [epoch for host in hosts for epoch, _ in host.get_state()["shards"].values()]
        if max(epochs) == 0:  # no shard has reached into epoch 1 yet: no extra copies
            repeats_before_epoch_1 = 1 + sum((seen - fitting).values())
        if min(epochs) == 1:
            break
    # The numbers corpus repeats small numbers: no example shows up more often than the split
    # has it, on one host or across both.
    assert repeats_before_epoch_1 == 1
    assert not fitting - seen, "every example that fits is seen in the first epoch"
    assert set(seen) <= set(fitting), "no example longer than max_length"


def test_unpacked_examples_are_real_pairs(config, tokenizer):
    reference = Counter(encoded_split(config, tokenizer, "train"))
    batches = take(ip.train_iterator(config, tokenizer, process_index=0, process_count=1), 5)
    examples = [e for batch in batches for e in unpack(batch)]
    assert len(examples) > 5 * 8  # several examples per row
    assert set(examples) <= set(reference)
    # Within the first epoch no example shows up more often than the split has it (the numbers
    # corpus repeats small numbers).
    assert not Counter(examples) - reference


def test_unpacked_rows_when_packing_is_off(config, tokenizer):
    cfg = config.copy_and_resolve_references()
    cfg.data.pack = False
    batch = next(ip.train_iterator(cfg, tokenizer, process_index=0, process_count=1))
    assert batch["targets_segment_ids"].max() == 1 and len(unpack(batch)) == 8


@pytest.mark.parametrize("prefetch", [0, 3])
def test_restored_state_continues_with_the_next_batch(config, tokenizer, prefetch):
    cfg = config.copy_and_resolve_references()
    cfg.data.prefetch_batches = prefetch
    iterator = ip.train_iterator(cfg, tokenizer, process_index=0, process_count=1)
    take(iterator, 3)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = take(iterator, 4)

    fresh = ip.train_iterator(cfg, tokenizer, process_index=0, process_count=1)
    fresh.set_state(state)
    assert_same_batches(take(fresh, 4), expected)
    iterator.set_state(state)  # rewinding the same (prefetching) iterator
    assert_same_batches(take(iterator, 4), expected)
    # A state saved by a 1-process run resumes a 2-process run on the same global batches.
    host1 = ip.train_iterator(cfg, tokenizer, process_index=1, process_count=2)
    host1.set_state(state)
    assert_same_batches(take(host1, 4), [{k: v[4:] for k, v in b.items()} for b in expected])
    for it in (iterator, fresh, host1):
        it.close()


def test_restoring_a_state_from_another_setup_is_a_clear_error(config, tokenizer):
    state = ip.train_iterator(config, tokenizer, process_index=0, process_count=1).get_state()
    cfg = config.copy_and_resolve_references()
    cfg.batch_size = 16
    iterator = ip.train_iterator(cfg, tokenizer, process_index=0, process_count=1)
    with pytest.raises(ip.DataError, match="batch_size: saved 8, now 16"):
        iterator.set_state(state)


def test_batch_size_must_split_over_processes(config, tokenizer):
    with pytest.raises(ip.DataError, match="not divisible by the 3 processes"):
        ip.train_iterator(config, tokenizer, process_index=0, process_count=3)
    with pytest.raises(ip.DataError, match="not divisible by the 3 processes"):
        ip.eval_batches(config, tokenizer, "test", batch_size=8, process_index=0, process_count=3)


# ---------------------------------------------------------------- evaluation batches


def test_eval_batches_hold_every_example_once_in_order(config, tokenizer):
    reference = encoded_split(config, tokenizer, "validation")  # 70 examples
    batches = ip.eval_batches(config, tokenizer, "validation", batch_size=16)
    assert len(batches) == 5
    inputs = np.concatenate([b["inputs"] for b in batches])
    targets = np.concatenate([b["targets"] for b in batches])
    assert inputs.shape == targets.shape == (80, 32) and inputs.dtype == np.int32
    for row, (source, target) in enumerate(reference):
        assert tuple(inputs[row][inputs[row] > 0]) == source
        assert tuple(targets[row][targets[row] > 0]) == target
    assert not inputs[70:].any() and not targets[70:].any()  # padding rows: all zero

    halves = [
        ip.eval_batches(
            config, tokenizer, "validation", batch_size=16, process_index=p, process_count=2
        )
        for p in (0, 1)
    ]
    for step, batch in enumerate(batches):
        for key in ("inputs", "targets"):
            np.testing.assert_array_equal(
                np.concatenate([halves[0][step][key], halves[1][step][key]]), batch[key]
            )


def test_eval_batches_truncate_long_examples_keeping_eos(config, tokenizer):
    cfg = config.copy_and_resolve_references()
    cfg.data.max_eval_length = 6
    reference = encoded_split(config, tokenizer, "test")
    batches = ip.eval_batches(cfg, tokenizer, "test", batch_size=64)
    inputs = np.concatenate([b["inputs"] for b in batches])
    assert inputs.shape == (64, 6)
    for row, (source, _) in enumerate(reference):
        expected = source if len(source) <= 6 else source[:5] + (ip.EOS_ID,)
        assert tuple(inputs[row][inputs[row] > 0]) == expected
    assert any(len(source) > 6 for source, _ in reference)


# ---------------------------------------------------------------- inspection CLI


def test_packing_efficiency_counts_real_tokens(config, tokenizer):
    reference = encoded_split(config, tokenizer, "train")
    stats = statistics.packing_efficiency(
        config, tokenizer, epoch_examples=len(reference), max_batches=10
    )
    batches = take(ip.train_iterator(config, tokenizer, process_index=0, process_count=1), 10)
    non_pad = sum(int(np.count_nonzero(b["targets"])) for b in batches) / (10 * 8 * 32)
    assert stats["non_pad_fraction"] == pytest.approx(non_pad, abs=1e-4)
    assert stats["packing_batches"] == 10


def test_cli_prints_a_json_summary(config, workdir):
    overrides = [
        f"--config.data.{field}={config.data[field]}"
        for field in (
            "prepared_dir",
            "numbers_train_size",
            "numbers_eval_size",
            "numbers_test_size",
            "vocab_size",
            "max_length",
        )
    ]
    result = subprocess.run(
        [sys.executable, "input_pipeline.py", "--config=configs/default.py", *overrides]
        + [f"--workdir={workdir}", "--json", "--max_packing_batches=5"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["train_examples"] == TRAIN_SIZE
    assert summary["vocab_size"] == 200 and summary["dropped_examples"] == 0
    assert 0 < summary["non_pad_fraction"] <= 1
    assert summary["eval_examples"] == 70 and summary["test_examples"] == 60
