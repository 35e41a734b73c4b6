"""DecodeSettings: what every config and flag combination gives, and one-line errors that say
what to change for every bad value."""

import dataclasses
import math

import pytest

from configs import base, default, multi30k
from decoding.settings import DecodeSettings, DecodeSettingsError, max_input_length


def test_settings_of_the_configs():
    assert DecodeSettings.from_config(base.get_config().decode) == DecodeSettings(
        strategy="beam", beam_size=4, alpha=0.6, max_extra_length=50, batch_size=64
    )
    assert DecodeSettings.from_config(multi30k.get_config().decode) == DecodeSettings(
        strategy="beam", beam_size=5, alpha=1.0, max_extra_length=20, batch_size=64
    )
    # A checkpoint's saved config is plain JSON: a dict works, missing fields take defaults.
    saved = {"beam_size": 1, "alpha": 0.6}
    assert DecodeSettings.from_config(saved) == DecodeSettings("greedy", 1, 0.6, 50, 64)
    config = default.get_config()
    assert max_input_length(config) == 64
    config.model.max_length = 32
    assert max_input_length(config) == 32


def test_overrides_and_the_strategy():
    decode = base.get_config().decode  # beam 4
    assert DecodeSettings.from_config(decode, beam_size=None, alpha=None).beam_size == 4
    greedy = DecodeSettings.from_config(decode, strategy="greedy")
    assert (greedy.strategy, greedy.beam_size) == ("greedy", 1)
    assert DecodeSettings.from_config(decode, beam_size=1).strategy == "greedy"
    wide = DecodeSettings.from_config(decode, beam_size=8, alpha=0.0, batch_size=3)
    assert (wide.strategy, wide.beam_size, wide.alpha, wide.batch_size) == ("beam", 8, 0.0, 3)
    assert "beam search (beam 8, alpha 0.0)" in wide.describe()
    assert greedy.describe().startswith("greedy search, outputs up to input + 50 subwords")
    with pytest.raises(dataclasses.FrozenInstanceError):
        wide.beam_size = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("decode", "overrides", "message"),
    [
        ({}, {"beam_size": 0}, "beam_size must be a positive integer, got 0"),
        (
            {},
            {"strategy": "sampling"},
            "strategy must be one of ('beam', 'greedy'), got 'sampling'",
        ),
        ({}, {"strategy": "greedy", "beam_size": 3}, "set beam_size to 1 or use strategy 'beam'"),
        ({"beam_size": 1}, {"strategy": "beam"}, "beam search needs beam_size >= 2, got 1"),
        ({}, {"alpha": -0.5}, "alpha (the length penalty's exponent) must be >= 0, got -0.5"),
        ({}, {"alpha": math.nan}, "alpha (the length penalty's exponent) must be >= 0, got nan"),
        ({}, {"max_extra_length": -1}, "max_extra_length must be an integer >= 0, got -1"),
        ({}, {"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"batch_size": 2.5}, {}, "batch_size must be a positive integer, got 2.5"),
        ({"early_stopping": "yes"}, {}, "early_stopping must be True or False, got 'yes'"),
        ({}, {"beam": 4}, "Unknown decode setting(s) ['beam']: choose from ['strategy',"),
    ],
)
def test_bad_settings_are_one_line_value_errors(decode, overrides, message):
    with pytest.raises(DecodeSettingsError) as raised:
        DecodeSettings.from_config(decode, **overrides)
    assert isinstance(raised.value, ValueError)
    assert message in str(raised.value) and "\n" not in str(raised.value)
