"""Scorers whose model runs on a serving engine: vLLM's pooling endpoints and Hugging
Face text-embeddings-inference (TEI), over HTTP.

``http_reward_model``, ``http_text_classifier`` and ``http_embedding`` rate candidates as
their local counterparts do, but send the texts to a server, a bounded batch per
request (:mod:`aligntime.scorers.http.client`); the request and reply shapes of each
endpoint are in :mod:`aligntime.scorers.http.endpoints`.
"""
