"""Real image-text sources as TFDS builders writing the image records the pipeline reads.

  karpathy.py     COCO / Flickr30K images + Karpathy's dataset_{coco,flickr30k}.json
  webdataset.py   img2dataset webdataset tar shards ({key}.jpg + {key}.txt / {key}.json)
  hf_table.py     a Hugging Face `datasets` table saved locally (load_from_disk / parquet)
  samples.py      the shared vocabulary: Sample, Problem, shard -> image records
  regions.py      regions + tags: the SigLIP front-end inline, or features given per shard
  extract.py      sharded, multi-host, per-shard resumable SigLIP extraction over a shard list
  builders.py     the tfds.core.GeneratorBasedBuilder classes (plain Python or Apache Beam)
  import_builders.py  the VinVL import and the VQA / SNLI-VE / RefCOCO imports as builders
  layout.py       tfds output -> the storage.py layout (pre-training) and retrieval task sets
  build.py        the command line: build a source, export it, optionally on Beam
"""
