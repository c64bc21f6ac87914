"""Small real-format sources for the tests of input_pipeline/sources: Karpathy JSON + JPEGs,
webdataset tars with good and corrupt samples, a saved Hugging Face dataset, given features."""

import io
import json
import os
import tarfile

import numpy as np
from PIL import Image

from input_pipeline import pretraining
from input_pipeline import train_vocab
from input_pipeline.sources import regions as regions_lib
from input_pipeline.sources import samples as samples_lib

WORDS = ('a man rides a brown horse on the beach dog runs in the park two cats sleep on red sofa '
         'woman holds an umbrella boat sails across blue water child plays with ball').split()
FEATURE_DIM = 14


def jpeg(h, w, seed) -> bytes:
  rng = np.random.default_rng(seed)
  base = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
  pixels = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
  data = io.BytesIO()
  Image.fromarray(pixels).save(data, 'JPEG', quality=90)
  return data.getvalue()


def caption(seed, n_words=6) -> str:
  rng = np.random.default_rng(seed)
  return ' '.join(rng.choice(WORDS, n_words))


def write_vocab(path) -> str:
  train_vocab.write_vocab(sorted(set(WORDS)) + ['.', 'horses', 'dogs'], str(path))
  return str(path)


# (cocoid, folder, split, number of captions). 6-caption images exist in the real COCO JSON.
KARPATHY_IMAGES = [
    (391895, 'val2014', 'test', 5), (522418, 'val2014', 'test', 6),
    (184613, 'train2014', 'train', 5), (318219, 'train2014', 'train', 5),
    (554625, 'train2014', 'train', 5), (397133, 'val2014', 'restval', 5),
    (37777, 'val2014', 'val', 5), (252219, 'val2014', 'test', 5),
    (87038, 'val2014', 'restval', 7),
]


def write_karpathy_coco(folder) -> dict:
  """dataset_coco.json + train2014/ val2014/ JPEGs in `folder`; returns {split: [ids]} in order."""
  images, splits = [], {}
  for i, (cocoid, sub, split, n) in enumerate(KARPATHY_IMAGES):
    name = f'COCO_{sub}_{cocoid:012d}.jpg'
    os.makedirs(os.path.join(folder, sub), exist_ok=True)
    with open(os.path.join(folder, sub, name), 'wb') as f:
      f.write(jpeg(24 + 4 * i, 32 + 2 * i, i))
    images.append({'filepath': sub, 'filename': name, 'imgid': i, 'split': split,
                   'cocoid': cocoid, 'sentids': list(range(10 * i, 10 * i + n)),
                   'sentences': [{'raw': caption(100 * i + k) + ' .', 'imgid': i,
                                  'sentid': 10 * i + k, 'tokens': []} for k in range(n)]})
    splits.setdefault(split, []).append(str(cocoid))
  with open(os.path.join(folder, 'dataset_coco.json'), 'w') as f:
    json.dump({'dataset': 'coco', 'images': images}, f)
  return splits


def write_karpathy_flickr(folder, n=5) -> dict:
  os.makedirs(os.path.join(folder, 'flickr30k-images'), exist_ok=True)
  images, splits = [], {}
  for i in range(n):
    name = f'{1000092795 + i}.jpg'
    split = ['train', 'train', 'val', 'test', 'test'][i % 5]
    with open(os.path.join(folder, 'flickr30k-images', name), 'wb') as f:
      f.write(jpeg(20, 28, 50 + i))
    images.append({'filename': name, 'imgid': i, 'split': split,
                   'sentences': [{'raw': caption(7 * i + k)} for k in range(5)]})
    splits.setdefault(split, []).append(name[:-4])
  with open(os.path.join(folder, 'dataset_flickr30k.json'), 'w') as f:
    json.dump({'dataset': 'flickr30k', 'images': images}, f)
  return splits


def _add(tar, name, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_webdataset(folder, num_shards=3, per_shard=4, corrupt=True) -> dict:
  """img2dataset-style shards; returns {'good': [keys], 'bad': {(shard, key): kind}}."""
  os.makedirs(folder, exist_ok=True)
  good, bad = [], {}
  for s in range(num_shards):
    shard = f'{s:05d}'
    with tarfile.open(os.path.join(folder, f'{shard}.tar'), 'w') as tar:
      for k in range(per_shard):
        key = f'{s:05d}{k:04d}'
        _add(tar, f'{key}.jpg', jpeg(20 + k, 24 + s, 10 * s + k))
        if k % 2:
          _add(tar, f'{key}.txt', caption(10 * s + k).encode())
        else:
          _add(tar, f'{key}.json', json.dumps({'caption': caption(10 * s + k), 'key': key,
                                               'status': 'success'}).encode())
        good.append(key)
      if corrupt and s == 0:
        _add(tar, '000009000.jpg', jpeg(20, 20, 99))                    # no caption
        bad[(shard, '000009000')] = 'missing_caption'
        _add(tar, '000009001.txt', b'a caption without an image')       # no image
        bad[(shard, '000009001')] = 'missing_image'
        _add(tar, '000009002.jpg', jpeg(20, 20, 98))
        _add(tar, '000009002.txt', b'   ')                              # empty caption
        bad[(shard, '000009002')] = 'bad_caption'
        _add(tar, '000009003.jpg', b'this is not a jpeg')               # undecodable
        _add(tar, '000009003.txt', b'a dog in the park')
        bad[(shard, '000009003')] = 'image_unreadable'
  if corrupt:  # A shard cut mid-way: its first sample survives, the broken one is named.
    path = os.path.join(folder, f'{num_shards:05d}.tar')
    with tarfile.open(path, 'w') as tar:
      _add(tar, '000990000.jpg', jpeg(22, 22, 77))
      _add(tar, '000990000.txt', b'a boat on blue water')
      _add(tar, '000990001.jpg', jpeg(64, 64, 78) * 3)
      _add(tar, '000990001.txt', b'a cat on a red sofa')
    data = open(path, 'rb').read()
    with open(path, 'wb') as f:
      f.write(data[:3072 + 300])  # inside the data of 000990001.jpg
    good.append('000990000')
    bad[(f'{num_shards:05d}', '000990001')] = 'truncated_shard'
  return {'good': good, 'bad': bad}


def write_hf_dataset(folder, n_train=5, n_test=3):
  """A DatasetDict with an Image column, a caption column (str or list) and an id column."""
  import datasets  # pylint: disable=g-import-not-at-top
  splits = {}
  for split, n, offset in (('train', n_train, 0), ('test', n_test, 100)):
    rows = {'image': [{'bytes': jpeg(18 + i, 26, offset + i), 'path': None} for i in range(n)],
            'caption': [caption(offset + i) for i in range(n)],
            'photo_id': [f'p{offset + i}' for i in range(n)]}
    features = datasets.Features({'image': datasets.Image(), 'caption': datasets.Value('string'),
                                  'photo_id': datasets.Value('string')})
    splits[split] = datasets.Dataset.from_dict(rows, features=features)
  datasets.DatasetDict(splits).save_to_disk(str(folder))
  return {split: [f'p{o + i}' for i in range(n)]
          for split, n, o in (('train', n_train, 0), ('test', n_test, 100))}


class RandomRegions:
  """A fast featurizer: decodes each image with PIL (bad images are problems) and gives it 5
  regions of features that are a fixed function of the image id."""

  feature_dim = FEATURE_DIM

  def settings(self):
    return {'kind': 'random', 'feature_dim': FEATURE_DIM}

  def __call__(self, shard, samples):
    out, problems = {}, []
    for sample in samples:
      try:
        image = Image.open(io.BytesIO(sample.image))
        image.load()
      except OSError as e:
        problems.append(samples_lib.Problem(shard, sample.image_id, 'image_unreadable', str(e)))
        continue
      w, h = image.size
      seed = int.from_bytes(sample.image_id.encode()[-8:].rjust(8, b'\0'), 'little') % 2**32
      feats = np.random.default_rng(seed).normal(size=(5, FEATURE_DIM)).astype(np.float32)
      boxes = np.float32([[0, 0, w, h]] * 5)
      out[sample.image_id] = samples_lib.Regions((h, w), feats, boxes,
                                                 ['dog', 'horse', '', 'boat', 'dog'])
    return out, problems


def given_features(source, folder, featurizer=None) -> regions_lib.GivenRegions:
  """Saves `featurizer`'s regions of every shard of `source` as a GivenRegions folder."""
  featurizer = featurizer or RandomRegions()
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, regions_lib.FEATURES_FILE), 'w') as f:
    json.dump({'feature_dim': featurizer.feature_dim, 'settings': featurizer.settings()}, f)
  for shards in source.splits().values():
    for shard in shards:
      samples, problems = source.read(shard)
      found, more = featurizer(shard, samples)
      regions_lib.save_shard_regions(str(folder), shard, found, problems + more)
  return regions_lib.GivenRegions(str(folder))


def tiny_siglip(folder, labels=('dog', 'cat', 'tree', 'boat')):
  """A random SiglipModel folder (16-wide towers, 32 px, 8 px patches), its SentencePiece
  tokenizer and labels.txt, in the formats transformers and sentencepiece write."""
  import sentencepiece  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  text = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
              vocab_size=30, max_position_embeddings=8, bos_token_id=None, eos_token_id=1,
              pad_token_id=1)
  vision = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                image_size=32, patch_size=8)
  torch.manual_seed(0)
  transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision)
                           ).save_pretrained(folder)
  corpus = folder / 'corpus.txt'
  corpus.write_text('\n'.join(['a photo of a dog', 'a photo of a cat', 'tree boat'] * 30))
  sentencepiece.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(folder / 'spiece'), vocab_size=16, pad_id=0, eos_id=1,
      unk_id=2, bos_id=-1, minloglevel=2)
  (folder / 'labels.txt').write_text('\n'.join(labels))
  return folder


# The retrieval task's lengths (mvp_jax.tasks.retrieval.DEFAULT_LENGTHS).
TASK_LENGTHS = pretraining.Lengths(max_seq_length=50, max_phrases=5, max_tag_length=20,
                                   max_img_seq_length=50)


def plain(value):
  """A decoded feature as nested lists of Python values (ragged tf.data values included)."""
  if hasattr(value, 'to_list'):
    value = value.to_list()
  if isinstance(value, np.ndarray):
    value = value.tolist()
  if isinstance(value, (list, tuple)):
    return [plain(v) for v in value]
  return value
