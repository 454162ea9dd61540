"""Sequence classification: UEA/UCR ``.ts`` and ``.npz`` data, the classifier task, metrics."""
