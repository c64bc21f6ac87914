"""A SigLIP / SigLIP 2 visual front-end: raw images -> MVPTR region features and object tags.

config.py (architecture), towers.py (Flax towers), posemb.py (position-embedding resampling),
checkpoint.py (HF safetensors / big_vision .npz loading), tokenizer.py (SentencePiece),
regions.py (grid / box pooling), tags.py (zero-shot labels), images.py (decoding),
sources.py (image lists), extractor.py (batched, sharded extraction). The command is
`python -m input_pipeline.extract_regions`.
"""
