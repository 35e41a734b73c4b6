"""Translating a text stream line by line: N lines in give N lines out, in order.

Lines are split on "\\n" only (a trailing "\\r" is dropped, so CRLF files work); every other
character, including Unicode line separators, stays inside its line. A blank line gives an
empty line. Input must be UTF-8 (a byte order mark at the start is skipped): a bad byte stops
with an error naming the line. Lines are read in chunks (one line at a time from a terminal)
and each chunk is translated, written and flushed before the next is read, so a pipe gets its
output as it goes.
"""

from __future__ import annotations

import codecs
import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, TextIO


class InputError(ValueError):
    """Bad input text; the message is one line saying where and what to do."""


def decode_line(raw: bytes, line_number: int, source_name: str) -> str:
    """One line's bytes (without "\\n") as text; InputError if it is not UTF-8."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(
            f"{source_name} line {line_number} is not valid UTF-8 (byte "
            f"0x{raw[error.start]:02x} at byte offset {error.start}): convert the file to "
            "UTF-8, e.g. with `iconv -f latin1 -t utf-8`."
        ) from None


def read_lines(stream: BinaryIO, source_name: str) -> list[str]:
    """Every line of a binary stream."""
    return [line for chunk in line_chunks(stream, source_name, chunk_lines=4096) for line in chunk]


def line_chunks(stream: BinaryIO, source_name: str, chunk_lines: int) -> Iterator[list[str]]:
    """Lists of at most `chunk_lines` consecutive lines. A last line without "\\n" counts."""
    chunk: list[str] = []
    for line_number, raw in enumerate(stream, start=1):
        if line_number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)  # as some Windows editors write
        chunk.append(decode_line(raw.removesuffix(b"\n"), line_number, source_name))
        if len(chunk) == chunk_lines:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def one_line(text: str) -> str:
    """An output that cannot break line alignment (no line breaks inside)."""
    return " ".join(text.splitlines()) if text else text


@dataclasses.dataclass
class TranslationStats:
    lines: int = 0  # lines read (= lines written)
    sentences: int = 0  # non-blank lines, i.e. sentences actually translated
    source_tokens: int = 0  # subwords fed to the encoder (after truncation, EOS included)
    output_tokens: int = 0  # subwords of the outputs (re-tokenized, EOS included)
    truncated_lines: list[int] = dataclasses.field(default_factory=list)  # 1-based
    seconds: float = 0.0  # time spent translating (tokenizing, decoding, detokenizing)

    def speed_line(self) -> str:
        """'N sentences in S s: X sentences/s, Y output tokens/s (Z source tokens/s)'."""
        seconds = max(self.seconds, 1e-9)
        return (
            f"{self.sentences} sentences ({self.lines} lines) in {self.seconds:.1f} s: "
            f"{self.sentences / seconds:.1f} sentences/s, "
            f"{self.output_tokens / seconds:.0f} output tokens/s "
            f"({self.source_tokens / seconds:.0f} source tokens/s), compilation included"
        )


def translate_lines(
    chunks: Iterable[list[str]],
    translate: Callable[[list[str]], list[str]],
    tokenizer,
    max_input_length: int,
    write: Callable[[list[str]], None],
    on_progress: Callable[[int], None] = lambda lines: None,
) -> TranslationStats:
    """Translates chunk after chunk with `translate` (texts -> texts, blank -> ""), calls
    `write` with each chunk's outputs and `on_progress` with its line count. Counts what
    TranslationStats holds, including which lines were too long and got truncated."""
    stats = TranslationStats()
    for chunk in chunks:
        start = time.perf_counter()
        for offset, text in enumerate(chunk):
            length = len(tokenizer.encode(text)) if text.strip() else 0
            if length > max_input_length:  # `translate` keeps the first tokens and EOS
                stats.truncated_lines.append(stats.lines + offset + 1)
            stats.source_tokens += min(length, max_input_length)
        outputs = [one_line(text) for text in translate(chunk)]
        if len(outputs) != len(chunk):
            raise RuntimeError(f"{len(chunk)} lines translated into {len(outputs)} outputs.")
        stats.output_tokens += sum(len(tokenizer.encode(text)) for text in outputs if text)
        stats.seconds += time.perf_counter() - start
        stats.lines += len(chunk)
        stats.sentences += sum(1 for text in chunk if text.strip())
        write(outputs)
        on_progress(len(chunk))
    return stats


def write_lines(stream: TextIO) -> Callable[[list[str]], None]:
    """A `write` for translate_lines: one line per output, flushed per chunk."""

    def write(outputs: list[str]) -> None:
        stream.write("".join(text + "\n" for text in outputs))
        stream.flush()

    return write
