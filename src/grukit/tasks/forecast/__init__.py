"""Time-series forecasting: CSV and classic series, leak-free windows, baselines, metrics."""
