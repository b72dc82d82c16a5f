"""File formats: selfmvs files (scene.h5, depth.h5, PLY) and the MVSNet folder layout.

They know no networks (docs/formats.md documents each layout). COLMAP's own model files are read and
written by :mod:`pipeline.colmap`.
"""
