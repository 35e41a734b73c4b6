"""Decode settings: how to search for a translation, in one validated value.

`DecodeSettings.from_config(config.decode, beam_size=4)` is what every command builds at
start-up (translate.py, training's evaluation, the server, the export), so a bad value stops the
program before anything is restored or compiled, with one line saying what to change.

The strategy is 'greedy' (one hypothesis, the most probable next token at every step) or
'beam' (`beam_size` hypotheses, ranked with the GNMT length penalty `alpha`). A config gives a
beam size only: beam size 1 means greedy. Asking for the strategy by name sets the beam size
accordingly (greedy -> 1); a beam search needs a beam of at least 2. A beam search stops a
sentence when no hypothesis can beat its best finished one (exact), or with `early_stopping` as soon
as its best finished hypothesis beats its best alive one ended within the next 3 steps, which is
faster and not exact, though it rarely changes a translation (docs/decoding_speed.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

STRATEGIES = ("beam", "greedy")


class DecodeSettingsError(ValueError):
    """A decode setting is out of range; the message is one line saying what to change."""


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """Everything a search needs besides the model and the input."""

    strategy: str = "beam"  # 'beam' or 'greedy'
    beam_size: int = 4  # hypotheses kept per sentence; 1 for greedy
    alpha: float = 0.6  # GNMT length penalty ((5 + length) / 6)^alpha; unused by greedy
    max_extra_length: int = 50  # an output is at most input length + this many subwords
    batch_size: int = 64  # sentences decoded together
    early_stopping: bool = False  # beam: stop once no alive one ending in 3 steps beats the best

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise DecodeSettingsError(f"Bad decode settings: {problem}.")

    def problem(self) -> str | None:
        """What is wrong, as 'X must be ...: set ...', or None."""
        if self.strategy not in STRATEGIES:
            return f"strategy must be one of {STRATEGIES}, got {self.strategy!r}"
        if not isinstance(self.beam_size, int) or self.beam_size < 1:
            return f"beam_size must be a positive integer, got {self.beam_size!r}"
        if self.strategy == "greedy" and self.beam_size != 1:
            return (
                f"greedy search keeps one hypothesis but beam_size is {self.beam_size}: "
                "set beam_size to 1 or use strategy 'beam'"
            )
        if self.strategy == "beam" and self.beam_size < 2:
            return (
                "beam search needs beam_size >= 2, got 1: set beam_size to 2 or more, or use "
                "strategy 'greedy'"
            )
        if not self.alpha >= 0:  # also refuses NaN
            return f"alpha (the length penalty's exponent) must be >= 0, got {self.alpha}"
        if not isinstance(self.max_extra_length, int) or self.max_extra_length < 0:
            return f"max_extra_length must be an integer >= 0, got {self.max_extra_length!r}"
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            return f"batch_size must be a positive integer, got {self.batch_size!r}"
        if not isinstance(self.early_stopping, bool):
            return f"early_stopping must be True or False, got {self.early_stopping!r}"
        return None

    @classmethod
    def from_config(cls, decode_config: Mapping[str, Any], **overrides: Any) -> DecodeSettings:
        """The settings of `decode_config` (a config's `decode` section, or a dict with some
        of its fields) with `overrides` applied; an override of None is ignored (an unset
        flag). The strategy follows the beam size unless it is given: giving 'greedy' sets
        the beam size to 1, giving 'beam' keeps the configured beam size."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise DecodeSettingsError(
                f"Unknown decode setting(s) {unknown}: choose from "
                f"{[f.name for f in dataclasses.fields(cls)]}."
            )
        given = {key: value for key, value in overrides.items() if value is not None}
        fields = {
            name: decode_config.get(name, getattr(cls, name))
            for name in ("beam_size", "alpha", "max_extra_length", "batch_size", "early_stopping")
        }
        fields.update({k: v for k, v in given.items() if k != "strategy"})
        strategy = given.get("strategy", decode_config.get("strategy"))
        if strategy is None:
            strategy = "greedy" if fields["beam_size"] == 1 else "beam"
        elif strategy == "greedy" and "beam_size" not in given:
            fields["beam_size"] = 1
        return cls(strategy=strategy, **fields)

    def describe(self) -> str:
        """'beam search (beam 4, alpha 0.6), outputs up to input + 50 subwords, batches of 64'."""
        search = (
            "greedy search"
            if self.strategy == "greedy"
            else f"beam search (beam {self.beam_size}, alpha {self.alpha}"
            + (", early stopping)" if self.early_stopping else ")")
        )
        return (
            f"{search}, outputs up to input + {self.max_extra_length} subwords, "
            f"batches of {self.batch_size} sentences"
        )


def max_input_length(config: Any) -> int:
    """The longest source (in subwords, EOS included) fed to the encoder: the config's
    data.max_predict_length, at most the model's max_length."""
    return min(int(config.data.max_predict_length), int(config.model.max_length))
