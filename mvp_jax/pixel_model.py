"""The vision tower inside MVPTR: pixels + region boxes -> region features, in the same graph.

With `ModelConfig.vision` set (`vision/pixel_config.py`) the backbone holds a SigLIP-style ViT
(`vision/towers.VisionTower`, no MAP head) at `backbone/vision_tower` and `encode_visual` calls
`region_features` instead of reading `img_feats`:

  pixels [B, S, S, 3] normalised (SigLIP: [-1, 1]) -> tower -> patch states [B, N, W]
  region_boxes [B, R, 4] normalised (x0, y0, x1, y1) -> pooling weights [B, R, N]
  (`vision/regions.py`: 'bilinear' RoIAlign or 'area') -> pooled [B, R, W] ++ 6 box numbers
  = [B, R, W + 6], exactly the rows `vision/extractor.RegionExtractor` writes offline, so a
  frozen tower in the graph and precomputed features give the same model outputs.

Region validity is the batch's `attention_mask_b` (padded boxes hold 0 and are masked).
The tower's parameters carry the logical axis names of towers.py and are sharded by the run's
rules like the rest; `optimizer_subtrees` gives the trainer its optimiser group (frozen, or its
own learning-rate multiplier and weight decay). Everything else here serves the other ends:
`dummy_inputs` (init), `tower_params_from` (weights.init_from) and `image_inputs` (Predictor).
"""

from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mvp_jax import optim
from mvp_jax.vision import images as images_lib
from mvp_jax.vision import regions as regions_lib
from mvp_jax.vision import towers
from mvp_jax.vision.pixel_config import PixelConfig

Array = jax.Array
TOWER_PATH = ('backbone', 'vision_tower')
TOWER_PREFIX = '/'.join(TOWER_PATH)


def tower_module(model_config) -> towers.VisionTower:
  """The backbone's tower (compute dtype of the model, parameters float32); the backbone
  assigns it to `vision_tower` (TOWER_PATH)."""
  return towers.VisionTower(model_config.vision.siglip_config(model_config.dtype))


def normalise(pixels: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] -> float32 in [-1, 1], SigLIP's input range (as the offline extractor)."""
  return np.asarray(pixels, np.float32) * np.float32(2 / 255) - np.float32(1)


def region_features(tower: towers.VisionTower, batch: Dict[str, Array],
                    spec: PixelConfig) -> Array:
  """float32 [B, R, spec.feature_dim] from batch['pixels'] [B, S, S, 3] and ['region_boxes']
  [B, R, 4] (bins * bins pooled tower states + 6 box numbers; the states of the whole image's
  patches in each box, or with `spec.crops` of each box's own crop through the tower)."""
  missing = [k for k in ('pixels', 'region_boxes') if k not in batch]
  if missing:
    raise ValueError(f'model.vision is set: the batch needs {missing} (pixel mode, '
                     f'input_pipeline/features.py); got keys {sorted(batch)}.')
  pixels, boxes = batch['pixels'], batch['region_boxes']
  if pixels.shape[1:] != (spec.image_size, spec.image_size, 3):
    raise ValueError(f'pixels must be [B, {spec.image_size}, {spec.image_size}, 3] '
                     f'(model.vision.image_size), got {pixels.shape}.')
  if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != pixels.shape[0]:
    raise ValueError(f'region_boxes must be [B, R, 4], got {boxes.shape} for {pixels.shape[0]} '
                     'images.')

  def encode(images):
    out = tower(images)
    return dict(out, tokens=jax.lax.stop_gradient(out['tokens']) if spec.freeze
                else out['tokens'])

  if spec.crops:
    return regions_lib.crop_region_features(encode, pixels, boxes, spec.image_size, spec.pooling,
                                            spec.samples, spec.bins)[0]
  out = encode(pixels)
  return regions_lib.region_features(out['tokens'], out['grid'], boxes, spec.pooling,
                                     spec.samples, spec.bins)[0]


def dummy_inputs(model_config, batch_size: int, num_regions: int) -> Dict[str, Array]:
  """Zero pixels and whole-image boxes of the right shapes (for init / shape inference)."""
  size = model_config.vision.image_size
  boxes = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0, 1.0], jnp.float32),
                           (batch_size, num_regions, 4))
  return dict(pixels=jnp.zeros((batch_size, size, size, 3), jnp.float32), region_boxes=boxes)


def optimizer_subtrees(model_config) -> Tuple[optim.Subtree, ...]:
  """The tower's optimiser group (`optim.create_optimizer(..., subtrees=...)`); () without."""
  spec = model_config.vision
  if spec is None:
    return ()
  decay = None if spec.weight_decay < 0 else spec.weight_decay
  return (optim.Subtree(TOWER_PREFIX, lr_multiplier=spec.lr_multiplier, weight_decay=decay,
                        frozen=spec.freeze),)


def tower_params_from(siglip_params: Dict[str, Any], target: Dict[str, Any],
                      where: str) -> Tuple[Dict[str, Any], list, list]:
  """The tower subtree `target` filled from a SigLIP checkpoint's image tower.

  Args:
    siglip_params: `vision.checkpoint.load(path)[1]` (its 'img' subtree is used).
    target: the model's `backbone/vision_tower` subtree (arrays or shapes).
    where: the checkpoint's name, for errors.

  Returns:
    (filled subtree, loaded 'a/b' names, checkpoint names not used (the MAP head, the text tower)).
  Raises ValueError naming the parameter on a missing tensor or a shape mismatch.
  """
  flat = lambda tree, prefix=(): {k: v for key, sub in tree.items() for k, v in (
      flat(sub, prefix + (key,)).items() if isinstance(sub, dict) else [(prefix + (key,), sub)])}
  source, wanted = flat(dict(siglip_params.get('img', {}))), flat(dict(target))
  problems = [f'{"/".join(p)}: missing' for p in wanted if p not in source]
  problems += [f'{"/".join(p)}: checkpoint {tuple(np.shape(source[p]))}, model '
               f'{tuple(leaf.shape)}' for p, leaf in wanted.items()
               if p in source and tuple(np.shape(source[p])) != tuple(leaf.shape)]
  if problems:
    raise ValueError(f'{where} does not fit model.vision ({len(problems)} problems): '
                     + '; '.join(problems[:6]) + '. Set model.vision.size / widths to the '
                     "checkpoint's (or image_size / posemb_grid to its grid).")
  from mvp_jax import weights  # pylint: disable=g-import-not-at-top
  out: Dict[str, Any] = {}
  for path, leaf in wanted.items():
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = weights._place(source[path], leaf)  # pylint: disable=protected-access
  unused = [f'{top} (the whole subtree)' for top in siglip_params if top != 'img']
  unused += ['img/' + '/'.join(p) for p in source if p not in wanted]
  return out, ['/'.join(TOWER_PATH + p) for p in wanted], unused


def split_tower(params: Dict[str, Any], model_config, source, tower: Optional[str]):
  """(params without the tower, the tower subtree) when the tower has its own origin: a model
  with a tower whose MVPTR source (`weights.Source`) is not a pixel run, or with `tower` given;
  else (params, None): the tower comes with the rest (or there is none)."""
  if model_config.vision is None:
    return params, None
  own = (source is not None and source.tree is not None and not tower
         and any(p[:2] == TOWER_PATH for p in source.tree))
  if own:
    return params, None
  backbone = dict(params['backbone'])
  part = backbone.pop(TOWER_PATH[1])
  return dict(params, backbone=backbone), part


def join_tower(rest: Dict[str, Any], part: Optional[Dict[str, Any]], tower: Optional[str],
               report) -> Dict[str, Any]:
  """`rest` with the tower put back: from the SigLIP checkpoint `tower` (`vision.checkpoint.load`)
  or fresh; records what it did in the `weights.LoadReport`."""
  from mvp_jax.vision import checkpoint  # pylint: disable=g-import-not-at-top
  if part is None:
    if TOWER_PATH[1] in rest['backbone']:
      report.origins[TOWER_PREFIX] = f'{report.source} (the run\'s own tower)'
    return rest
  where = 'random initialisation'
  if tower:
    part, loaded, unused = tower_params_from(checkpoint.load(tower)[1], part, tower)
    report.loaded += loaded
    where = f'the SigLIP checkpoint {tower} ({len(loaded)} parameters)'
    report.notes.append(f'not used from {tower}: {", ".join(unused[:6])}'
                        + (f' and {len(unused) - 6} more.' if len(unused) > 6 else '.'))
  else:
    report.fresh += [TOWER_PREFIX + '/' + name for name in flat_names(part)]
  report.origins[TOWER_PREFIX] = where
  return dict(rest, backbone=dict(rest['backbone'], **{TOWER_PATH[1]: part}))


def flat_names(tree: Dict[str, Any], prefix: str = '') -> list:
  """'a/b/c' names of the leaves of a nested dict."""
  return [n for k, v in tree.items() for n in (
      flat_names(v, f'{prefix}{k}/') if isinstance(v, dict) else [prefix + k])]


def image_inputs(image: Any, spec: PixelConfig,
                 boxes: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, Tuple[int,
                                                                                          int]]:
  """A plain RGB image (uint8 [H, W, 3] array, PIL image or file path) for the tower.

  Returns (pixels float32 [S, S, 3] normalised, boxes float32 [R, 4] normalised: the given pixel
  boxes [R, 4] of the original image, else the grid_cells x grid_cells cells and the whole image,
  (height, width) of the original image).
  """
  size = spec.image_size
  if isinstance(image, str) or hasattr(image, '__fspath__'):
    decoded = images_lib.read(image, size)
    pixels, height, width = decoded.pixels, decoded.height, decoded.width
  else:
    if hasattr(image, 'convert'):  # PIL
      image = np.asarray(image.convert('RGB'))
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
      raise ValueError(f'An RGB image must be uint8 [H, W, 3] or a path, got {image.dtype} '
                       f'{image.shape}.')
    height, width = image.shape[:2]
    from PIL import Image  # pylint: disable=g-import-not-at-top
    pixels = image if (height, width) == (size, size) else np.asarray(
        Image.fromarray(image).resize((size, size), Image.BICUBIC))
  if boxes is None:
    norm = regions_lib.grid_boxes(spec.grid_cells)
  else:
    norm = regions_lib.normalise_boxes(boxes, height, width)
  return normalise(pixels), norm, (height, width)


def image_record(image: Any, spec: PixelConfig, feature_dim: int) -> Dict[str, Any]:
  """An image record (`input_pipeline/features.py`) of a plain RGB image (array, PIL or path)
  for a pixel model: its grid_cells x grid_cells cells and the whole image as regions, no tags,
  the tower's inputs under 'pixels' / 'region_boxes' ('region_features' are zeros: only their
  count is read when the example is laid out)."""
  pixels, boxes, (height, width) = image_inputs(image, spec)
  return {'image_id': str(image) if isinstance(image, str) else 'image', 'image_png': b'',
          'image_size': np.array([height, width], np.int32), 'pixels': pixels,
          'region_boxes': boxes, 'boxes': boxes * np.float32([width, height, width, height]),
          'region_features': np.zeros([len(boxes), feature_dim], np.float32), 'tags': [],
          'captions': [], 'phrases': [], 'phrase_regions': []}


def batch_inputs(records, num_regions: int, spec: PixelConfig) -> Dict[str, np.ndarray]:
  """pixels [N, S, S, 3] and region_boxes [N, num_regions, 4] (zero padded) of image records:
  their own 'pixels' / 'region_boxes', else their PNG and pixel boxes; blank records give 0."""
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  size = spec.image_size
  pixels = np.zeros((len(records), size, size, 3), np.float32)
  boxes = np.zeros((len(records), num_regions, 4), np.float32)
  for i, record in enumerate(records):
    if 'pixels' in record:
      image, norm = record['pixels'], record['region_boxes']
    elif record.get('image_png'):
      with Image.open(io.BytesIO(record['image_png'])) as png:
        image, norm, _ = image_inputs(png.convert('RGB'), spec, record['boxes'])
    else:
      continue
    pixels[i] = image
    norm = np.asarray(norm, np.float32)[:num_regions]
    boxes[i, :len(norm)] = norm
  return {'pixels': pixels, 'region_boxes': boxes}
