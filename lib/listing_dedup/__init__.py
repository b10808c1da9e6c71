"""listing-dedup: find duplicate product listings with Spark, FAISS and neural embeddings."""

__version__ = "0.1.0"
