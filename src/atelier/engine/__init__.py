"""Generation engine: diffusers pipelines, samplers, masks and A1111-compatible metadata."""
