"""tf.data input pipelines of mvp-jax: tokenizers, concepts, example assembly, datasets."""
