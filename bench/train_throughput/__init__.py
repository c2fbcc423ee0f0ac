"""The parts of the training throughput benchmark (issue 10); `python -m bench.bench_train` is its command line.

Importing any part sets the offline defaults every worker runs under (no Hugging Face Hub calls).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
