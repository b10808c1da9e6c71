"""Search: the sharded FAISS IVF index and its routed top-k search, neighbourhood blending
(INB), and pHash pair finding."""
