import pytest
from checkpoint_helpers import FORMATS

from optimum_qaic_moe.testing import write_checkpoint


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """{format key: directory}, written once per session (each in well under a second)."""
    root = tmp_path_factory.mktemp("formats")
    return {key: write_checkpoint(mt, str(root / key), format=fmt, **kw) for key, (mt, fmt, kw) in FORMATS.items()}
