"""mvp-jax: MVPTR (multi-stage vision-language pre-training) in JAX/Flax.

The small public API (see the README):

  config = mvp_jax.ModelConfig(...)            # or mvp_jax.config.base() / .tiny()
  model = mvp_jax.MVPPretrainingModel(config)
  params = mvp_jax.init_params(config, jax.random.PRNGKey(0))
  config, params = mvp_jax.load_checkpoint('pytorch_model.bin')   # any checkpoint, its model
  outputs = mvp_jax.run_backbone(config, params, batch)          # named outputs (dict)
"""

from mvp_jax.api import load_checkpoint
from mvp_jax.api import run_backbone
from mvp_jax.api import run_pretraining_heads
from mvp_jax.config import ModelConfig
from mvp_jax.model import dummy_batch
from mvp_jax.model import init_params
from mvp_jax.model import MVPBackbone
from mvp_jax.model import MVPPretrainingModel

__all__ = ['ModelConfig', 'MVPBackbone', 'MVPPretrainingModel', 'init_params', 'dummy_batch',
           'load_checkpoint', 'run_backbone', 'run_pretraining_heads']
