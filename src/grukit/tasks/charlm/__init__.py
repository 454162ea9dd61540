"""The character (and byte) language model task."""
