"""The 'numbers' source: the generated numbers corpus of data/numbers.py."""

from data import numbers
from data.generated import GeneratedSource
from data.registry import register

SOURCE = register(GeneratedSource("numbers", numbers.NumbersTranslation, numbers.numbers_config))
