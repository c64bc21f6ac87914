"""mvp-jax: MVPTR (multi-stage vision-language pre-training) in JAX/Flax."""
