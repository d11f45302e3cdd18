import os

import pytest

from gloss_core.models import load_tokenizer
from tiny_models import tiny_bert


@pytest.fixture(autouse=True, scope="session")
def _isolated_token_cache(tmp_path_factory):
    """Tokenisation caches go to a per-session folder, not ~/.cache/gloss."""
    os.environ["GLOSS_CACHE"] = str(tmp_path_factory.mktemp("gloss-cache"))
    yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random-initialised 2-layer BERT saved as a local Hugging Face folder, with MiniLM's tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    tiny_bert().save_pretrained(folder)
    load_tokenizer("minilm").save_pretrained(folder)
    return str(folder)
