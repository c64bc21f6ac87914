"""clu metrics of training: losses, accuracies, gradient norm, learning rate; FLOP/s and MFU.

Accuracies are ratios of summed counts (`Ratio`), so merging steps weights every masked token,
pair or phrase equally rather than every step.
"""

from typing import Dict, Mapping, Optional, Sequence

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


def collection(averages: Sequence[str] = (), ratios: Sequence[str] = (),
               last_values: Sequence[str] = ()):
  """A clu Collection of training metrics: `loss`, the `averages` (per-step means), a
  `<name>_accuracy` Ratio of summed counts per name in `ratios`, the `last_values`, and always
  `grad_norm` (mean) and `learning_rate` (last)."""
  fields = {name: metrics.Average.from_output(name) for name in ('loss',) + tuple(averages)}
  fields.update({f'{name}_accuracy': Ratio.from_counts(name) for name in ratios})
  fields.update({name: metrics.LastValue.from_output(name) for name in last_values})
  fields.update(grad_norm=metrics.Average.from_output('grad_norm'),
                learning_rate=metrics.LastValue.from_output('learning_rate'))
  return metrics.Collection.create(**fields)


# Peak dense bfloat16 FLOP/s of ONE device, for MFU. Unknown devices (CPUs) use config.peak_flops.
PEAK_FLOPS = {'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5e': 197e12, 'TPU v5p': 459e12,
              'TPU v6 lite': 918e12, 'NVIDIA H100 80GB HBM3': 989e12, 'NVIDIA H200': 989e12,
              'NVIDIA A100-SXM4-80GB': 312e12, 'NVIDIA A100-SXM4-40GB': 312e12}


def peak_flops_per_device(device_kind: str, override: float = 0.0) -> Optional[float]:
  """`override` (config.peak_flops, per device) if set, else the table's value, else None."""
  return float(override) if override else PEAK_FLOPS.get(device_kind)


def throughput(flops_per_device_step: Optional[float], steps: int, seconds: float,
               num_devices: int, peak_per_device: Optional[float]) -> Dict[str, float]:
  """TFLOP/s and MFU of `steps` steps that took `seconds`.

  XLA's cost analysis of a compiled SPMD step counts the FLOPs of one device's program (the
  partitioned computation), so: per-device FLOP/s = flops · steps / seconds; global = that ·
  num_devices; MFU = per-device FLOP/s / per-device peak (= global / (peak · num_devices)).

  Returns:
    {'tflops_per_s_per_device', 'tflops_per_s_global'} and 'mfu' when the peak is known; {}
    without a FLOP count.
  """
  if not flops_per_device_step or seconds <= 0:
    return {}
  per_device = flops_per_device_step * steps / seconds
  out = {'tflops_per_s_per_device': per_device / 1e12,
         'tflops_per_s_global': per_device * num_devices / 1e12}
  if peak_per_device:
    out['mfu'] = per_device / peak_per_device
  return out


def nonfinite_losses(step_metrics: Mapping[str, np.ndarray]) -> Dict[str, bool]:
  """The `nonfinite_<name>` flags of a step that are set."""
  return {k[len('nonfinite_'):]: True for k, v in step_metrics.items()
          if k.startswith('nonfinite_') and bool(np.any(v))}
