r"""Builds a real image-text source into the layouts the trainer reads; optionally on Apache Beam.

1. Regions (accelerators; every host runs the same command, resumable per shard):
  python -m input_pipeline.sources.build extract --source=webdataset \
      --shards='/data/cc3m/{00000..00331}.tar' --checkpoint=/ckpt/siglip-base-patch16-224 \
      --features=/data/cc3m_features
2. Records (CPU; one process, or Beam with --beam):
  python -m input_pipeline.sources.build build --source=webdataset \
      --shards='/data/cc3m/{00000..00331}.tar' --features=/data/cc3m_features \
      --data_dir=/data/tfds --beam \
      --beam_pipeline_options=direct_num_workers=16,direct_running_mode=multi_processing \
      --pretrain_out=/data/cc3m_mvp --tokenizer=vocab.txt --concepts=id2phrase.json
  COCO (Karpathy), pre-training records of train+restval and the retrieval task sets:
  python -m input_pipeline.sources.build build --source=karpathy_coco --manual_dir=/data/coco \
      --features=/data/coco_features --data_dir=/data/tfds \
      --pretrain_out=/data/coco_mvp --pretrain_splits=train,restval --tokenizer=vocab.txt \
      --retrieval_out=/data/coco_retrieval --retrieval_splits=train=train+restval,val=val,test=test
  (without --features the SigLIP front-end runs inline: --checkpoint=...).
On a cluster the same `build` runs with Beam pipeline options (nothing else changes):
  Dataflow  --beam_pipeline_options=runner=DataflowRunner,project=P,region=R,temp_location=gs://B/tmp,setup_file=./setup.py,machine_type=n2-highmem-4,max_num_workers=64
  Flink     --beam_pipeline_options=runner=FlinkRunner,flink_master=HOST:8081,environment_type=LOOPBACK,parallelism=64
  Spark     --beam_pipeline_options=runner=SparkRunner,spark_master_url=spark://HOST:7077,environment_type=LOOPBACK
(paths must then be on storage every worker sees; the records are read from --features).
"""

import sys
from typing import Optional, Sequence

from absl import flags

from input_pipeline import cli

_SOURCES = ('karpathy_coco', 'karpathy_flickr30k', 'webdataset', 'hf')


def _define(fv):
  flags.DEFINE_enum('source', None, _SOURCES, 'Kind of source: Karpathy COCO / Flickr30K '
                    'JSON + images, webdataset .tar shards, or a saved Hugging Face table.',
                    flag_values=fv)
  flags.DEFINE_string('manual_dir', None, 'Folder of the source (Karpathy JSON + images, a '
                      'saved HF dataset, or .tar shards).', flag_values=fv)
  flags.DEFINE_list('shards', None, 'Webdataset shard paths or brace patterns '
                    '(e.g. /data/cc3m/{00000..00331}.tar); default: MANUAL_DIR/*.tar.',
                    flag_values=fv)
  flags.DEFINE_string('image_column', 'image', 'HF table: name of the image column.',
                      flag_values=fv)
  flags.DEFINE_string('text_column', 'text', 'HF table: name of the caption column.',
                      flag_values=fv)
  flags.DEFINE_string('id_column', None, 'HF table: name of the image id column (default: '
                      'SPLIT-ROW, the split and the row number).', flag_values=fv)
  flags.DEFINE_string('features', None, 'Regions folder: `extract` writes it, `build` reads it '
                      '(without it `build` runs SigLIP inline from --checkpoint).',
                      flag_values=fv)
  flags.DEFINE_string('checkpoint', None, 'SigLIP checkpoint (Hugging Face folder or '
                      'big_vision .npz) for the region features and tags.', flag_values=fv)
  flags.DEFINE_integer('grid', 7, 'SigLIP grid cells per side (grid x grid cells plus the '
                       'whole image).', flag_values=fv)
  flags.DEFINE_integer('batch_size', 32, 'Images per SigLIP extraction batch.', flag_values=fv)
  flags.DEFINE_string('labels', None, 'Tag labels file, one a line (default: the 1,600 Visual '
                      'Genome object classes).', flag_values=fv)
  flags.DEFINE_string('phrases', None, 'Phrase file (input_pipeline/phrase_files.py formats); '
                      'default: the built-in rule-based extractor.', flag_values=fv)
  flags.DEFINE_string('data_dir', None, 'TFDS data_dir the builder writes its array_record '
                      'dataset to.', flag_values=fv)
  flags.DEFINE_string('config', None, 'Builder config (Karpathy: captions5 | all_captions).',
                      flag_values=fv)
  flags.DEFINE_bool('beam', False, 'Write the records with an Apache Beam pipeline (needs '
                    "pip install 'mvp-jax[sources]').", flag_values=fv)
  flags.DEFINE_string('beam_pipeline_options', '', 'Comma-separated Beam pipeline options '
                      'without the leading --, e.g. runner=DataflowRunner,project=P.',
                      flag_values=fv)
  flags.DEFINE_float('max_error_fraction', 0.01, 'Fail when more than this fraction of the '
                     'samples were skipped as broken.', flag_values=fv)
  flags.DEFINE_string('pretrain_out', None, 'Also lay the built splits out as a pre-training '
                      'dataset folder here (needs --tokenizer).', flag_values=fv)
  flags.DEFINE_list('pretrain_splits', ['train'], 'Built splits that go into --pretrain_out.',
                    flag_values=fv)
  flags.DEFINE_string('tokenizer', None, 'Word tokenizer of --pretrain_out: a BERT vocab.txt or '
                      'a SentencePiece .model.', flag_values=fv)
  flags.DEFINE_string('concepts', None, 'Concept vocabulary id2phrase.json (default: built from '
                      'the phrases).', flag_values=fv)
  flags.DEFINE_string('retrieval_out', None, 'Also write retrieval task sets here (needs '
                      '--pretrain_out for the vocabularies).', flag_values=fv)
  flags.DEFINE_list('retrieval_splits', ['test=test'], 'Retrieval splits as OUT=BUILT+BUILT, '
                    'e.g. train=train+restval,test=test.', flag_values=fv)


def make_source(fv):
  # pylint: disable=import-outside-toplevel
  import os
  from input_pipeline.sources import hf_table, karpathy, webdataset
  if fv.source == 'webdataset':
    return webdataset.WebdatasetSource(fv.shards or [os.path.join(fv.manual_dir, '*.tar')])
  if fv.source == 'hf':
    return hf_table.HfTableSource(fv.manual_dir, image_column=fv.image_column,
                                  text_column=fv.text_column, id_column=fv.id_column)
  name = 'coco' if fv.source == 'karpathy_coco' else 'flickr30k'
  images = os.path.join(fv.manual_dir, 'flickr30k-images')
  return karpathy.KarpathySource(os.path.join(fv.manual_dir, f'dataset_{name}.json'),
                                 images if os.path.isdir(images) else fv.manual_dir)


def _siglip(fv):
  from input_pipeline.sources import regions  # pylint: disable=import-outside-toplevel
  return regions.SiglipRegions(fv.checkpoint, grid=fv.grid, batch_size=fv.batch_size,
                               labels_file=fv.labels)


def run_build(fv, log=print) -> None:
  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds
  from input_pipeline.sources import builders, layout
  # pylint: enable=import-outside-toplevel
  # The same kwargs `tfds build NAME/features=...` passes (front_end.py).
  common = (dict(features=fv.features) if fv.features else
            dict(checkpoint=fv.checkpoint, grid=fv.grid, batch_size=fv.batch_size,
                 labels=fv.labels))
  common.update(phrases=fv.phrases, use_beam=fv.beam, max_error_fraction=fv.max_error_fraction,
                data_dir=fv.data_dir)
  if fv.config:
    common['config'] = fv.config
  if fv.source == 'karpathy_coco':
    builder = builders.KarpathyCoco(**common)
  elif fv.source == 'karpathy_flickr30k':
    builder = builders.KarpathyFlickr30k(**common)
  elif fv.source == 'webdataset':
    builder = builders.WebdatasetShards(shards=fv.shards, **common)
  else:
    builder = builders.HfImageText(image_column=fv.image_column, text_column=fv.text_column,
                                   id_column=fv.id_column, **common)
  options = None
  if fv.beam:
    from input_pipeline import optional  # pylint: disable=import-outside-toplevel
    beam = optional.require('apache_beam', 'Writing records with --beam')
    options = beam.options.pipeline_options.PipelineOptions(
        [f'--{o}' for o in fv.beam_pipeline_options.split(',') if o])
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=fv.manual_dir, beam_options=options))
  for split in builder.info.splits:
    report = builder.problems(split)
    log(f'[build] {split}: {report["records"]} records of {report["samples_read"]} samples; '
        f'skipped by kind {report["by_kind"]} (see {builder.report_dir}/{split}/)')
  if fv.pretrain_out:
    sizes = layout.link_pretraining(builder.data_dir, fv.pretrain_out, fv.pretrain_splits,
                                    tokenizer=fv.tokenizer, concepts_file=fv.concepts)
    log(f'[build] pre-training layout {fv.pretrain_out}: {sizes}')
  if fv.retrieval_out:
    splits = {}
    for entry in fv.retrieval_splits:
      out, _, built = entry.partition('=')
      splits[out] = built.split('+')
    if fv.pretrain_out is None:
      raise ValueError('--retrieval_out needs --pretrain_out (its vocabularies are copied).')
    info = layout.write_retrieval(builder.data_dir, fv.retrieval_out, splits,
                                  vocab_dir=fv.pretrain_out)
    log(f'[build] retrieval task sets {fv.retrieval_out}: {dict(info.splits)}')


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv if argv is None else ['build'] + list(argv))
  if cli.wants_help(argv[1:]):
    print(cli.help_text('python -m input_pipeline.sources.build extract|build', __doc__, _define))
    return 0
  if len(argv) < 2 or argv[1] not in ('extract', 'build'):
    print(__doc__, file=sys.stderr)
    return 2
  fv = flags.FlagValues()
  _define(fv)
  fv([argv[0]] + argv[2:])
  if not fv.source or (fv.source != 'webdataset' and not fv.manual_dir):
    print('need --source and --manual_dir (or --shards for webdataset)', file=sys.stderr)
    return 2
  log = lambda m: print(m, file=sys.stderr, flush=True)
  if argv[1] == 'extract':
    from input_pipeline.sources import extract  # pylint: disable=import-outside-toplevel
    if not fv.checkpoint or not fv.features:
      print('extract needs --checkpoint and --features', file=sys.stderr)
      return 2
    log(str(extract.extract_shards(make_source(fv), _siglip(fv), fv.features, log=log)))
    return 0
  if not fv.data_dir or not (fv.features or fv.checkpoint):
    print('build needs --data_dir and --features or --checkpoint', file=sys.stderr)
    return 2
  if fv.pretrain_out and not fv.tokenizer:
    print('--pretrain_out needs --tokenizer', file=sys.stderr)
    return 2
  run_build(fv, log)
  return 0


if __name__ == '__main__':
  sys.exit(main())
