"""Datasets and protocols."""
