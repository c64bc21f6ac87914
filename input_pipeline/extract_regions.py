r"""Images -> image records (features.py) with a SigLIP vision tower, resumably.

  python -m input_pipeline.extract_regions --images=DIR | --coco_json=FILE | --image_list=FILE \
      --checkpoint=siglip-base-patch16-224/ --out=data/my_images --split=train \
      [--captions=captions.json] [--regions=grid --grid=7 | --regions=boxes --boxes=boxes.json]

Writes the split through input_pipeline/storage.py in the layout import_vinvl gives (image_png b'',
boxes in pixels, region_features [R, width + 6] with VinVL's 6 box numbers, one tag per region,
captions and phrases with unknown regions), so training reads it unchanged. Grid mode gives
grid x grid cells plus the whole image (7 x 7 + 1 = 50 regions); box mode pools the given pixel
boxes (`--boxes` JSON {image_id: [[x1, y1, x2, y2], ...]}, or the COCO JSON's bbox annotations).
Tags are the zero-shot SigLIP labels of each region (mvp_jax/vision/tags.py; default labels: the
1,600 Visual Genome object classes, `--labels=FILE` for one's own; `--notags` for none).

Resumable: the image list is cut into fixed chunks of --chunk_size; each finished chunk is saved
atomically under OUT/.SPLIT.extract/, and a rerun with the same inputs skips finished chunks, so a
killed run continues without duplicating or dropping an image (a rerun with other inputs or
settings is refused). Chunks are shared over hosts by jax.process_index() (OUT must be a shared
filesystem); the batch is split over the host's devices. Host 0 writes the split when every chunk
is there. Bad images (unreadable, truncated, huge, empty; grayscale / CMYK / palette / EXIF-rotated
ones are converted) and bad boxes are reported by file in OUT/SPLIT_extract_report.json; the run
fails when more than --max_error_fraction of the images were bad.
"""

import hashlib
import json
import os
import pickle
import sys
import time
from concurrent import futures
from typing import Optional, Sequence

import numpy as np

from input_pipeline import captions as captions_lib
from input_pipeline import cli
from input_pipeline import phrase_extractor
from input_pipeline import phrase_files
from input_pipeline import storage
from input_pipeline import vinvl
from input_pipeline import vinvl_rows

_CHUNK = 'chunk-{:06d}.pkl'


class ExtractionError(ValueError):
  """The extraction stopped (too many bad images, a changed resume, a bad argument)."""


class SimulatedKill(BaseException):
  """Raised after `stop_after_chunks` chunks (tests: a run killed between two chunks)."""


def _fingerprint(items, settings: dict) -> dict:
  digest = hashlib.sha256()
  for item in items:
    digest.update(f'{item.image_id}\t{item.path}\t{item.boxes}\n'.encode())
  return {'items': digest.hexdigest(), 'num_items': len(items), **settings}


def _check_manifest(work: str, manifest: dict) -> None:
  path = os.path.join(work, 'manifest.json')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      old = json.load(f)
    diff = {k: (old.get(k), v) for k, v in manifest.items() if old.get(k) != v}
    if diff:
      raise ExtractionError(f'{work} holds a run with other inputs or settings ((old, new): '
                            f'{diff}); rerun with the same ones or delete {work}.')
    return
  _atomic_write(path, json.dumps(manifest, indent=1).encode())


def _atomic_write(path: str, data: bytes) -> None:
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _phrases(captions: list, builtin: bool) -> list:
  if not builtin:
    return [[] for _ in captions]
  return [[phrase_files.normalize_tuple(p, f'builtin phrases of {c!r}')
           for p in phrase_extractor.extract_phrases(c)] for c in captions]


class _Chunker:
  """Decodes and extracts one chunk of images into records and problems."""

  def __init__(self, extractor, labels, options: dict, captions_for, boxes_for):
    from mvp_jax.vision import images  # pylint: disable=g-import-not-at-top
    self.images, self.extractor, self.labels, self.o = images, extractor, labels, options
    self.captions_for, self.boxes_for = captions_for, boxes_for
    self.pool = futures.ThreadPoolExecutor(options['num_workers'])

  def _load(self, item):
    from mvp_jax.vision import regions  # pylint: disable=g-import-not-at-top
    try:
      image = self.images.read(item.path, self.extractor.image_size, self.o['max_pixels'])
    except self.images.ImageError as e:
      return item, None, None, (e.kind, e.detail)
    boxes = None
    if self.o['regions'] == 'boxes':
      pixel_boxes = item.boxes if item.boxes is not None else self.boxes_for.get(item.image_id)
      if not pixel_boxes:
        return item, None, None, ('no_boxes', 'box regions need boxes for every image')
      if len(pixel_boxes) > self.o['max_boxes']:
        return item, None, None, ('too_many_boxes', f'{len(pixel_boxes)} boxes, more than '
                                  f'max_boxes={self.o["max_boxes"]}')
      try:
        boxes = regions.normalise_boxes(np.asarray(pixel_boxes, np.float64), image.height,
                                        image.width)
      except ValueError as e:
        return item, None, None, ('bad_box', str(e))
    return item, image, boxes, None

  def __call__(self, chunk_items) -> dict:
    from mvp_jax.vision import tags  # pylint: disable=g-import-not-at-top
    loaded = list(self.pool.map(self._load, chunk_items))
    problems = [{'file': item.path, 'image_id': item.image_id, 'kind': p[0], 'detail': p[1]}
                for item, _, _, p in loaded if p is not None]
    if problems and self.o['on_error'] == 'raise':
      raise ExtractionError(f'{problems[0]["file"]}: {problems[0]["kind"]} '
                            f'({problems[0]["detail"]})')
    good = [(item, image, boxes) for item, image, boxes, p in loaded if p is None]
    records, converted = [], []
    batch = self.extractor.batch_size
    for start in range(0, len(good), batch):
      part = good[start:start + batch]
      pixels = np.stack([image.pixels for _, image, _ in part])
      boxes = None
      if self.o['regions'] == 'boxes':
        boxes = np.zeros((len(part), self.o['max_boxes'], 4), np.float32)
        boxes[..., 2:] = 1.0
        for i, (_, _, b) in enumerate(part):
          boxes[i, :len(b)] = b
      feats, probs = self.extractor(pixels, boxes)
      for i, (item, image, b) in enumerate(part):
        n = len(b) if b is not None else self.extractor.num_grid_regions
        norm = self.extractor.grid_boxes if b is None else b
        size = np.float32([image.width, image.height] * 2)
        region_tags = ([''] * n if probs is None else
                       tags.region_tags(probs[i, :n], self.labels, self.o['top_t'],
                                        self.o['tag_threshold']))
        captions = (item.captions if item.captions is not None else
                    self.captions_for.get(item.image_id, []))
        records.append(vinvl.make_record(
            item.image_id, (image.height, image.width), np.ascontiguousarray(feats[i, :n]),
            norm * size, region_tags, captions, _phrases(captions, self.o['builtin_phrases'])))
        if image.converted_from:
          converted.append({'file': item.path, 'from_mode': image.converted_from})
    return {'records': records, 'problems': problems, 'converted': converted}


def extract(items, *, checkpoint: str, out: str, split: str, regions: str = 'grid',
            grid: int = 7, samples: int = 0, bins: int = 1, crops: bool = False,
            image_size: Optional[int] = None, batch_size: int = 32, chunk_size: int = 256,
            labels: Optional[Sequence[str]] = None,
            tags: bool = True, top_t: int = 10, tag_threshold: float = 0.1,
            templates: Sequence[str] = ('a photo of a {}.',), tokenizer: Optional[str] = None,
            captions_for: Optional[dict] = None, boxes_for: Optional[dict] = None,
            builtin_phrases: bool = False, max_boxes: int = 100,
            max_pixels: int = 100_000_000, on_error: str = 'skip',
            max_error_fraction: float = 0.01, overwrite: bool = False, dtype: str = 'float32',
            num_workers: int = 4, process_index: Optional[int] = None,
            process_count: Optional[int] = None, wait_for_hosts_s: float = 3600.0,
            stop_after_chunks: Optional[int] = None, log=print) -> dict:
  """Extracts `items` (mvp_jax.vision.sources) into OUT/SPLIT; returns the report (a dict)."""
  import jax  # pylint: disable=g-import-not-at-top
  from mvp_jax.vision import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from mvp_jax.vision import extractor as extractor_lib  # pylint: disable=g-import-not-at-top
  from mvp_jax.vision import tags as tags_lib  # pylint: disable=g-import-not-at-top
  from mvp_jax.vision import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  final = os.path.join(out, split)
  if os.path.exists(final) and not overwrite:
    raise FileExistsError(f'{final}: split already written (pass overwrite to replace it).')
  if on_error not in ('skip', 'raise'):
    raise ExtractionError(f"on_error must be 'skip' or 'raise', got {on_error!r}.")
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  labels = list(labels) if labels is not None else (tags_lib.load_labels() if tags else [])
  settings = dict(checkpoint=os.path.abspath(checkpoint), regions=regions, grid=grid,
                  samples=samples, image_size=image_size, chunk_size=chunk_size,
                  labels=hashlib.sha256('\n'.join(labels).encode()).hexdigest() if tags else None,
                  top_t=top_t, tag_threshold=tag_threshold, templates=list(templates),
                  max_boxes=max_boxes, max_pixels=max_pixels, dtype=dtype,
                  builtin_phrases=builtin_phrases,
                  captions=hashlib.sha256(json.dumps(captions_for or {}, sort_keys=True).encode())
                  .hexdigest())
  # Only when set, so that a resumed extraction from before these options keeps its fingerprint.
  if bins != 1:
    settings['bins'] = bins
  if crops:
    settings['crops'] = True
  work = os.path.join(out, f'.{split}.extract')
  os.makedirs(work, exist_ok=True)
  _check_manifest(work, _fingerprint(items, settings))
  num_chunks = -(-len(items) // chunk_size)
  mine = [c for c in range(num_chunks) if c % process_count == process_index
          and not os.path.exists(os.path.join(work, _CHUNK.format(c)))]
  if mine:
    config, params = checkpoint_lib.load(checkpoint, dtype=dtype)
    label_emb = None
    if tags:
      tok = tokenizer_lib.SiglipTokenizer.for_checkpoint(checkpoint, config.text.max_len,
                                                         config.variant, tokenizer) \
          if config.text is not None else None
      label_emb = extractor_lib.embed_labels(config, params, tok, labels, templates)
    extractor = extractor_lib.RegionExtractor(
        config, params, regions=regions, grid_cells=grid, samples=samples, bins=bins,
        crops=crops, image_size=image_size, batch_size=batch_size, label_embeddings=label_emb)
    options = dict(regions=regions, max_boxes=max_boxes, max_pixels=max_pixels,
                   on_error=on_error, top_t=top_t, tag_threshold=tag_threshold,
                   builtin_phrases=builtin_phrases, num_workers=num_workers)
    chunker = _Chunker(extractor, labels, options, captions_for or {}, boxes_for or {})
    total = sum(len(items[c * chunk_size:(c + 1) * chunk_size]) for c in mine)
    done, start = 0, time.time()
    for k, c in enumerate(mine):
      chunk_items = items[c * chunk_size:(c + 1) * chunk_size]
      result = chunker(chunk_items)
      _atomic_write(os.path.join(work, _CHUNK.format(c)), pickle.dumps(result))
      done += len(chunk_items)
      rate = done / max(time.time() - start, 1e-9)
      log(f'[extract {split}] host {process_index}: chunk {c + 1}/{num_chunks}, {done}/{total} '
          f'images ({100 * done / total:.0f}%), {rate:.1f} img/s, ETA {(total - done) / rate:.0f}s')
      if stop_after_chunks is not None and k + 1 >= stop_after_chunks:
        raise SimulatedKill(f'stopped after {k + 1} chunks')
  if process_index != 0:
    return {'status': 'chunks written', 'host': process_index}
  return _assemble(work, out, split, num_chunks, len(items), settings, max_error_fraction,
                   overwrite, wait_for_hosts_s, log)


def _assemble(work, out, split, num_chunks, num_items, settings, max_error_fraction,
              overwrite, wait_for_hosts_s, log) -> dict:
  """Host 0: waits for every chunk, checks the error budget, writes the split and the report."""
  deadline = time.time() + wait_for_hosts_s
  while True:
    missing = [c for c in range(num_chunks)
               if not os.path.exists(os.path.join(work, _CHUNK.format(c)))]
    if not missing:
      break
    if time.time() > deadline:
      raise ExtractionError(f'{work}: chunks {missing[:10]} were not written by the other hosts '
                            f'within {wait_for_hosts_s:.0f}s; rerun to finish them.')
    log(f'[extract {split}] waiting for {len(missing)} chunks from the other hosts')
    time.sleep(10)
  problems, converted = [], []

  def records():
    for c in range(num_chunks):
      with open(os.path.join(work, _CHUNK.format(c)), 'rb') as f:
        result = pickle.load(f)
      problems.extend(result['problems'])
      converted.extend(result['converted'])
      yield from result['records']
    if len(problems) > max_error_fraction * num_items:
      raise ExtractionError(f'{len(problems)} of {num_items} images could not be used, more '
                            f'than max_error_fraction={max_error_fraction:.2%} (first: '
                            f'{problems[0]["file"]}: {problems[0]["kind"]}).')

  report = {'split': split, 'images': num_items, 'settings': settings}
  try:
    written = storage.write_dataset(records(), out, split, metadata={'source': 'siglip'},
                                    overwrite=overwrite)
  except BaseException as e:
    report.update(status='failed', error=f'{type(e).__name__}: {e}', problems=problems,
                  converted=converted)
    _atomic_write(os.path.join(out, f'{split}_extract_report.failed.json'),
                  json.dumps(report, indent=1).encode())
    e.add_note(f'bad images: {[(p["file"], p["kind"]) for p in problems[:20]]}')
    raise
  report.update(status='complete', records=written, problems=problems, converted=converted)
  _atomic_write(os.path.join(out, f'{split}_extract_report.json'),
                json.dumps(report, indent=1).encode())
  failed = os.path.join(out, f'{split}_extract_report.failed.json')
  if os.path.exists(failed):
    os.remove(failed)
  for name in os.listdir(work):
    os.remove(os.path.join(work, name))
  os.rmdir(work)
  for p in problems:
    log(f'[extract {split}] skipped {p["file"]}: {p["kind"]} ({p["detail"]})')
  log(f'[extract {split}] wrote {written} records to {os.path.join(out, split)}; '
      f'{len(problems)} images skipped, {len(converted)} converted')
  return report


def _define(fv) -> None:
  """The command's flags on the FlagValues `fv`."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('images', None, 'Folder of images (searched recursively; the image id is '
                      'the path without extension).', flag_values=fv)
  flags.DEFINE_string('coco_json', None, 'Or a COCO-style JSON (images, and optionally captions '
                      'and bbox annotations).', flag_values=fv)
  flags.DEFINE_string('image_root', None, 'Folder the --coco_json file names are relative to (default: '
                      "the JSON's folder).",
                      flag_values=fv)
  flags.DEFINE_string('image_list', None, 'Or a text file with "path" or "path<TAB>id" a line.',
                      flag_values=fv)
  flags.DEFINE_string('checkpoint', None, 'SigLIP / SigLIP 2 checkpoint: a Hugging Face folder '
                      '(safetensors) or a big_vision .npz.', flag_values=fv)
  flags.DEFINE_string('tokenizer', None, 'SentencePiece .model of the text tower for the tags '
                      '(default: the one in the checkpoint folder).', flag_values=fv)
  flags.DEFINE_string('out', None, 'Dataset folder to write (input_pipeline/storage.py layout, '
                      'what training reads).', flag_values=fv)
  flags.DEFINE_string('split', 'train', 'Name of the split written under --out.', flag_values=fv)
  flags.DEFINE_string('captions', None, 'Caption file in an import_vinvl format (Karpathy '
                      'JSON, COCO captions JSON, ...), joined by image id.', flag_values=fv)
  flags.DEFINE_bool('builtin_phrases', False, 'Extract phrase tuples from the captions with the '
                    'built-in rule-based extractor.', flag_values=fv)
  flags.DEFINE_enum('regions', 'grid', ['grid', 'boxes'], 'grid: grid x grid cells plus the '
                    'whole image; boxes: RoIAlign-pool the given boxes.', flag_values=fv)
  flags.DEFINE_integer('grid', 7, 'Grid cells per side (with --regions=grid).', flag_values=fv)
  flags.DEFINE_string('boxes', None, 'JSON {image_id: [[x1, y1, x2, y2], ...]} in pixels (with '
                      '--regions=boxes; default: the COCO JSON bbox annotations).',
                      flag_values=fv)
  flags.DEFINE_integer('bins', 1, 'Sub-boxes per side of each region: k x k pooled states a '
                       'region, in order (model.vision.bins).', flag_values=fv)
  flags.DEFINE_bool('crops', False, "Crop and encode: each region's own crop resampled to the "
                    "input side through the tower (model.vision.crops; R times the cost).",
                    flag_values=fv)
  flags.DEFINE_integer('max_boxes', 100, 'Most boxes kept per image (with --regions=boxes).',
                       flag_values=fv)
  flags.DEFINE_integer('image_size', None, "Input side in pixels (default: the checkpoint's).",
                       flag_values=fv)
  flags.DEFINE_integer('batch_size', 32, 'Images per batch, split over all local devices.',
                       flag_values=fv)
  flags.DEFINE_integer('chunk_size', 256, 'Images per resumable chunk (a killed run redoes at '
                       'most one chunk per host).', flag_values=fv)
  flags.DEFINE_string('labels', None, 'Tag labels, one a line (default: the 1,600 Visual Genome '
                      'object classes).', flag_values=fv)
  flags.DEFINE_bool('tags', True, 'Zero-shot tag every region with the SigLIP text tower '
                    '(--notags: no tags).', flag_values=fv)
  flags.DEFINE_integer('top_t', 10, 'Most distinct tags kept per image.', flag_values=fv)
  flags.DEFINE_float('tag_threshold', 0.1, 'Least sigmoid probability for a region tag.',
                     flag_values=fv)
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype of the vision '
                    'tower.', flag_values=fv)
  flags.DEFINE_integer('num_workers', 4, 'Image decoding threads.', flag_values=fv)
  flags.DEFINE_enum('on_error', 'skip', ['skip', 'raise'], 'Bad images: skip and report them, '
                    'or stop at the first.', flag_values=fv)
  flags.DEFINE_float('max_error_fraction', 0.01, 'Fail when more than this fraction of the '
                     'images were bad.', flag_values=fv)
  flags.DEFINE_bool('overwrite', False, 'Replace an existing complete split.', flag_values=fv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`python -m input_pipeline.extract_regions` and the `mvp-extract` console script."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from mvp_jax.vision import sources  # pylint: disable=g-import-not-at-top
  args = sys.argv[1:] if argv is None else list(argv)
  if cli.wants_help(args):
    print(cli.help_text('python -m input_pipeline.extract_regions', __doc__, _define))
    return 0
  fv = flags.FlagValues()
  _define(fv)
  fv(list(sys.argv if argv is None else ['extract_regions'] + list(argv)))
  chosen = [n for n in ('images', 'coco_json', 'image_list') if fv[n].value]
  if len(chosen) != 1 or not fv.checkpoint or not fv.out:
    print('need exactly one of --images / --coco_json / --image_list, and --checkpoint, --out',
          file=sys.stderr)
    return 2
  try:
    if fv.images:
      items = sources.from_folder(fv.images)
    elif fv.coco_json:
      items = sources.from_coco_json(fv.coco_json, fv.image_root)
    else:
      items = sources.from_image_list(fv.image_list)
    captions_for = None
    if fv.captions:
      captions_for = captions_lib.load_captions(
          fv.captions, vinvl_rows.new_report(), vinvl_rows.VinvlOptions()).captions
    boxes_for = None
    if fv.boxes:
      with open(fv.boxes, encoding='utf-8') as f:
        boxes_for = {str(k): v for k, v in json.load(f).items()}
    labels = None
    if fv.labels:
      from mvp_jax.vision import tags as tags_lib  # pylint: disable=g-import-not-at-top
      labels = tags_lib.load_labels(fv.labels)
    extract(items, checkpoint=fv.checkpoint, out=fv.out, split=fv.split, regions=fv.regions,
            grid=fv.grid, bins=fv.bins, crops=fv.crops, image_size=fv.image_size,
            batch_size=fv.batch_size,
            chunk_size=fv.chunk_size, labels=labels, tags=fv.tags, top_t=fv.top_t,
            tag_threshold=fv.tag_threshold, tokenizer=fv.tokenizer, captions_for=captions_for,
            boxes_for=boxes_for, builtin_phrases=fv.builtin_phrases, max_boxes=fv.max_boxes,
            on_error=fv.on_error, max_error_fraction=fv.max_error_fraction,
            overwrite=fv.overwrite, dtype=fv.dtype, num_workers=fv.num_workers,
            log=lambda m: print(m, file=sys.stderr, flush=True))
  except (ExtractionError, sources.SourceError, FileExistsError, ValueError) as e:
    print(f'extraction failed: {e}', file=sys.stderr)
    print('\n'.join(getattr(e, '__notes__', [])), file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
