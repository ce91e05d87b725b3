"""Backbones: open_clip models behind one adapter."""
