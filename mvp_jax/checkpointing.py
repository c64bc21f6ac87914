"""orbax checkpoints: train state + data-iterator position, periodic async saves, preemption.

A checkpoint holds `state` (step, params, optimizer state, rng) and `data` (the JSON state of the
input iterator), so a resumed run continues with the same step, rng and batches. orbax writes a
step to a temporary folder and renames it when complete, so `latest_step()` only ever sees
complete checkpoints; a complete step that cannot be read (a damaged disk, a truncated copy) is
moved to `<workdir>/corrupt_checkpoints/` and the previous one restored
(`restore_with_fallback`). SIGTERM (TPU preemption, `kill`, Ctrl-\\) stops the run cleanly: the
training loop polls `PreemptionFlag.should_stop(step)` after every step, then saves, waits for the
write and exits. On one host a Python signal handler sets a flag; on several hosts the signal
goes to JAX's coordination service (set up by `jax.distributed.initialize`), and orbax's
`reached_preemption(step)` makes every host stop after the same step, even when only one host
got the signal.

The train state holds plain (unboxed) arrays, so a checkpoint's `params` is the nested dict of
the model's parameters. Beside the checkpoints sit the run's `config.json` and
`model_config.json`; `check_resume` compares them with a resumed run's before anything is
written.
"""

import dataclasses
import json
import signal
import threading
from typing import Any, Dict, List, Optional, Tuple

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from mvp_jax.config import ModelConfig

MODEL_CONFIG_FILE = 'model_config.json'
CONFIG_FILE = 'config.json'
CHECKPOINTS = 'checkpoints'
CORRUPT_CHECKPOINTS = 'corrupt_checkpoints'
# Config fields a resumed run may change (with a warning for WARNED_CHANGES); any other
# difference to the saved config.json is refused. Prefixes cover their sub-fields.
RESUMABLE_CHANGES = ('total_steps', 'num_epochs', 'optimizer.lr', 'log_every', 'eval_every',
                     'evals', 'eval_batch_size', 'checkpoint_every', 'keep_checkpoints',
                     'async_checkpointing', 'profile', 'peak_flops', 'distributed', 'init_from',
                     'init_skip', 'vqa_init_from_mlm')
WARNED_CHANGES = ('total_steps', 'num_epochs', 'optimizer.lr')


class CheckpointError(RuntimeError):
  """No checkpoint of a run could be restored, or a resume was refused."""


class CheckpointManager:
  """A thin wrapper over `ocp.CheckpointManager` for (train state, iterator state)."""

  def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                           enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> List[int]:
    return sorted(self._manager.all_steps())

  def reload(self) -> None:
    """Re-reads the steps on disk (after steps were moved away)."""
    self._manager.reload()

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

  def reached_preemption(self, step: int) -> bool:
    """Whether every host agrees to stop after `step` (JAX's preemption sync point)."""
    return self._manager.reached_preemption(step)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


class PreemptionFlag:
  """SIGTERM -> stop after the current step, the same step on every host.

  One process: a Python SIGTERM handler sets a flag. Several processes: no Python handler (it
  would replace the one of JAX's coordination service, which forwards a SIGTERM of any host to
  all of them); `should_stop` asks `CheckpointManager.reached_preemption(step)` instead, which
  answers True on every host at the same step.
  """

  def __init__(self):
    self._event = threading.Event()
    self._previous = None

  def install(self) -> 'PreemptionFlag':
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def uninstall(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning('SIGTERM received: saving a checkpoint and stopping.')
    self._event.set()

  def should_stop(self, step: int, manager: 'CheckpointManager') -> bool:
    if jax.process_count() > 1:
      return manager.reached_preemption(step)
    return self._event.is_set()


def has_checkpoints(workdir: str) -> bool:
  """Whether `workdir/checkpoints` holds a step folder (read-only: creates nothing)."""
  directory = epath.Path(workdir) / CHECKPOINTS
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def restore_with_fallback(manager: CheckpointManager, target: Any, workdir: str
                          ) -> Tuple[Any, Optional[dict], Optional[int]]:
  """(state, data_state, step) of the newest checkpoint that restores onto `target`'s shardings.

  Newer steps that fail to restore are moved to `<workdir>/corrupt_checkpoints/<step>` (so the
  run can save those steps again) after a warning naming the error. Returns (target, None,
  None) when there is no checkpoint; raises CheckpointError, moving nothing, when none restores.
  """
  failures = []
  for step in reversed(manager.all_steps()):
    try:
      state, data_state = manager.restore(step, target)
    except Exception as e:  # pylint: disable=broad-except  (orbax raises many kinds)
      logging.warning('Checkpoint step %d of %s cannot be restored: %s', step, workdir, e)
      failures.append((step, e))
      continue
    if failures and jax.process_index() == 0:
      aside = epath.Path(workdir) / CORRUPT_CHECKPOINTS
      aside.mkdir(parents=True, exist_ok=True)
      for bad, _ in failures:
        (epath.Path(workdir) / CHECKPOINTS / str(bad)).rename(aside / str(bad))
        logging.warning('Moved the unreadable checkpoint %d to %s; resuming from step %d.', bad,
                        aside, step)
    if failures:
      manager.reload()
    return state, data_state, step
  if failures:
    raise CheckpointError(f'{workdir}: no checkpoint could be restored: ' + '; '.join(
        f'step {step}: {type(e).__name__}: {e}' for step, e in failures))
  return target, None, None


def _flatten(tree: Any, prefix: str = '') -> Dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f'{prefix}{key}.'))
    return out if tree else {prefix[:-1]: {}}
  return {prefix[:-1]: tree}


def _allowed(name: str, prefixes) -> bool:
  return any(name == p or name.startswith(p + '.') for p in prefixes)


def check_resume(workdir: str, config: Any = None,
                 model_config: Optional[ModelConfig] = None) -> None:
  """Refuses (CheckpointError naming the fields) to resume `workdir` with another config.

  Reads the saved `config.json` / `model_config.json` and writes nothing, so a refused resume
  leaves the run directory as it was. Any ModelConfig difference, and any config difference
  outside RESUMABLE_CHANGES, is refused; WARNED_CHANGES are logged as warnings. `config` is
  compared with config.json and `model_config` with model_config.json, each when given (the
  trainer compares config.json before it prepares data, model_config.json after).
  """
  differences, warnings = [], []
  model_path = epath.Path(workdir) / MODEL_CONFIG_FILE
  if model_config is not None and model_path.exists():
    saved = json.loads(model_path.read_text(encoding='utf-8'))
    new = dataclasses.asdict(model_config)
    differences += [f'model.{k}: saved {saved.get(k)!r}, now {new.get(k)!r}'
                    for k in sorted(set(saved) | set(new)) if saved.get(k) != new.get(k)]
  config_path = epath.Path(workdir) / CONFIG_FILE
  if config is not None and config_path.exists():
    saved = _flatten(json.loads(config_path.read_text(encoding='utf-8')))
    new = _flatten(json.loads(config.to_json_best_effort()))
    for name in sorted(set(saved) | set(new)):
      if saved.get(name) == new.get(name):
        continue
      line = f'{name}: saved {saved.get(name)!r}, now {new.get(name)!r}'
      if _allowed(name, WARNED_CHANGES):
        warnings.append(line)
      elif not _allowed(name, RESUMABLE_CHANGES):
        differences.append(line)
  if differences:
    raise CheckpointError(
        f'{workdir} holds checkpoints of a run with another config; refusing to resume it '
        f'(nothing was written). Differences: ' + '; '.join(differences) + '. Use a new '
        f'--workdir, or the saved config.')
  for line in warnings:
    logging.warning('Resuming %s with a changed %s.', workdir, line)


def save_run_configs(workdir: str, config, model_config: ModelConfig) -> None:
  """Writes the run's ConfigDict and resolved ModelConfig beside the checkpoints (process 0)."""
  if jax.process_index() != 0:
    return
  directory = epath.Path(workdir)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / MODEL_CONFIG_FILE).write_text(
      json.dumps(dataclasses.asdict(model_config), indent=1), encoding='utf-8')
  (directory / CONFIG_FILE).write_text(config.to_json_best_effort(indent=1), encoding='utf-8')


def load_trained(workdir: str, step: Optional[int] = None):
  """(ModelConfig, params, step) of a training run's checkpoint (the latest by default).

  Params are returned unboxed (a nested dict of arrays) on the default device, in the layout of
  `MVPPretrainingModel` or of the downstream model the run trained.
  """
  config_path = epath.Path(workdir) / MODEL_CONFIG_FILE
  if not config_path.exists():
    raise FileNotFoundError(f'{config_path} is missing: {workdir} is not an mvp-jax run.')
  model_config = ModelConfig.from_dict(json.loads(config_path.read_text(encoding='utf-8')))
  state, _, step = read_checkpoint(workdir, step, data=False)
  return model_config, state['params'], step


def read_checkpoint(workdir: str, step: Optional[int] = None, *, data: bool = True):
  """(state, data_state, step) of a run's checkpoint (the latest by default), without a model.

  `state` is the whole saved train state as nested dicts of arrays on this process's first
  device (step, params, optimizer state, rng), whatever mesh or hosts saved it; `data_state` is
  the input iterator's JSON position (None with `data=False`).
  """
  manager = ocp.CheckpointManager(epath.Path(workdir) / CHECKPOINTS,
                                  item_handlers={'state': ocp.StandardCheckpointHandler(),
                                                 'data': ocp.JsonCheckpointHandler()})
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'{workdir}/checkpoints holds no complete checkpoint.')
  # Restore onto this process's first device whatever mesh or hosts saved it: a run of
  # several hosts reads back on one machine.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  metadata = manager.item_metadata(step)['state']
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata,
      is_leaf=lambda m: isinstance(m, ocp.metadata.ArrayMetadata))
  items = dict(state=ocp.args.StandardRestore(target))
  if data:
    items['data'] = ocp.args.JsonRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  manager.close()
  return restored['state'], restored['data'] if data else None, step
