import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_token_cache(tmp_path_factory):
    """Tokenisation caches go to a per-session folder, not ~/.cache/gloss."""
    os.environ["GLOSS_CACHE"] = str(tmp_path_factory.mktemp("gloss-cache"))
    yield
