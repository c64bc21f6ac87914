"""Writers of small VinVL-format files (features.tsv, predictions.tsv, .lineidx, captions)."""

import base64
import dataclasses
import json
import os

import numpy as np

ROI_DIM = 2048
CLASSES = ('dog', 'man', 'horse', 'tree', 'car', 'hat')


@dataclasses.dataclass
class FakeImage:
  """One image: roi float32 [N, 2048], rects float32 [N, 4] in pixels, classes [N]."""
  image_id: str
  roi: np.ndarray
  rects: np.ndarray
  classes: list
  height: int
  width: int

  def box6(self) -> np.ndarray:
    """Normalised box dims [N, 6], computed independently of the code under test."""
    x1, y1, x2, y2 = self.rects.astype(np.float64).T
    w, h = self.width, self.height
    return np.stack([x1 / w, y1 / h, x2 / w, y2 / h, (x2 - x1) / w, (y2 - y1) / h],
                    axis=1).astype(np.float32)

  def features(self, with_box: bool = True) -> np.ndarray:
    return np.concatenate([self.roi, self.box6()], 1) if with_box else self.roi


def make_image(rng: np.random.Generator, image_id: str, num_boxes: int, height: int = 480,
               width: int = 640) -> FakeImage:
  x1 = rng.uniform(0, width / 2, num_boxes)
  y1 = rng.uniform(0, height / 2, num_boxes)
  x2 = x1 + rng.uniform(1, width / 2, num_boxes)
  y2 = y1 + rng.uniform(1, height / 2, num_boxes)
  rects = np.stack([x1, y1, x2, y2], 1).astype(np.float32)
  roi = rng.standard_normal((num_boxes, ROI_DIM)).astype(np.float32)
  classes = [CLASSES[i] for i in rng.integers(0, len(CLASSES), num_boxes)]
  return FakeImage(image_id, roi, rects, classes, height, width)


def encode(values: np.ndarray) -> str:
  return base64.b64encode(np.ascontiguousarray(values, np.float32).tobytes()).decode('ascii')


def feature_line(image_id: str, features: np.ndarray, num_boxes: int = None) -> str:
  num_boxes = features.shape[0] if num_boxes is None else num_boxes
  return f'{image_id}\t{num_boxes}\t{encode(features)}'


def prediction_json(image: FakeImage, gt_classes=None, **overrides) -> dict:
  objects = [{'class': c, 'conf': 0.9, 'rect': r.tolist()}
             for c, r in zip(image.classes, image.rects)]
  data = {'objects': objects, 'image_h': image.height, 'image_w': image.width}
  if gt_classes is not None:
    data['gt_objects'] = [{'class': c, 'rect': [0, 0, 1, 1]} for c in gt_classes]
  data.update(overrides)
  return data


def prediction_line(image: FakeImage, gt_classes=None, **overrides) -> str:
  return f'{image.image_id}\t{json.dumps(prediction_json(image, gt_classes, **overrides))}'


def extract_line(image: FakeImage) -> str:
  """A tools/img_feat_extract.py row; its boxes are normalised by the image size."""
  return f'{image.image_id}\t' + json.dumps({'feature': encode(image.features()),
                                             'predictions': image.classes})


def write_tsv(path, lines, lineidx: bool = False, index_ids=None) -> str:
  """Writes `lines`; optionally the .lineidx and imageid2idx.json ({id: row}) beside it."""
  data = [(line + '\n').encode('utf-8') for line in lines]
  with open(path, 'wb') as f:
    f.write(b''.join(data))
  if lineidx:
    offsets = np.cumsum([0] + [len(d) for d in data[:-1]])
    with open(os.path.splitext(path)[0] + '.lineidx', 'w') as f:
      f.write(''.join(f'{o}\n' for o in offsets))
  if index_ids is not None:
    write_json(os.path.join(os.path.dirname(path), 'imageid2idx.json'),
               {image_id: row for row, image_id in enumerate(index_ids)})
  return str(path)


def write_json(path, obj) -> str:
  with open(path, 'w') as f:
    json.dump(obj, f)
  return str(path)


def caption_list(captions: dict) -> list:
  """[{"image_id", "caption"}] with the images' captions interleaved (round robin)."""
  entries, k = [], 0
  while any(k < len(c) for c in captions.values()):
    entries.extend({'image_id': i, 'caption': c[k]} for i, c in captions.items() if k < len(c))
    k += 1
  return entries
