"""Optional dependencies: imported only where a feature needs them, with one clear error.

  beam = optional.require('apache_beam', 'Writing records with --beam')

The base install (`pip install -e .`) trains, evaluates and imports data; these are extra:
  sources  apache-beam (Beam record writing), datasets (Hugging Face tables): `[sources]`
  torch    reading PyTorch .bin / .pt checkpoints and files (the tests install it: `[test]`)
"""

import importlib
from types import ModuleType

# import name -> (pip package, the setup.py extra that installs it, or None)
PACKAGES = {
    'apache_beam': ('apache-beam', 'sources'),
    'datasets': ('datasets', 'sources'),
    'torch': ('torch', None),
}


def require(module: str, purpose: str) -> ModuleType:
  """The imported `module`, or ImportError saying what needs it and what to pip-install."""
  try:
    return importlib.import_module(module)
  except ImportError as error:
    package, extra = PACKAGES[module]
    how = (f"pip install 'mvp-jax[{extra}]' (or pip install {package})" if extra
           else f'pip install {package}')
    raise ImportError(f'{purpose} needs the optional package {package}, which could not be '
                      f'imported ({error}): {how}.') from error
