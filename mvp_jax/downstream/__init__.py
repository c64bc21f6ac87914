"""Downstream tasks of MVPTR: retrieval, VQA, visual entailment, referring expressions (spec §4)."""
