"""LoRA training for Stable Diffusion 1.5 and SDXL, compatible with kohya-ss sd-scripts datasets.

The data layer is pure Python (no torch):

- :mod:`atelier.training.archive` extracts an uploaded ``training_data.zip`` safely.
- :mod:`atelier.training.dataset_config` reads kohya's ``dataset.toml`` or builds the same structure from a
  plain folder of captioned images (``10_oue car`` style subfolders included).
- :mod:`atelier.training.dataset` scans those folders into captioned :class:`~atelier.training.dataset.ImageItem`
  records and processes captions the way kohya does (shuffle, keep_tokens, dropout, tag frequency).
- :mod:`atelier.training.buckets` does kohya's aspect-ratio bucketing, resize-and-crop and per-bucket batching.
"""
