"""Serving translations over HTTP with LibreTranslate's API (serve.py).

- `backend`: what the server needs from a decoder (encode a sentence, decode a batch of them);
  `jax_backend` (a restored checkpoint) and `ctranslate2_backend` (an exported directory).
- `batching`: the queue and the decoder worker thread that groups concurrent sentences by
  source-length bucket and decodes each group in one call.
- `requests`: LibreTranslate's request fields, parsed and checked (400 errors).
- `metrics`: the Prometheus counters and histograms of one server.
- `app`: the Starlette application (routes, start-up, errors as JSON).
"""
