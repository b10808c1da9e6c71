"""Sink: the Delta tables. Schemas and file statistics, the executors' Parquet writer, the
driver's commit, the ``runs`` audit row, and the read-back verification."""
