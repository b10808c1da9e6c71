"""Training jobs: metric-learning fine-tuning of the encoder (ArcFace / CurricularFace) and the pair re-ranker.

Modules, one role each:

- :mod:`.data`: stream a labelled Parquet input in pyarrow batches; group-aware held-out split.
- :mod:`.losses`: additive angular margin heads (ArcFace, CurricularFace).
- :mod:`.validate`: held-out row-wise F1 from exact kNN and the job's edge rules; INB tuning.
- :mod:`.trainer`: the two training modes (``head``: frozen encoder + projection head;
  ``full``: the encoder fine-tuned too) and the run that ties them together.
- :mod:`.e5_export`: the packaged e5-small (4-bit C engine) as a trainable sentence-transformers dir.
- :mod:`.rerank_train`: training the learned pair re-ranker (:mod:`listing_dedup.graph.rerank`).
- :mod:`.hardware`: what a run records about its machine.

The projection head and the model directory the job loads live with the encoder
(:mod:`listing_dedup.embed.heads`, :mod:`listing_dedup.embed.model_dir`).

The entry points are ``jobs/train_embedder.py`` and ``jobs/train_reranker.py``; see docs/training.md.
"""
