"""The training stream over virtual shards (data/shards.py) on a small numbers corpus: the global
batch does not depend on the number of hosts (simulated, and one real two-process run on
127.0.0.1), resuming on the same or another host count continues with exactly the next batches,
token ids are tokenized once and again for a new tokenizer, and bad setups are clear errors."""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import input_pipeline as ip
from configs import default
from data import packing, shards, token_ids
from tests.conftest import REPO_ROOT
from tests.train_runner import free_port

BATCH = 8
EPOCH_BATCHES_AT_LEAST = 30  # the corpus below packs into more global batches than this


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    config = default.get_config()
    config.data.prepared_dir = str(tmp_path_factory.mktemp("prepared"))
    config.data.numbers_train_size = 800
    config.data.numbers_eval_size = 20
    config.data.numbers_test_size = 20
    config.data.vocab_size = 200
    config.data.max_length = 32
    config.data.prefetch_batches = 0
    config.data.virtual_shards = 4  # 2 rows per shard per batch: shards cross epochs apart
    config.batch_size = BATCH
    config.seed = 5
    return config


@pytest.fixture(scope="module")
def tokenizer(config, tmp_path_factory):
    return ip.get_tokenizer(config.data, str(tmp_path_factory.mktemp("workdir")))


def hosts(config, tokenizer, count):
    return [
        ip.train_iterator(config, tokenizer, process_index=p, process_count=count)
        for p in range(count)
    ]


def global_batches(iterators, n):
    """The next `n` global batches, each host's rows stacked in host order."""
    return [
        {k: np.concatenate([b[k] for b in step]) for k in ip.TRAIN_KEYS}
        for step in ([next(it) for it in iterators] for _ in range(n))
    ]


def digest(batch) -> str:
    return hashlib.sha256(b"".join(batch[k].tobytes() for k in ip.TRAIN_KEYS)).hexdigest()


def test_global_batches_are_identical_for_1_2_and_4_hosts(config, tokenizer):
    steps = EPOCH_BATCHES_AT_LEAST + 10  # into the second epoch
    reference = [digest(b) for b in global_batches(hosts(config, tokenizer, 1), steps)]
    assert len(set(reference)) == steps
    for count in (2, 4):
        batches = global_batches(hosts(config, tokenizer, count), steps)
        assert [digest(b) for b in batches] == reference, f"{count} hosts"


def test_one_virtual_shard_per_row_is_the_default(config, tokenizer):
    cfg = config.copy_and_resolve_references()
    cfg.data.virtual_shards = 0
    [one] = hosts(cfg, tokenizer, 1)
    assert one.get_state()["virtual_shards"] == BATCH
    eight = global_batches(hosts(cfg, tokenizer, 8), 3)
    assert [digest(b) for b in eight] == [digest(b) for b in global_batches([one], 3)]


def test_host_rows_are_disjoint_and_make_the_whole_epoch(config, tokenizer):
    """Over the batches before any shard enters epoch 1, no example appears more often than the
    split has it (within or across hosts; the numbers corpus repeats small numbers); by the
    batch where every shard has left epoch 0, every copy of every example that fits has."""
    ids = token_ids.training_token_ids(config.data, tokenizer)
    fitting = Counter(
        tuple(map(tuple, ids.example(i)))
        for i in range(ids.num_examples)
        if max(len(x) for x in ids.example(i)) <= config.data.max_length
    )
    iterators = hosts(config, tokenizer, 2)
    seen, repeats_before_epoch_1 = Counter(), 0
    while True:
        step = [next(it) for it in iterators]
        epochs = [e for it in iterators for e, _ in it.get_state()["shards"].values()]
        for batch in step:
            seen.update(unpack(batch))
        if max(epochs) == 0:
            repeats_before_epoch_1 = sum((seen - fitting).values())
        if min(epochs) == 1:
            break
    assert repeats_before_epoch_1 == 0
    assert set(seen) == set(fitting) and not fitting - seen


def unpack(batch):
    """(inputs, targets) tuples of every packed example, from the segment ids."""
    examples = []
    for row in range(batch["targets"].shape[0]):
        pair = []
        for side in ("inputs", "targets"):
            segments = batch[f"{side}_segment_ids"][row]
            tokens = batch[side][row]
            pair.append(
                [tuple(tokens[segments == s].tolist()) for s in range(1, segments.max() + 1)]
            )
        examples += list(zip(*pair, strict=True))
    return examples


@pytest.mark.parametrize(("saved_on", "resumed_on"), [(2, 2), (2, 4), (4, 1), (1, 2)])
def test_resume_on_the_same_or_another_host_count_continues_exactly(
    config, tokenizer, saved_on, resumed_on
):
    before = EPOCH_BATCHES_AT_LEAST - 3  # mid-epoch; the next batches cross into epoch 1
    iterators = hosts(config, tokenizer, saved_on)
    global_batches(iterators, before)
    states = [json.loads(json.dumps(it.get_state())) for it in iterators]
    expected = [digest(b) for b in global_batches(iterators, 10)]

    resumed = hosts(config, tokenizer, resumed_on)
    for index, it in enumerate(resumed):
        # What the checkpoint gives back: this host's own state, or every host's.
        it.set_state(states[index] if saved_on == resumed_on else states)
    assert [digest(b) for b in global_batches(resumed, 10)] == expected


def test_resume_with_prefetch_rewinds_the_thread(config, tokenizer):
    cfg = config.copy_and_resolve_references()
    cfg.data.prefetch_batches = 3
    [it] = hosts(cfg, tokenizer, 1)
    global_batches([it], 5)
    state = it.get_state()
    expected = [digest(b) for b in global_batches([it], 4)]
    it.set_state(state)
    assert [digest(b) for b in global_batches([it], 4)] == expected
    it.close()


def test_host_count_that_does_not_divide_the_shards_is_a_clear_error(config, tokenizer):
    cfg = config.copy_and_resolve_references()
    cfg.batch_size = 24  # divisible by 3 processes, but 3 does not divide 8 shards
    cfg.data.virtual_shards = 8
    with pytest.raises(ip.DataError, match=r"^3 processes cannot share .*run on 1, 2, 4, 8 proc"):
        ip.train_iterator(cfg, tokenizer, process_index=0, process_count=3)
    cfg.data.virtual_shards = 5
    with pytest.raises(ip.DataError, match="virtual_shards=5 must divide batch_size=24"):
        ip.train_iterator(cfg, tokenizer, process_index=0, process_count=1)


def test_resuming_with_other_shards_or_a_missing_host_is_a_clear_error(config, tokenizer):
    iterators = hosts(config, tokenizer, 2)
    states = [it.get_state() for it in iterators]
    cfg = config.copy_and_resolve_references()
    cfg.data.virtual_shards = 8
    [other] = hosts(cfg, tokenizer, 1)
    with pytest.raises(ip.DataError, match="saved with data.virtual_shards=4, now 8; set"):
        other.set_state(states)
    [one] = hosts(config, tokenizer, 1)
    with pytest.raises(ip.DataError, match=r"no entry for virtual shards \[0, 1\]"):
        one.set_state([states[1]])


def test_old_iterator_state_is_a_clear_warning_and_a_fresh_start(config, tokenizer, caplog):
    old_format = {  # what the grain-based iterator saved before virtual shards
        "grain": {"parent": {"next_index": 12}, "packing": [1, 2]},
        "seed": 5,
        "batch_size": BATCH,
        "max_length": 32,
        "pack": True,
        "train_examples": 800,
    }
    [it] = hosts(config, tokenizer, 1)
    with caplog.at_level(logging.WARNING):
        it.set_state(old_format)
        it.set_state([old_format, old_format])  # as read back on another process count
    assert "saved by the previous input pipeline" in caplog.text
    [fresh] = hosts(config, tokenizer, 1)
    assert digest(next(it)) == digest(next(fresh))


def test_token_ids_are_stored_once_and_again_for_a_new_tokenizer(config, tokenizer, tmp_path):
    folder = token_ids.prepare_token_ids(config.data, tokenizer, "train")
    info_time = (folder / token_ids.INFO_FILE).stat().st_mtime_ns
    assert token_ids.prepare_token_ids(config.data, tokenizer, "train") == folder
    assert (folder / token_ids.INFO_FILE).stat().st_mtime_ns == info_time  # not redone

    other_data = config.data.copy_and_resolve_references()
    other_data.vocab_size = 150
    other = ip.get_tokenizer(other_data, str(tmp_path / "other"))
    other_folder = token_ids.prepare_token_ids(config.data, other, "train")
    assert other_folder != folder and folder.is_dir()
    # The stored ids are exactly what each tokenizer makes of the text.
    pairs = ip.raw_examples(config.data, "train")
    for tok, ids in ((tokenizer, folder), (other, other_folder)):
        stored = token_ids.TokenIds.open(ids)
        for i in (0, 1, len(pairs) - 1):
            source, target = stored.example(i)
            assert source.tolist() == tok.encode(pairs[i][0])
            assert target.tolist() == tok.encode(pairs[i][1])
    batch = next(ip.train_iterator(config, other, process_index=0, process_count=1))
    reference = {(tuple(other.encode(s)), tuple(other.encode(t))) for s, t in pairs}
    assert set(unpack(batch)) <= reference


def test_losing_a_token_ids_race_keeps_the_winners_copy(config, tokenizer, tmp_path, monkeypatch):
    data = config.data.copy_and_resolve_references()
    data.prepared_dir = str(tmp_path)
    real_rename = os.rename

    def rival_finishes_first(built, final):
        if Path(final).parent.name == "token_ids":
            shutil.copytree(built, final)  # another process renamed its copy into place meanwhile
        real_rename(built, final)  # so this fails: the folder exists and is not empty

    ip.prepare(data)
    monkeypatch.setattr(token_ids.os, "rename", rival_finishes_first)
    folder = token_ids.prepare_token_ids(data, tokenizer, "train")
    monkeypatch.undo()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no scratch left
    assert token_ids.TokenIds.open(folder).num_examples == 800


def test_assemble_matches_a_row_by_row_reference(config, tokenizer):
    ids = token_ids.training_token_ids(config.data, tokenizer)
    rng = np.random.default_rng(0)
    examples = rng.choice(ids.num_examples, 40, replace=False)
    lengths = {s: ids.lengths[s][examples] for s in token_ids.SIDES}
    keep = np.maximum(lengths["inputs"], lengths["targets"]) <= 32
    examples = examples[keep]
    rows, num_rows = packing.pack_rows(
        ids.lengths["inputs"][examples], ids.lengths["targets"][examples], 32
    )
    order = np.argsort(rows, kind="stable")
    batch = packing.assemble(ids, examples[order], rows[order], num_rows, 32)
    for r in range(num_rows):
        members = examples[order][rows[order] == r]
        for side_index, side in enumerate(token_ids.SIDES):
            expected = np.zeros(32, np.int32)
            segments, positions = np.zeros(32, np.int32), np.zeros(32, np.int32)
            at = 0
            for s, example in enumerate(members, start=1):
                tokens = ids.example(example)[side_index]
                expected[at : at + len(tokens)] = tokens
                segments[at : at + len(tokens)] = s
                positions[at : at + len(tokens)] = np.arange(len(tokens))
                at += len(tokens)
            np.testing.assert_array_equal(batch[side][r], expected)
            np.testing.assert_array_equal(batch[f"{side}_segment_ids"][r], segments)
            np.testing.assert_array_equal(batch[f"{side}_positions"][r], positions)


def test_owned_shards_and_divisors():
    assert shards.owned_shards(8, 1, 4) == range(2, 4)
    assert shards.divisors(12) == [1, 2, 3, 4, 6, 12]


TWO_PROCESS_SCRIPT = """
import hashlib, json, sys
import jax, numpy as np
from jax.experimental import multihost_utils
port, pid, config_json, tokenizer_path, out = sys.argv[1:]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(pid))
import input_pipeline as ip
from configs import default
config = default.get_config()
config.update_from_flattened_dict(json.loads(config_json))
tokenizer = ip.Tokenizer.load(tokenizer_path)
it = ip.train_iterator(
    config, tokenizer, process_index=jax.process_index(), process_count=jax.process_count()
)
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
digests = []
for _ in range(12):
    batch = next(it)
    whole = {
        k: multihost_utils.process_allgather(
            jax.make_array_from_process_local_data(sharding, batch[k]), tiled=True
        )
        for k in ip.TRAIN_KEYS
    }
    digests.append(hashlib.sha256(b"".join(np.asarray(whole[k]).tobytes()
                                           for k in ip.TRAIN_KEYS)).hexdigest())
if jax.process_index() == 0:
    open(out, "w").write(json.dumps(digests))
"""


def test_two_real_processes_assemble_the_same_global_batches(config, tokenizer, tmp_path):
    [one] = hosts(config, tokenizer, 1)
    expected = [digest(b) for b in global_batches([one], 12)]
    tokenizer_path = tmp_path / "spm.model"
    tokenizer_path.write_bytes(tokenizer.to_bytes())
    overrides = json.dumps(
        {
            **{f"data.{k}": config.data[k] for k in ("prepared_dir", "vocab_size", "max_length")},
            **{f"data.{k}": config.data[k] for k in ("numbers_train_size", "virtual_shards")},
            "data.numbers_eval_size": 20,
            "data.numbers_test_size": 20,
            "data.prefetch_batches": 0,
            "batch_size": BATCH,
            "seed": config.seed,
        }
    )
    port, out = free_port(), tmp_path / "digests.json"
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESS_SCRIPT, str(port), str(i), overrides]
            + [str(tokenizer_path), str(out)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        logs = [p.communicate(timeout=180)[0] for p in processes]
    finally:
        for p in processes:
            p.kill()
    assert all(p.returncode == 0 for p in processes), "\n".join(log[-3000:] for log in logs)
    assert json.loads(out.read_text()) == expected


def test_checkpoint_hands_every_hosts_state_to_a_run_on_another_host_count(
    config, tokenizer, tmp_path
):
    """training/checkpointing.py's per-process JSON item, read back by this 1-process run from
    a checkpoint written by 2 processes, resumes the iterator exactly."""
    from etils import epath

    from training.checkpointing import ProcessJsonHandler

    iterators = hosts(config, tokenizer, 2)
    global_batches(iterators, 7)
    for index, it in enumerate(iterators):
        (tmp_path / f"process_{index}-of-2.json").write_text(json.dumps(it.get_state()))
    expected = [digest(b) for b in global_batches(iterators, 5)]
    restored = ProcessJsonHandler().restore(epath.Path(tmp_path))
    assert [len(s["shards"]) for s in restored] == [2, 2]
    [one] = hosts(config, tokenizer, 1)
    one.set_state(restored)
    assert [digest(b) for b in global_batches([one], 5)] == expected
    (tmp_path / "process_0-of-1.json").write_text(json.dumps(one.get_state()))
    assert ProcessJsonHandler().restore(epath.Path(tmp_path)) == one.get_state()
