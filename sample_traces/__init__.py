"""Bundled sample runs (data only); see README.md in this folder."""
