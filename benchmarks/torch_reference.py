r"""The authors' PyTorch base pre-training step, timed (the reference column of issue 15).

  python -m benchmarks.torch_reference --mvp_pytorch=/path/to/mvp_pytorch --batch_size=8

`--mvp_pytorch` is a checkout of github.com/Junction4Nako/mvp_pytorch (nothing of it is in this
repository). Their `oscar/modeling/modeling_vlbert.py:BiBertImgForPreTraining` is built at the
base size (12 layers split 6+6+6, 768 hidden, 86,051 word rows of which 30,522 are words, 2054-d
regions, no region LayerNorm, dropout 0.1) and trained as `oscar/run_pretrain_ml.py` does: the
forward with all five losses (MCR, ITC, MLM, ITM with hard negatives, WPG 'sample'),
`loss.backward()`, `clip_grad_norm_`, their `AdamW` with the decay / no-decay groups, scheduler
step, `zero_grad`. fp32, `torch.set_num_threads(--threads)`, the same synthetic batch as
`benchmarks.base_step` (`benchmarks.base_batch`). Prints one `key=value` line: mean s/step over
`--steps` steps after `--warmup` untimed ones, each step's time, and the process's peak RSS.

Their bundled `transformers/pytorch_transformers` is put in front of the installed
`transformers` under that name for this process only; `anytree` (imported by their beam search,
unused here) is replaced by an empty module when it is not installed.
"""

import json
import os
import resource
import sys
import time
import types

import numpy as np
from absl import app
from absl import flags

from benchmarks import base_batch

_PATH = flags.DEFINE_string('mvp_pytorch', None, 'Checkout of Junction4Nako/mvp_pytorch.')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Batch size.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed steps first.')
_THREADS = flags.DEFINE_integer('threads', 2, 'torch.set_num_threads.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the weights and of the batch.')
flags.mark_flag_as_required('mvp_pytorch')

# The base pre-training model of the paper (spec section 1.1; state_dict_shapes.json).
BASE = dict(vocab_size=86051, only_word_size=30522, img_feature_dim=2054, qa_answer_size=3129)


def import_authors(path: str):
  """(BiBertImgForPreTraining, BertConfig, AdamW, WarmupLinearSchedule) from the checkout."""
  modeling = os.path.join(path, 'oscar', 'modeling', 'modeling_vlbert.py')
  bundled = os.path.join(path, 'transformers', 'pytorch_transformers')
  for needed in (modeling, bundled):
    if not os.path.exists(needed):
      raise FileNotFoundError(f'--mvp_pytorch={path}: {needed} is missing; expected a checkout '
                              'of github.com/Junction4Nako/mvp_pytorch.')
  sys.path.insert(0, path)
  package = types.ModuleType('transformers')
  package.__path__ = [os.path.join(path, 'transformers')]
  sys.modules['transformers'] = package
  try:
    import anytree  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    sys.modules['anytree'] = types.ModuleType('anytree')
  from oscar.modeling.modeling_vlbert import BiBertImgForPreTraining  # pylint: disable=import-outside-toplevel
  from transformers.pytorch_transformers import (  # pylint: disable=import-outside-toplevel
      AdamW, BertConfig, WarmupLinearSchedule)
  return BiBertImgForPreTraining, BertConfig, AdamW, WarmupLinearSchedule


def build(path: str):
  """The model, optimiser and schedule as run_pretrain_ml.py sets them up (lr 5e-5, decay
  0.01, eps 1e-8, linear warmup 10k of 1M steps)."""
  import torch  # pylint: disable=import-outside-toplevel
  model_cls, config_cls, adamw, schedule_cls = import_authors(path)
  config = config_cls(BASE['vocab_size'], hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072, hidden_dropout_prob=0.1,
                      attention_probs_dropout_prob=0.1, max_position_embeddings=512,
                      type_vocab_size=2)
  config.only_word_size = BASE['only_word_size']
  config.img_feature_dim = BASE['img_feature_dim']
  config.img_feature_type = 'faster_r-cnn'
  config.use_img_layernorm = 0
  config.img_layer_norm_eps = 1e-12
  config.qa_answer_size = BASE['qa_answer_size']
  config.num_contrast_classes = 2
  config.torchscript = True  # their pre-training config: tie_weights() clones the decoders
  config.max_text_seq_length = base_batch.TEXT
  torch.manual_seed(_SEED.value)
  model = model_cls(config)
  model.train()
  no_decay = ['bias', 'LayerNorm.bias', 'LayerNorm.weight']
  named = list(model.named_parameters())
  groups = [dict(params=[p for n, p in named if not any(nd in n for nd in no_decay)],
                 weight_decay=0.01),
            dict(params=[p for n, p in named if any(nd in n for nd in no_decay)],
                 weight_decay=0.0)]
  optimizer = adamw(groups, lr=5e-5, eps=1e-8)
  scheduler = schedule_cls(optimizer, warmup_steps=10_000, t_total=1_000_000)
  return model, optimizer, scheduler


def main(argv):
  del argv
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(_THREADS.value)
  model, optimizer, scheduler = build(_PATH.value)
  batch = base_batch.synthetic_batch(np.random.default_rng(_SEED.value), _BATCH.value)
  # Their loader labels the whole visual stream: tags, then -1 on every region.
  batch['mlm_labels_b'] = np.pad(batch['mlm_labels_b'], ((0, 0), (0, base_batch.REGIONS)),
                                 constant_values=-1)
  tensors = {k: torch.from_numpy(v.astype(np.float32 if k == 'img_feats' else np.int64))
             for k, v in batch.items()}

  def step():
    outputs = model(input_ids_a=tensors['input_ids_a'], token_type_ids_a=tensors['token_type_ids_a'],
                    attention_mask_a=tensors['attention_mask_a'],
                    masked_lm_labels_a=tensors['mlm_labels_a'], input_ids_b=tensors['input_ids_b'],
                    img_feats=tensors['img_feats'], token_type_ids_b=tensors['token_type_ids_b'],
                    attention_mask_b=tensors['attention_mask_b'],
                    masked_lm_labels_b=tensors['mlm_labels_b'],
                    phrase_index=tensors['phrase_index'], img_index=tensors['img_index'],
                    max_tag_length=base_batch.TAGS)
    total = outputs[0]
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return [float(x) for x in outputs]

  for _ in range(_WARMUP.value):
    losses = step()
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    losses = step()
    times.append(time.perf_counter() - start)
  if not np.all(np.isfinite(losses)):
    raise RuntimeError(f'Non-finite losses (total, mcr, itc, mlm, itm, wpg): {losses}')
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
  step_s = float(np.mean(times))
  print(f'side=torch batch={_BATCH.value} threads={_THREADS.value} step_s={step_s:.3f} '
        f'examples_per_s={_BATCH.value / step_s:.2f} peak_rss_gib={peak:.2f} '
        f'step_times={json.dumps([round(t, 3) for t in times])} '
        f'losses={json.dumps([round(x, 4) for x in losses])} torch={torch.__version__}',
        flush=True)


if __name__ == '__main__':
  app.run(main)
