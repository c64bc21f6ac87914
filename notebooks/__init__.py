"""The Colab notebook and the command that re-executes it (`python -m notebooks.regenerate`)."""
