"""Ingest: read the listing Parquet, validate rows (bad ones become rejects with a reason), clean
titles, decode images once and hash them (pHash)."""
