"""Evaluation: the batched evaluation loop, its results, Ray sharding, and Markdown / plot reports."""
