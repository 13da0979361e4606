"""Product shots: the product cut out, a new scene generated around it, a shadow, every channel's shape, upscaled.

The product's pixels are exact in every output: wherever an output's mask is 255 its pixels are the product
photo's (resized once to the product's box in that output). Modules, one job each:

* :mod:`.segmentation` — SAM model folders (``models/segmentation/<name>/``), their licences, the segmenter;
* :mod:`.mask` — the product's mask: the user's, the photo's alpha, or SAM's, refined;
* :mod:`.placement` — the cut-out, its box in a frame, laying it exactly;
* :mod:`.shadow` — drop and contact shadows under the product;
* :mod:`.light` — the band around the product matched to the scene's light;
* :mod:`.expand` — outpainting to another shape; channel sizes in ``channels.toml``;
* :mod:`.presets` — scene presets in ``scenes.toml``;
* :mod:`.inpaint` — one generation through a batch backend (in-process or a studio);
* :mod:`.upscale` — the engine's upscalers, optionally refined tile by tile;
* :mod:`.shot` — the flow: :func:`product_shots`.
"""

from __future__ import annotations

from atelier.campaign.product.expand import (
    ANCHORS,
    CHANNELS_FILE,
    ExpandCanvas,
    Expanded,
    Placement,
    channel,
    expand_canvas,
    expand_image,
    fit,
    load_channels,
    recomposite,
    work_size,
)
from atelier.campaign.product.inpaint import InpaintSettings
from atelier.campaign.product.light import match_edge_light
from atelier.campaign.product.mask import (
    MaskRefinement,
    alpha_mask,
    check_not_empty,
    check_photo,
    product_mask,
    refine_mask,
)
from atelier.campaign.product.placement import Box, Cutout, cut_out, lay_product, place_product, relay_product
from atelier.campaign.product.presets import SCENES_FILE, ScenePreset, load_scene_presets, scene_preset
from atelier.campaign.product.segmentation import (
    SamSegmenter,
    SegmentationModel,
    list_segmentation_models,
    read_segmentation_model,
    segmentation_model,
)
from atelier.campaign.product.shadow import ShadowParams, apply_shadow
from atelier.campaign.product.shot import (
    ProductShot,
    ProductShots,
    ShotSettings,
    product_shots,
    shoot,
    shot_to_channel,
    upscale_shot,
)
from atelier.campaign.product.upscale import TileRefinement, upscale_picture, upscaled_size

__all__ = [
    "ANCHORS",
    "CHANNELS_FILE",
    "SCENES_FILE",
    "Box",
    "Cutout",
    "ExpandCanvas",
    "Expanded",
    "InpaintSettings",
    "MaskRefinement",
    "Placement",
    "ProductShot",
    "ProductShots",
    "SamSegmenter",
    "ScenePreset",
    "SegmentationModel",
    "ShadowParams",
    "ShotSettings",
    "TileRefinement",
    "alpha_mask",
    "apply_shadow",
    "channel",
    "check_not_empty",
    "check_photo",
    "cut_out",
    "expand_canvas",
    "expand_image",
    "fit",
    "lay_product",
    "list_segmentation_models",
    "load_channels",
    "load_scene_presets",
    "match_edge_light",
    "place_product",
    "product_mask",
    "product_shots",
    "read_segmentation_model",
    "recomposite",
    "refine_mask",
    "relay_product",
    "scene_preset",
    "segmentation_model",
    "shoot",
    "shot_to_channel",
    "upscale_picture",
    "upscale_shot",
    "upscaled_size",
    "work_size",
]
