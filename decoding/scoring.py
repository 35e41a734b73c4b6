"""Translation quality with sacreBLEU, computed the same way by training's evaluation and by
translate.py, each score printed with sacreBLEU's signature so that it can be reproduced.

Three corpus-level scores of detokenized hypotheses against one reference per sentence:

- `bleu`: sacreBLEU's default BLEU: cased, sacreBLEU's own `13a` tokenization (the
  mteval-v13a rules) applied to detokenized text, exponential smoothing. The number to
  compare across systems (Post 2018, "A Call for Clarity in Reporting BLEU Scores").
- `chrf`: chrF2 (character 6-grams, no word n-grams, beta 2): less sensitive to
  tokenization and morphology than BLEU.
- `tokenized_lowercase_bleu`: BLEU with both sides lowercased and split by the same `13a`
  tokenizer before matching n-grams, i.e. `sacrebleu -lc -tok 13a`. This is the kind of
  "tokenized, lowercased" BLEU many papers report, computed reproducibly. Papers that ran
  multi-bleu.perl on Moses-tokenized text (sometimes with compound splitting for German) used
  slightly different tokenization rules, so their numbers can differ from this one by a few
  tenths; compare only numbers with the same signature.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from sacrebleu.metrics import BLEU, CHRF


@dataclasses.dataclass(frozen=True)
class Score:
    """One corpus score: `line` is sacreBLEU's report, `NAME|signature = score details`."""

    name: str  # e.g. 'BLEU'
    score: float  # 0..100
    signature: str  # e.g. 'nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0'
    line: str


def _check_counts(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} translations but {len(references)} references: give exactly "
            "one reference line per input line."
        )
    if not hypotheses:
        raise ValueError("No sentences to score: the input is empty.")


def _score(metric: BLEU | CHRF, hypotheses: Sequence[str], references: Sequence[str]) -> Score:
    _check_counts(hypotheses, references)
    result = metric.corpus_score(list(hypotheses), [list(references)])
    signature = str(metric.get_signature())
    return Score(
        name=result.name,
        score=float(result.score),
        signature=signature,
        line=result.format(signature=signature, width=2),
    )


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> Score:
    """sacreBLEU's default: cased, 13a tokenization of detokenized text."""
    return _score(BLEU(), hypotheses, references)


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> Score:
    """chrF2 (character 6-grams, beta 2)."""
    return _score(CHRF(), hypotheses, references)


def tokenized_lowercase_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> Score:
    """BLEU of lowercased, 13a-tokenized text (`sacrebleu -lc -tok 13a`)."""
    return _score(BLEU(lowercase=True, tokenize="13a"), hypotheses, references)


def corpus_scores(
    hypotheses: Sequence[str], references: Sequence[str], *, tokenized_lowercase: bool = False
) -> list[Score]:
    """BLEU and chrF, and the tokenized lowercased BLEU if asked. Raises ValueError when the
    numbers of hypotheses and references differ, or there are none."""
    scores = [bleu(hypotheses, references), chrf(hypotheses, references)]
    if tokenized_lowercase:
        scores.append(tokenized_lowercase_bleu(hypotheses, references))
    return scores
