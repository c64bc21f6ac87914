"""orbax checkpoints: train state + data-iterator position, periodic async saves, preemption.

A checkpoint holds `state` (step, params, optimizer state, rng) and `data` (the JSON state of the
input iterator), so a resumed run continues with the same step, rng and batches. orbax writes a
step to a temporary folder and renames it when complete, so `latest_step()` only ever sees
complete checkpoints. SIGTERM (TPU preemption, `kill`, Ctrl-\\) sets a flag that the training
loop polls; it then saves, waits for the write and exits cleanly.
"""

import signal
import threading
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


class CheckpointManager:
  """A thin wrapper over `ocp.CheckpointManager` for (train state, iterator state)."""

  def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                           enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
    """Saves if `step` is on the save interval (or `force`); returns whether it saved."""
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=force)

  def restore(self, step: int, abstract_state: Any) -> Tuple[Any, dict]:
    """Restores (state, data_state) of `step` onto the shardings of `abstract_state`."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored['state'], restored['data']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


class PreemptionFlag:
  """Set by SIGTERM; `should_stop()` agrees across hosts so every host saves the same step."""

  def __init__(self):
    self._event = threading.Event()
    self._previous = None

  def install(self) -> 'PreemptionFlag':
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def uninstall(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning('SIGTERM received: saving a checkpoint and stopping.')
    self._event.set()

  def should_stop(self) -> bool:
    stop = self._event.is_set()
    if jax.process_count() > 1:
      stop = bool(multihost_utils.process_allgather(stop).any())
    return stop


MODEL_CONFIG_FILE = 'model_config.json'
CONFIG_FILE = 'config.json'


def save_run_configs(workdir: str, config, model_config) -> None:
  """Writes the run's ConfigDict and resolved ModelConfig beside the checkpoints (process 0)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, MODEL_CONFIG_FILE), 'w', encoding='utf-8') as f:
    json.dump(dataclasses.asdict(model_config), f, indent=1)
  with open(os.path.join(workdir, CONFIG_FILE), 'w', encoding='utf-8') as f:
    f.write(config.to_json_best_effort(indent=1))


def load_trained(workdir: str, step: Optional[int] = None):
  """(ModelConfig, params, step) of a training run's checkpoint (the latest by default).

  Params are returned unboxed as numpy-backed jax arrays on the default device, in the layout of
  `MVPPretrainingModel` (or of the downstream model the run trained).
  """
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from mvp_jax.config import ModelConfig  # pylint: disable=g-import-not-at-top
  config_path = os.path.join(workdir, MODEL_CONFIG_FILE)
  if not os.path.exists(config_path):
    raise FileNotFoundError(f'{config_path} is missing: {workdir} is not an mvp-jax run.')
  with open(config_path, encoding='utf-8') as f:
    model_config = ModelConfig.from_dict(json.load(f))
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'{workdir}/checkpoints holds no complete checkpoint.')
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  params = _strip_boxes(restored['state']['params'])
  return model_config, nn.unbox(params), step


def _strip_boxes(tree):
  """Orbax restores nn.Partitioned leaves without a target as {'value': array}; unwrap them."""
  if isinstance(tree, dict):
    if set(tree) == {'value'} and not isinstance(tree['value'], dict):
      return tree['value']
    return {k: _strip_boxes(v) for k, v in tree.items()}
  return tree
