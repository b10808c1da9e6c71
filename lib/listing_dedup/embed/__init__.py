"""Embed: per-partition encoders in pandas UDFs (text, image, lexical TF-IDF), model
directories and heads, and the fusion of the signals into one searched vector."""
