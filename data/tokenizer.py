"""The joint source+target sentencepiece vocabulary.

Token ids: 0 = padding (also the decoder's begin token: there is no BOS), 1 = EOS, 2 = unknown.
`encode` appends EOS; `decode` stops at the first EOS and skips padding.

`get_tokenizer` trains the model once, on process 0, into `WORKDIR/tokenizer/spm.model`; every
process (and later the translator) loads that file, so all of them share one vocabulary. The
checkpoint can also carry the model itself (`to_bytes` / `from_bytes`).
"""

import io
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm
from absl import logging

from data import sources
from data.errors import DataError
from data.special_tokens import EOS_ID, PAD_ID, UNK_ID, cut_at_eos

TOKENIZER_FILE = Path("tokenizer") / "spm.model"


class Tokenizer:
    """A sentencepiece model with this project's id conventions (pad 0, eos 1, unk 2)."""

    def __init__(self, model_proto: bytes):
        self._model_proto = bytes(model_proto)
        self._processor = spm.SentencePieceProcessor(model_proto=self._model_proto)
        special = (self._processor.pad_id(), self._processor.eos_id(), self._processor.unk_id())
        if special != (PAD_ID, EOS_ID, UNK_ID) or self._processor.bos_id() != -1:
            raise DataError(
                f"sentencepiece model has pad/eos/unk ids {special} and bos "
                f"{self._processor.bos_id()}; this project needs pad=0, eos=1, unk=2 and no bos"
            )

    @classmethod
    def from_bytes(cls, model_proto: bytes) -> "Tokenizer":
        """The tokenizer from a serialized model (as stored in a checkpoint)."""
        return cls(model_proto)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """The tokenizer from a `spm.model` file."""
        return cls(Path(path).read_bytes())

    def to_bytes(self) -> bytes:
        """The serialized sentencepiece model proto."""
        return self._model_proto

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, EOS appended."""
        return self._processor.encode(text) + [EOS_ID]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` of each text (faster than one call per text)."""
        return [ids + [EOS_ID] for ids in self._processor.encode(list(texts))]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` up to the first EOS, padding skipped."""
        return self._processor.decode(cut_at_eos(int(i) for i in np.asarray(ids).reshape(-1)))


def training_sentences(data_config, sample_size: int) -> list[str]:
    """Source and target sentences of a deterministic sample of the training split.

    Takes both sides of ceil(sample_size / 2) random line pairs (all pairs if fewer).
    """
    records = sources.open_split(data_config, data_config.train_split)
    num_pairs = min(len(records), -(-sample_size // 2))
    if num_pairs < len(records):
        indices = np.sort(np.random.default_rng(0).choice(len(records), num_pairs, replace=False))
    else:
        indices = np.arange(len(records))
    sentences = []
    for record in records.__getitems__(indices.tolist()):
        sentences.append(record[data_config.source_lang].decode("utf-8"))
        sentences.append(record[data_config.target_lang].decode("utf-8"))
    return sentences


def train_tokenizer(data_config) -> Tokenizer:
    """Trains a joint sentencepiece model on the training split (sizes from `data_config`)."""
    sentences = training_sentences(data_config, data_config.vocab_sample_size)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=data_config.vocab_size,
            model_type=data_config.vocab_model_type,
            character_coverage=data_config.vocab_character_coverage,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            input_sentence_size=0,  # use exactly the sample drawn above
            minloglevel=2,  # warnings and errors only
        )
    except RuntimeError as e:
        too_high = re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", str(e))
        if too_high:
            raise DataError(
                f"data.vocab_size={too_high[1]} is too large for this corpus: sentencepiece can "
                f"make at most {too_high[2]} pieces from {len(sentences)} sentences; lower "
                "data.vocab_size (or raise data.vocab_sample_size)"
            ) from None
        raise DataError(f"sentencepiece training failed: {str(e).splitlines()[0]}") from None
    return Tokenizer(model.getvalue())


def get_tokenizer(
    data_config,
    workdir: str,
    *,
    process_index: int = 0,
    barrier: Callable[[], None] | None = None,
) -> Tokenizer:
    """The run's tokenizer: trained once by process 0 into WORKDIR/tokenizer/spm.model.

    Every process calls this; `barrier` (e.g. a multihost sync) makes the others wait until
    process 0 has written the file. The workdir must be shared by all processes.
    """
    path = Path(workdir) / TOKENIZER_FILE
    if process_index == 0 and not path.is_file():
        logging.info(
            "Training a %d-piece sentencepiece model into %s", data_config.vocab_size, path
        )
        tokenizer = train_tokenizer(data_config)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        partial.write_bytes(tokenizer.to_bytes())
        os.replace(partial, path)
    if barrier is not None:
        barrier()
    if not path.is_file():
        raise DataError(
            f"{path} not found on process {process_index}: the workdir must be on a file system "
            "shared by all processes (process 0 writes the tokenizer there)"
        )
    tokenizer = Tokenizer.load(path)
    if tokenizer.vocab_size != data_config.vocab_size:
        raise DataError(
            f"{path} has {tokenizer.vocab_size} pieces but data.vocab_size="
            f"{data_config.vocab_size}; use a fresh workdir or set data.vocab_size="
            f"{tokenizer.vocab_size}"
        )
    return tokenizer
