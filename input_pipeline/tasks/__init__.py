"""Downstream-task data: storage of task examples, importers and the task batch iterator."""
