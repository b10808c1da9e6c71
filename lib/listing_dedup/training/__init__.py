"""Metric-learning fine-tuning of the embedding model (ArcFace / CurricularFace).

Modules, one role each:

- :mod:`.data`: stream a labelled Parquet input in pyarrow batches; group-aware held-out split.
- :mod:`.heads`: the projection head (a torch module) and its safetensors I/O.
- :mod:`.losses`: additive angular margin heads (ArcFace, CurricularFace).
- :mod:`.validate`: held-out row-wise F1 from exact kNN and the job's edge rules; INB tuning.
- :mod:`.model_dir`: the model directory the dedup job's embed stage loads by path.
- :mod:`.trainer`: the two training modes (``head``: frozen encoder + projection head;
  ``full``: the encoder fine-tuned too) and the run that ties them together.

The entry point is ``jobs/train_embedder.py``; see docs/training.md.
"""
