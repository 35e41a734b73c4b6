"""Tokenize once: a split stored as token ids on disk, keyed to the corpus and the tokenizer.

`prepare_token_ids(data_config, tokenizer, split)` tokenizes the split the first time and
returns the folder; `TokenIds.open(folder)` memory-maps it. The folder is

    data.prepared_dir/token_ids/SPLIT-CORPUS_KEY-TOKENIZER_KEY/

where CORPUS_KEY hashes the prepared dataset's folder (it changes with the data: a changed text
file is prepared into a new folder) and TOKENIZER_KEY hashes the serialized sentencepiece
model, so a new tokenizer gets new ids and an old folder is never read with the wrong one.
Old folders are left in place (another run may still use them).

Files (N examples, ids with EOS appended; uint16 when the vocabulary fits, else int32):
  inputs.bin, targets.bin           all ids of the split, example after example
  inputs_lengths.npy, ...           int32 [N]: ids per example (the only part held in RAM,
                                    with its int64 [N + 1] cumulative sums)
  info.json                         written last: counts, dtype, keys (its presence = complete)

Preparation streams the split in chunks of PREPARE_CHUNK records (sentencepiece encodes each
chunk on all cores), so memory does not grow with the corpus beyond the length index. It is
written into a private temporary folder and renamed into place: several processes may prepare
at once; the first rename wins and the others discard their copy.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import logging

from data import sources
from data.tokenizer import Tokenizer

PREPARE_CHUNK = 20_000  # records read and tokenized at a time while preparing
SIDES = ("inputs", "targets")  # inputs: data.source_lang, targets: data.target_lang
INFO_FILE = "info.json"


def short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def token_ids_dir(data_config, tokenizer: Tokenizer, split: str) -> Path:
    """Where the ids of `split` for this corpus, direction and tokenizer are (or will be)."""
    corpus = sources.builder(data_config).data_dir
    corpus_key = short_hash(
        f"{Path(corpus).resolve()}|{data_config.source_lang}>{data_config.target_lang}".encode()
    )
    name = f"{split}-{corpus_key}-{short_hash(tokenizer.to_bytes())}"
    return Path(data_config.prepared_dir) / "token_ids" / name


def _write_ids(data_config, tokenizer: Tokenizer, split: str, folder: Path) -> dict:
    """Tokenizes `split` chunk by chunk into `folder`; returns the info written there."""
    records = sources.open_split(data_config, split)
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    languages = {"inputs": data_config.source_lang, "targets": data_config.target_lang}
    lengths = {side: [] for side in SIDES}
    with contextlib.ExitStack() as stack:
        files = {side: stack.enter_context(open(folder / f"{side}.bin", "wb")) for side in SIDES}
        for start in range(0, len(records), PREPARE_CHUNK):
            chunk = records.__getitems__(range(start, min(start + PREPARE_CHUNK, len(records))))
            for side in SIDES:
                ids = tokenizer.encode_batch([r[languages[side]].decode() for r in chunk])
                lengths[side].append(np.array([len(i) for i in ids], np.int32))
                files[side].write(np.concatenate([np.asarray(i, dtype) for i in ids]).tobytes())
    for side in SIDES:
        np.save(folder / f"{side}_lengths.npy", np.concatenate(lengths[side]))
    info = {
        "examples": len(records),
        "dtype": np.dtype(dtype).name,
        "tokens": {side: int(sum(int(x.sum()) for x in lengths[side])) for side in SIDES},
        "tokenizer_sha256_16": short_hash(tokenizer.to_bytes()),
        "vocab_size": tokenizer.vocab_size,
    }
    (folder / INFO_FILE).write_text(json.dumps(info, indent=1))
    return info


def prepare_token_ids(data_config, tokenizer: Tokenizer, split: str) -> Path:
    """The folder of `split`'s token ids, tokenizing it first if needed (module docstring)."""
    final_dir = token_ids_dir(data_config, tokenizer, split)
    if (final_dir / INFO_FILE).is_file():
        return final_dir
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}-", dir=final_dir.parent))
    try:
        start = time.perf_counter()
        info = _write_ids(data_config, tokenizer, split, scratch)
        logging.info(
            "Tokenized %s (%d examples) into %s in %.1f s",
            split,
            info["examples"],
            final_dir,
            time.perf_counter() - start,
        )
        try:
            os.rename(scratch, final_dir)
        except OSError:
            if not (final_dir / INFO_FILE).is_file():
                raise  # not a lost race with another process: a real failure
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final_dir


@dataclasses.dataclass(frozen=True)
class TokenIds:
    """A split's token ids, memory-mapped: `ids[side]` flat, example i at
    `ids[side][starts[side][i] : starts[side][i] + lengths[side][i]]`."""

    folder: Path
    ids: dict[str, np.ndarray]  # side -> uint16/int32 [total ids], memory-mapped
    lengths: dict[str, np.ndarray]  # side -> int32 [examples]
    starts: dict[str, np.ndarray]  # side -> int64 [examples + 1]
    tokenizer_key: str

    @classmethod
    def open(cls, folder: Path) -> "TokenIds":
        info = json.loads((folder / INFO_FILE).read_text())
        ids, lengths, starts = {}, {}, {}
        for side in SIDES:
            lengths[side] = np.load(folder / f"{side}_lengths.npy")
            starts[side] = np.concatenate([[0], np.cumsum(lengths[side], dtype=np.int64)])
            ids[side] = (
                np.memmap(folder / f"{side}.bin", dtype=info["dtype"], mode="r")
                if starts[side][-1]
                else np.zeros(0, info["dtype"])
            )
        return cls(folder, ids, lengths, starts, info["tokenizer_sha256_16"])

    @property
    def num_examples(self) -> int:
        return len(self.lengths["inputs"])

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(input ids, target ids) of example `index`, as int32 (EOS last)."""
        return tuple(
            np.asarray(self.ids[s][self.starts[s][index] : self.starts[s][index + 1]], np.int32)
            for s in SIDES
        )


def training_token_ids(data_config, tokenizer: Tokenizer) -> TokenIds:
    """The training split's ids, tokenized first if needed."""
    return TokenIds.open(prepare_token_ids(data_config, tokenizer, data_config.train_split))
