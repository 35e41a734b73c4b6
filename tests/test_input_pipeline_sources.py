"""Input pipeline sources: your own text files (and their errors), a prebuilt TFDS dataset, and
packing efficiency on the real Multi30k corpus."""

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import input_pipeline as ip
from configs import default, multi30k
from data import generated, sources, statistics, text_files
from tests.conftest import MULTI30K_DIR, REPO_ROOT

ENGLISH = ["A dog runs.", "Two cats sleep.", "", "A red car.", "The sun is hot.", "Birds fly."]
GERMAN = ["Ein Hund rennt.", "Zwei Katzen schlafen.", "Leer?", "Ein rotes Auto.", "", "Vögel."]


def write(path, lines, *, gz=False, raw: bytes | None = None):
    data = raw if raw is not None else "".join(line + "\n" for line in lines).encode()
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)


def text_config(tmp_path, corpus_dir):
    """Config reading SPLIT.{en,de} files from `corpus_dir` (splits train / val / test)."""
    config = default.get_config()
    data = config.data
    data.source = "text_files"
    data.dir = str(corpus_dir)
    data.prepared_dir = str(tmp_path / "prepared")
    data.eval_split, data.test_split = "val", "test"
    return config


@pytest.fixture
def corpus(tmp_path):
    """A tiny corpus: train as .gz (with two empty-sided pairs), val and test as plain text."""
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    write(corpus_dir / "train.en.gz", ENGLISH, gz=True)
    write(corpus_dir / "train.de.gz", GERMAN, gz=True)
    for split in ("val", "test"):
        write(corpus_dir / f"{split}.en", ["One.", "  Two.  "])
        write(corpus_dir / f"{split}.de", ["Eins.", "Zwei.\r"])
    return corpus_dir


def nothing_prepared(config) -> bool:
    """No prepared dataset and no leftover scratch folder under data.prepared_dir."""
    names = [name for _, dirs, files in os.walk(config.data.prepared_dir) for name in dirs + files]
    return not any(n == "dataset_info.json" or n.startswith(".prepare-") for n in names)


def test_text_files_in_file_order_empty_pairs_dropped_and_counted(tmp_path, corpus):
    config = text_config(tmp_path, corpus)
    expected = [(e, g) for e, g in zip(ENGLISH, GERMAN, strict=True) if e and g]
    assert ip.raw_examples(config.data, "train") == expected
    assert ip.raw_examples(config.data, "val") == [("One.", "Eins."), ("Two.", "Zwei.")]
    assert sources.line_counts(config.data)["train"] == {"lines": 6, "empty_dropped": 2}


def test_a_corpus_of_many_shards_keeps_file_order_and_every_pair(tmp_path, monkeypatch):
    """Shards are written from one pass over the files: 23 lines make 5 shards of up to 5
    pairs; the 5 empty pairs at the end leave 18 (5, 5, 5, 3 and an empty last shard)."""
    monkeypatch.setattr(text_files, "EXAMPLES_PER_SHARD", 5)
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    english = [f"sentence {i}." if i < 18 else "" for i in range(23)]
    german = [f"Satz {i}." for i in range(23)]
    write(corpus_dir / "train.en", english)
    write(corpus_dir / "train.de", german)
    for split in ("val", "test"):
        write(corpus_dir / f"{split}.en", ["One."])
        write(corpus_dir / f"{split}.de", ["Eins."])
    config = text_config(tmp_path, corpus_dir)
    expected = [(e, g) for e, g in zip(english, german, strict=True) if e]
    assert ip.raw_examples(config.data, "train") == expected
    prepared = Path(sources.builder(config.data).data_dir)
    train_files = list(prepared.glob("*-train.array_record-*"))
    assert len(train_files) == 5, train_files
    assert sources.line_counts(config.data)["train"] == {"lines": 23, "empty_dropped": 5}


def test_changed_file_is_prepared_again(tmp_path, corpus):
    config = text_config(tmp_path, corpus)
    assert ip.raw_examples(config.data, "val")[0] == ("One.", "Eins.")
    write(corpus / "val.de", ["Eins!", "Zwei!"])
    os.utime(corpus / "val.de", ns=(1, 1))  # a different modification time, whatever the clock
    assert ip.raw_examples(config.data, "val") == [("One.", "Eins!"), ("Two.", "Zwei!")]


def test_misaligned_files_name_both_files_and_counts(tmp_path, corpus):
    write(corpus / "val.de", ["Eins.", "Zwei.", "Drei."])
    config = text_config(tmp_path, corpus)
    with pytest.raises(ip.DataError) as error:
        ip.prepare(config.data)
    message = str(error.value)
    assert f"{corpus / 'val.en'} has 2 lines but {corpus / 'val.de'} has 3" in message
    assert "\n" not in message
    assert nothing_prepared(config)


def test_invalid_utf8_names_file_and_line(tmp_path, corpus):
    (corpus / "test.de").unlink()
    write(corpus / "test.de.gz", [], gz=True, raw=b"Eins.\nZw\xffei.\n")
    config = text_config(tmp_path, corpus)
    with pytest.raises(ip.DataError, match=r"test\.de\.gz:2: invalid UTF-8"):
        ip.prepare(config.data)
    assert nothing_prepared(config)


def test_missing_and_empty_files(tmp_path, corpus):
    config = text_config(tmp_path, corpus)
    (corpus / "test.de").unlink()
    with pytest.raises(ip.DataError, match="missing file: neither .*test.de nor .*test.de.gz"):
        ip.prepare(config.data)
    write(corpus / "test.de", [])
    with pytest.raises(ip.DataError, match="empty file: .*test.de"):
        ip.prepare(config.data)
    write(corpus / "test.de", ["", " "])
    write(corpus / "test.en", ["x", ""])
    with pytest.raises(ip.DataError, match="no non-empty pair"):
        ip.prepare(config.data)
    config.data.dir = str(tmp_path / "nowhere")
    with pytest.raises(ip.DataError, match="is not a directory"):
        ip.prepare(config.data)
    assert nothing_prepared(config)


def test_unknown_split_and_source(tmp_path, corpus):
    config = text_config(tmp_path, corpus)
    with pytest.raises(ip.DataError, match="split 'dev' does not exist .*test, train, val"):
        ip.raw_examples(config.data, "dev")
    config.data.source = "csv"
    with pytest.raises(
        ip.DataError,
        match=r"^data.source='csv' is unknown; known sources: numbers, text_files, tfds$",
    ):
        ip.prepare(config.data)


def test_cli_prints_bad_input_as_one_line(tmp_path, corpus):
    write(corpus / "val.de", ["Eins."])
    result = subprocess.run(
        [sys.executable, "input_pipeline.py", "--config=configs/default.py"]
        + ["--config.data.source=text_files", f"--config.data.dir={corpus}"]
        + ["--config.data.eval_split=val", "--config.data.test_split=test"]
        + [f"--config.data.prepared_dir={tmp_path / 'prepared'}", f"--workdir={tmp_path / 'w'}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: misaligned files: ")


def test_losing_a_prepare_race_keeps_the_winners_copy(tmp_path, corpus, monkeypatch):
    """Processes that prepare at once each build privately; whoever renames last finds the
    dataset already in place and discards its own copy."""
    config = text_config(tmp_path, corpus)
    real_rename = os.rename

    def rival_finishes_first(built, final):
        if ".prepare-" not in str(final):  # the last step (TFDS renames inside the scratch too)
            shutil.copytree(built, final)  # another process renamed its copy into place meanwhile
        real_rename(built, final)  # so this fails: the folder exists and is not empty

    monkeypatch.setattr(generated.os, "rename", rival_finishes_first)
    ip.prepare(config.data)
    monkeypatch.undo()
    [dataset_dir] = (tmp_path / "prepared" / "text_files_translation").iterdir()
    assert [p.name for p in dataset_dir.iterdir()] == ["1.0.0"]  # no scratch folder left
    assert len(ip.raw_examples(config.data, "train")) == 4


def test_tfds_source_reads_a_prebuilt_dataset_in_the_named_direction(tmp_path):
    # Build a small numbers corpus, then read it back as a prebuilt TFDS dataset by name.
    config = default.get_config()
    numbers_data = config.data
    numbers_data.prepared_dir = str(tmp_path)
    numbers_data.numbers_train_size, numbers_data.numbers_eval_size = 50, 5
    numbers_data.numbers_test_size = 5
    expected = ip.raw_examples(numbers_data, "test")
    [config_dir] = (tmp_path / "numbers_translation").iterdir()

    tfds_data = numbers_data.copy_and_resolve_references()
    tfds_data.source = "tfds"
    tfds_data.tfds_name = f"numbers_translation/{config_dir.name}"
    tfds_data.tfds_data_dir = str(tmp_path)
    assert ip.raw_examples(tfds_data, "test") == expected
    tfds_data.source_lang, tfds_data.target_lang = "de", "en"
    assert ip.raw_examples(tfds_data, "test") == [(t, s) for s, t in expected]

    tfds_data.target_lang = "fr"
    with pytest.raises(ip.DataError, match="has no language 'fr' \\(it has de, en\\)"):
        ip.prepare(tfds_data)
    tfds_data.tfds_name = "wmt14_translate/de-en"
    with pytest.raises(ip.DataError, match="tfds build wmt14_translate/de-en"):
        ip.prepare(tfds_data)


@pytest.mark.skipif(
    not MULTI30K_DIR.is_dir(), reason=f"Multi30k not found at {MULTI30K_DIR} (see SOURCE.md)"
)
@pytest.mark.parametrize("max_length", [64, 128])
def test_multi30k_packing_efficiency(tmp_path_factory, max_length):
    shared = tmp_path_factory.getbasetemp() / "multi30k"  # one preparation for both lengths
    config = multi30k.get_config()
    config.data.dir = str(MULTI30K_DIR)
    config.data.prepared_dir = str(shared / "prepared")
    config.data.max_length = max_length
    config.batch_size = 32 if max_length == 128 else 64
    tokenizer = ip.get_tokenizer(config.data, str(shared / "workdir"))
    stats = statistics.packing_efficiency(config, tokenizer, epoch_examples=29_000, max_batches=25)
    assert stats["non_pad_fraction"] >= 0.90, stats
