"""clu metrics of pre-training: losses, accuracies, gradient norm, learning rate.

Accuracies are ratios of summed counts (`Ratio`), so merging steps weights every masked token,
pair or phrase equally rather than every step.
"""

from typing import Dict, Mapping

import flax
import jax.numpy as jnp
import numpy as np
from clu import metrics


@flax.struct.dataclass
class Ratio(metrics.Metric):
  """Sum of `<name>_correct` over sum of `<name>_count` (0 when nothing was counted)."""
  numerator: jnp.ndarray
  denominator: jnp.ndarray

  @classmethod
  def from_counts(cls, name: str):

    @flax.struct.dataclass
    class FromCounts(cls):

      @classmethod
      def from_model_output(cls, **outputs):
        return cls(numerator=jnp.asarray(outputs[f'{name}_correct'], jnp.float32),
                   denominator=jnp.asarray(outputs[f'{name}_count'], jnp.float32))

    return FromCounts

  def merge(self, other):
    return type(self)(self.numerator + other.numerator, self.denominator + other.denominator)

  def compute(self):
    return self.numerator / jnp.maximum(self.denominator, 1.0)


def _average(name):
  return metrics.Average.from_output(name)


_STAGE1_METRICS = dict(
    loss=_average('loss'), loss_mcr=_average('loss_mcr'), loss_itc=_average('loss_itc'),
    mcr_accuracy=Ratio.from_counts('mcr'), itc_accuracy=Ratio.from_counts('itc'),
    grad_norm=_average('grad_norm'),
    learning_rate=metrics.LastValue.from_output('learning_rate'),
    logit_scale=metrics.LastValue.from_output('logit_scale'))

# Stage 1 (uni-modal: MCR + ITC) and stage 2 / joint (all five losses).
Stage1Metrics = metrics.Collection.create(**_STAGE1_METRICS)
TrainMetrics = metrics.Collection.create(
    **_STAGE1_METRICS, loss_mlm=_average('loss_mlm'), loss_itm=_average('loss_itm'),
    loss_wpg=_average('loss_wpg'), mlm_accuracy=Ratio.from_counts('mlm'),
    itm_accuracy=Ratio.from_counts('itm'), wpg_pos=_average('wpg_pos'),
    wpg_neg=_average('wpg_neg'))


def collection_for_stage(stage: int):
  return Stage1Metrics if stage == 1 else TrainMetrics


def nonfinite_losses(step_metrics: Mapping[str, np.ndarray]) -> Dict[str, bool]:
  """The `nonfinite_<name>` flags of a step that are set."""
  return {k[len('nonfinite_'):]: True for k, v in step_metrics.items()
          if k.startswith('nonfinite_') and bool(np.any(v))}
