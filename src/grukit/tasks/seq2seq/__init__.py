"""Sequence to sequence: parallel TSV data and synthetic benchmarks, the RNN encoder-decoder
(Cho et al. 2014) with optional additive attention (Bahdanau et al. 2014), the task."""
