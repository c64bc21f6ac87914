"""input_pipeline/optional.py: a missing optional package names the feature and the extra."""

import sys

import pytest

from input_pipeline import optional
from input_pipeline.sources import hf_table


def test_missing_sources_package_names_the_extra(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'datasets', None)  # makes `import datasets` fail
  with pytest.raises(ImportError, match=r"Reading the Hugging Face table .* needs the optional "
                     r"package datasets.*pip install 'mvp-jax\[sources\]'"):
    hf_table.HfTableSource(str(tmp_path))
  monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(ImportError, match=r'^Reading x.bin needs .* pip install torch\.$'):
    optional.require('torch', 'Reading x.bin')

