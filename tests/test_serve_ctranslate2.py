"""serve.py's CTranslate2 backend over a directory written by exporting.export_checkpoint from
the tiny checkpoint of tests/test_translate.py: through the HTTP API its translations are what
the plain recipe gives (sentencepiece pieces -> Translator.translate_batch -> sp.decode) one
sentence at a time, and the JAX backend's greedy translations (an independent engine)."""

from __future__ import annotations

import json

import pytest
import sentencepiece as spm
from starlette.testclient import TestClient

from decoding.settings import DecodeSettings
from serving.app import ServerSettings, create_app
from serving.jax_backend import JaxBackend
from serving.requests import Limits
from tests.test_serve import SENTENCES
from tests.test_translate import sharp_checkpoint, workdir  # noqa: F401  (fixtures)
from training import restoring

ctranslate2 = pytest.importorskip("ctranslate2", reason="pip install '.[export]'")
exporting = pytest.importorskip("exporting", reason="the exporting package (issue 15)")
from serving.ctranslate2_backend import CTranslate2Backend  # noqa: E402

MAX_LENGTH = 32  # the tiny model's positions: every output may use all of them


@pytest.fixture(scope="module")
def exported(sharp_checkpoint, tmp_path_factory):  # noqa: F811
    restored = restoring.restore_for_translation(sharp_checkpoint)
    directory = exporting.export_checkpoint(restored, tmp_path_factory.mktemp("ct2") / "out")
    return restored, directory


@pytest.mark.slow
def test_ctranslate2_backend_serves_the_plain_recipe_and_matches_jax_greedy(exported):
    restored, directory = exported
    info = json.loads((directory / "export.json").read_text())
    assert info["max_length"] == MAX_LENGTH
    assert (info["source_lang"], info["target_lang"]) == ("en", "de")
    settings = dict(beam_size=1, alpha=0.0, max_extra_length=MAX_LENGTH)
    backend = CTranslate2Backend(directory, max_input_length=16, max_rows=8, **settings)
    assert (backend.source_lang, backend.target_lang) == ("en", "de")  # from export.json
    app = create_app(lambda: backend, ServerSettings(8, 5, 100, 60, Limits(5000, 64)))
    with TestClient(app) as client:
        while client.get("/health").status_code != 200:
            pass
        response = client.post("/translate", json={"q": SENTENCES, "source": "en", "target": "de"})
        assert response.status_code == 200, response.text
        served = response.json()["translatedText"]

    # The plain recipe, one sentence at a time, with the options our searches imply (EOS may
    # come first, padding is never an output).
    sp = spm.SentencePieceProcessor(model_file=str(directory / "spm.model"))
    translator = ctranslate2.Translator(str(directory))
    options = dict(
        beam_size=1,
        max_decoding_length=MAX_LENGTH,
        min_decoding_length=0,
        suppress_sequences=[[sp.id_to_piece(0)]],
    )
    recipe = [
        sp.decode(
            translator.translate_batch([sp.encode(sentence, out_type=str)], **options)[
                0
            ].hypotheses[0]
        )
        for sentence in SENTENCES
    ]
    assert served == recipe
    assert len(set(served)) >= 4, served  # outputs depend on the input

    # The JAX backend's greedy search, both limited by the model's positions only.
    jax_settings = DecodeSettings.from_config(restored.config.decode, **settings)
    jax_backend = JaxBackend(restored, jax_settings, max_input_length=16, max_rows=8)
    encoded = [jax_backend.encode(sentence) for sentence in SENTENCES]
    bucket = encoded[0].bucket
    same_bucket = [i for i, e in enumerate(encoded) if e.bucket == bucket][:8]
    jax_texts = [d.text for d in jax_backend.decode_batch([encoded[i] for i in same_bucket])]
    assert jax_texts == [served[i] for i in same_bucket]
