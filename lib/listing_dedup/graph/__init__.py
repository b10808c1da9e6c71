"""Graph: candidate pairs to edges (thresholds, min2, the learned re-ranker), connected
components, and the guard that re-cuts oversized groups."""
