"""The decoding of training's evaluation, split over the mesh: on 8 simulated devices each
decodes only its rows of every batch (before, every device decoded the whole batch), and the
translations, BLEU and exact match are those of 1 device."""

import jax
import numpy as np
import pytest

import input_pipeline
from decoding import translator
from tests import train_tiny_config
from tests.train_runner import prepared_dir  # noqa: F401
from training import evaluation
from training import setup as training_setup
from training.loop import prepare_config


@pytest.mark.slow  # a minute or more on a 2-core CPU: runs in `make test-slow`
def test_8_devices_decode_their_rows_and_translate_like_1(tmp_path, prepared_dir, monkeypatch):  # noqa: F811
    config = train_tiny_config.get_config()
    config.data.prepared_dir = str(prepared_dir)
    config.num_bleu_examples = 40
    config.decode.beam_size = 2
    config.decode.batch_size = 12  # rounded up to 16 rows on 8 devices: 2 per device
    tokenizer = input_pipeline.get_tokenizer(config.data, tmp_path)
    config = prepare_config(config, tokenizer.vocab_size)
    one = training_setup.build(config, jax.devices()[:1])
    eight = training_setup.build(config, jax.devices()[:8])
    assert dict(eight.mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    params = one.fresh_state().params  # untrained: any parameters must decode alike

    calls = []

    def recording_translate_tokens(model, params, inputs, **kwargs):
        outputs = original(model, params, inputs, **kwargs)
        calls.append((inputs, outputs))
        return outputs

    original = translator.translate_tokens
    monkeypatch.setattr(translator, "translate_tokens", recording_translate_tokens)
    results = {}
    for name, setup in (("one", one), ("eight", eight)):
        calls.clear()
        placed = jax.device_put(params, setup.shardings.params)
        evaluate = evaluation.Evaluator(
            config, tokenizer, setup.model, setup.mesh, setup.shardings.params
        )
        sources = [source for source, _ in evaluate.decoded_pairs]
        hypotheses = evaluation.translate(
            setup.model,
            placed,
            tokenizer,
            sources,
            config.decode,
            config.data.max_predict_length,
            setup.mesh,
        )
        scalars, _ = evaluate(placed)
        results[name] = (hypotheses, scalars, list(calls))

    hypotheses, scalars, calls_on_8 = results["eight"]
    assert hypotheses == results["one"][0]
    assert len(hypotheses) == 40 and any(hypotheses)
    for key in ("eval/bleu", "eval/exact_match", "eval/loss"):
        np.testing.assert_allclose(scalars[key], results["one"][1][key], rtol=1e-6, err_msg=key)
    assert calls_on_8
    for inputs, outputs in calls_on_8:
        for array in (inputs, outputs):
            assert isinstance(array, jax.Array)
            assert len(array.sharding.device_set) == 8
            assert array.shape[0] == 16
            assert array.sharding.shard_shape(array.shape)[0] == 2  # rows per device
