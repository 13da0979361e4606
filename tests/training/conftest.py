"""Shared fixtures for the training data-layer tests."""

from __future__ import annotations

import pytest

# Verbatim from the seed article's "%%writefile dataset.toml" cell.
SEED_DATASET_TOML = """\
[general]
enable_bucket = true
shuffle_caption = true
caption_extension = '.txt'
keep_tokens = 0

# DreamBooth caption based character datasets
[[datasets]]
resolution = 512
batch_size = 2

  [[datasets.subsets]]
  image_dir = './images/sample'
  num_repeats = 10
"""


@pytest.fixture
def seed_dataset_toml() -> str:
    return SEED_DATASET_TOML
