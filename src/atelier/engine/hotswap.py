"""LoRA hot-swap for a compiled UNet: fixed LoRA slots whose weights and scales change in place.

A compiled UNet's graph is specialised on its module structure: adding, deleting or (de)activating a PEFT
adapter, or changing a LoRA scale that is a Python float, makes dynamo recompile (minutes for SDXL with
``max-autotune``). So a model that will be compiled gets ``slots`` empty LoRA adapters first
(:func:`prepare_hotswap`), each of rank ``max_rank`` on every layer LoRAs commonly train in the UNet's
transformer blocks, all of them active, with their scales turned into tensors by peft's
``prepare_model_for_compiled_hotswap`` (what diffusers' ``enable_lora_hotswap`` arms). A request's LoRAs are then
copied into slots with peft's ``hotswap_adapter_from_state_dict`` (a smaller rank is zero-padded, layers the
LoRA does not train are zeroed) and their weights written into the scale tensors in place; an unused slot
keeps its weights, at scale 0, so asking for the same LoRA again costs no copy. The graph never changes.

The text encoders are not compiled: their part of a LoRA is an ordinary named adapter, as in
:func:`atelier.engine.loras.apply_loras` without slots.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atelier.errors import AtelierError

if TYPE_CHECKING:
    from atelier.engine.loras import AppliedLora

# The UNet layers a slot holds: everything kohya's LoRA trains by default (every Linear and 1x1 Conv2d of a
# Transformer2DModel: proj_in/proj_out, both attentions' q/k/v/out, the feed-forward) and so a superset of
# what diffusers' DreamBooth/AutoTrain scripts train (to_q/to_k/to_v/to_out.0). LoCon/LyCORIS files also train
# the ResNet convolutions; slots do not cover those (see :func:`_check_fits`).
SLOT_LAYERS = re.compile(
    r".*\.attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\."
    r"(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2))"
)
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
_LORA_KEY = re.compile(r"(?P<layer>.+)\.lora_(?P<part>[AB])\.weight")


@dataclass
class _Slot:
    name: str  # the UNet adapter's name; none is a substring of another (peft matches adapters by substring)
    lora: tuple[str, float] | None = None  # (path, mtime) of the LoRA whose weights it holds
    scales: dict[str, float] = field(default_factory=dict)  # layer -> alpha / rank of that LoRA
    weight: float | None = None  # request weight now in the scale tensors (None: must be written)
    used: int = 0  # when it last served a request: the least recently used slot is replaced first


@dataclass
class HotswapSlots:
    """The LoRA slots of one prepared UNet (kept on the UNet, so pipeline variants share them)."""

    unet: Any
    max_rank: int
    slots: list[_Slot]
    layers: dict[str, Any]  # layer name -> its peft LoRA layer, which holds every slot
    requests: int = 0
    # (path, mtime) of LoRAs that train only the text encoders: nothing of theirs goes into a slot.
    text_only: set[tuple[str, float]] = field(default_factory=set)

    def apply(
        self, pipeline: Any, loaded: dict[str, tuple[str, float]], wanted: Sequence[tuple[str, AppliedLora]]
    ) -> None:
        """Make exactly ``wanted`` ((adapter name, LoRA) pairs) active: the UNet parts in slots, the text
        encoder parts as ordinary adapters recorded in ``loaded`` (adapter name -> (path, mtime))."""
        by_name = dict(wanted)  # the same LoRA twice: the last weight wins, as with set_adapters
        if len(by_name) > len(self.slots):
            raise AtelierError(
                f"{len(by_name)} LoRAs in one request, but the compiled model has {len(self.slots)} LoRA "
                "slots; use fewer or raise the 'compiled LoRA slots' setting (lora_slots)",
                field="lora",
            )
        self.requests += 1
        self._follow_device(pipeline._execution_device)
        keys = {
            name: (str(lora.entry.path), lora.entry.path.stat().st_mtime) for name, lora in by_name.items()
        }
        holding = {slot.lora: slot for slot in self.slots if slot.lora is not None}
        # Read and check every new file before any slot changes: a refused LoRA leaves the slots as they were.
        incoming: dict[str, tuple[dict[str, Any], Any]] = {}
        for name, lora in by_name.items():
            key = keys[name]
            in_unet = key in holding or key in self.text_only
            if in_unet and loaded.get(name) == key:
                continue
            state_dict, network_alphas, metadata = read_lora(pipeline, lora.entry.path)
            if not in_unet:
                part = unet_lora_part(state_dict, network_alphas, metadata)
                if part is None:
                    self.text_only.add(key)
                else:
                    self._check_fits(lora.entry.name, part[0])
                    incoming[name] = part
            if loaded.get(name) != key:
                _load_text_encoder_parts(
                    pipeline, name, state_dict, network_alphas, metadata, lora.entry.path
                )
                loaded[name] = key
        # New UNet parts go into slots no requested LoRA holds: empty ones first, then the least recently used.
        keep = set(keys.values())
        free = sorted(
            (s for s in self.slots if s.lora not in keep), key=lambda s: (s.lora is not None, s.used)
        )
        for (name, (state_dict, config)), slot in zip(incoming.items(), free, strict=False):
            self._swap(slot, state_dict, config)
            slot.lora = keys[name]
            holding[slot.lora] = slot
        # Scales: weight * alpha / rank per layer for the requested LoRAs, 0 for every other slot.
        weights = {
            holding[key].name: by_name[name].unet_weight for name, key in keys.items() if key in holding
        }
        for slot in self.slots:
            if slot.name in weights:
                slot.used = self.requests
            weight = weights.get(slot.name, 0.0)
            if slot.weight != weight:
                self._write_scales(slot, weight)
        _activate_text_encoders(pipeline, [(name, lora.te_weight) for name, lora in by_name.items()])

    def _check_fits(self, lora_name: str, state_dict: dict[str, Any]) -> None:
        """Refuse, before anything is copied, a UNet part that cannot go into a slot."""
        slot = self.slots[0].name
        for key, tensor in state_dict.items():
            match = _LORA_KEY.fullmatch(key)
            if match is None:
                raise AtelierError(
                    f"LoRA {lora_name!r} has {key.rsplit('.', 2)[-2]} weights (DoRA or LoRA bias), which "
                    "compiled LoRA slots cannot hold; turn off compile to use it",
                    field="lora",
                )
            layer = self.layers.get(match["layer"])
            if layer is None:
                # Slots on every layer a LoCon may train would slow every request, most of which use no LoRA;
                # an ordinary adapter would recompile the UNet, and again for each such LoRA. Refuse plainly.
                raise AtelierError(
                    f"LoRA {lora_name!r} trains {match['layer']}, outside the layers compiled LoRA slots hold "
                    "(transformer attention and feed-forward); turn off compile to use it",
                    field="lora",
                )
            rank_dim = 0 if match["part"] == "A" else 1
            if tensor.shape[rank_dim] > self.max_rank:
                raise AtelierError(
                    f"LoRA {lora_name!r} has rank {tensor.shape[rank_dim]}, above the compiled LoRA slots' "
                    f"maximum rank {self.max_rank}; raise the 'LoRA rank limit' setting (lora_max_rank)",
                    field="lora",
                )
            target = (layer.lora_A if match["part"] == "A" else layer.lora_B)[slot].weight
            if tensor.ndim != target.ndim or any(
                a != b
                for i, (a, b) in enumerate(zip(tensor.shape, target.shape, strict=True))
                if i != rank_dim
            ):
                raise AtelierError(
                    f"LoRA {lora_name!r} does not fit the model: {key} is {tuple(tensor.shape)}", field="lora"
                )

    def _swap(self, slot: _Slot, state_dict: dict[str, Any], config: Any) -> None:
        from peft.utils.hotswap import hotswap_adapter_from_state_dict

        # Until the copy is complete the slot holds nothing usable: scale 0 at the next request if this fails.
        slot.lora, slot.weight, slot.scales = None, None, {}
        named = {
            key.replace(".lora_A.", f".lora_A.{slot.name}.").replace(
                ".lora_B.", f".lora_B.{slot.name}."
            ): value
            for key, value in state_dict.items()
        }
        # peft copies in place, zero-pads a smaller rank and zeroes the slot's layers this LoRA does not train.
        # Its config check is skipped on purpose: it refuses differing alphas, which _write_scales handles.
        hotswap_adapter_from_state_dict(self.unet, named, adapter_name=slot.name, config=config)
        trained = {key.rsplit(".lora_", 1)[0] for key in state_dict}
        slot.scales = {layer: layer_scale(config, layer) for layer in self.layers if layer in trained}

    def _write_scales(self, slot: _Slot, weight: float) -> None:
        # In place: the compiled graph reads these tensors; a new tensor or a float would recompile it.
        for name, layer in self.layers.items():
            layer.scaling[slot.name].fill_(weight * slot.scales.get(name, 0.0))
        slot.weight = weight

    def _follow_device(self, device: Any) -> None:
        # Module.to() moves parameters but not the scale tensors in peft's plain dicts. Keep them where the UNet
        # runs (the pipeline's execution device, also when the model cache parked it in CPU RAM and brought it
        # back, or offloading moves it per call). .to() returns the same tensor when it is already there.
        first = self.slots[0].name
        probe = next(iter(self.layers.values())).scaling[first]
        if probe.to(device) is probe:
            return
        for layer in self.layers.values():
            for slot in self.slots:
                layer.scaling[slot.name] = layer.scaling[slot.name].to(device)


def hotswap_slots(pipeline: Any) -> HotswapSlots | None:
    """The LoRA slots :func:`prepare_hotswap` gave this pipeline's UNet, or None."""
    unet = getattr(pipeline, "unet", None)
    return getattr(unet, "_atelier_hotswap", None)


def prepare_hotswap(pipeline: Any, *, slots: int = 2, max_rank: int = 128) -> HotswapSlots:
    """Give a freshly loaded pipeline's UNet ``slots`` empty LoRA slots of rank ``max_rank``, before compiling.

    Call it after the pipeline is on its device and dtype. The UNet must have no LoRA adapter yet.
    """
    from peft import LoraConfig
    from peft.utils.hotswap import prepare_model_for_compiled_hotswap

    unet = pipeline.unet
    if slots < 1 or max_rank < 1:
        raise ValueError(f"prepare_hotswap needs at least 1 slot of rank 1, got {slots} of rank {max_rank}")
    if getattr(unet, "peft_config", None):
        raise RuntimeError(
            "prepare_hotswap needs a UNet without LoRA adapters; call it before any LoRA is loaded"
        )
    names = [f"hotswap_{i}_slot" for i in range(slots)]
    with warnings.catch_warnings():
        # peft warns when a model gets a second adapter: here that is the point.
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        for name in names:
            config = LoraConfig(r=max_rank, lora_alpha=max_rank, target_modules=SLOT_LAYERS.pattern)
            unet.add_adapter(config, adapter_name=name)
    # All slots active for good; a slot is "off" when its scale is 0. Then peft turns the scales into tensors.
    unet.set_adapters(names, [0.0] * slots)
    prepare_model_for_compiled_hotswap(unet, target_rank=max_rank, config=unet.peft_config)
    layers = {
        name: module
        for name, module in unet.named_modules()
        if SLOT_LAYERS.fullmatch(name) and hasattr(module, "lora_A")
    }
    for layer in layers.values():
        for name in names:
            layer.lora_A[name].weight.data.zero_()  # peft starts A random (B zero); an empty slot is all zero
    state = HotswapSlots(unet, max_rank, [_Slot(name, weight=0.0) for name in names], layers)
    unet._atelier_hotswap = state
    return state


# -- reading a LoRA file the way diffusers' load_lora_weights does -------------------------------------------


def read_lora(
    pipeline: Any, path: Path
) -> tuple[dict[str, Any], dict[str, float] | None, dict[str, Any] | None]:
    """(state dict with ``unet.``/``text_encoder*.`` keys, network alphas, metadata) of a LoRA file."""
    import json

    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    kwargs: dict[str, Any] = {"return_lora_metadata": True}
    sdxl = isinstance(pipeline, StableDiffusionXLLoraLoaderMixin)
    if sdxl:
        kwargs["unet_config"] = pipeline.unet.config  # as its load_lora_weights does: maps kohya's SGM names
    try:
        state_dict, network_alphas, metadata = pipeline.lora_state_dict(str(path), **kwargs)
    except (ValueError, KeyError, RuntimeError, json.JSONDecodeError) as exc:
        raise AtelierError(f"LoRA file {path.name} could not be applied: {exc}", field="lora") from None
    if not all("lora" in key for key in state_dict):
        raise AtelierError(f"LoRA file {path.name} could not be applied: not a LoRA checkpoint", field="lora")
    return state_dict, network_alphas, metadata


def unet_lora_part(
    state_dict: dict[str, Any], network_alphas: dict[str, float] | None, metadata: dict[str, Any] | None
) -> tuple[dict[str, Any], Any] | None:
    """The UNet part in peft's key format and its ``LoraConfig``, as diffusers' ``load_lora_adapter`` makes them."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from diffusers.utils.peft_utils import _create_lora_config

    prefix = "unet."
    part = {key.removeprefix(prefix): value for key, value in state_dict.items() if key.startswith(prefix)}
    if not part:
        return None
    if "lora_A" not in next(iter(part)):
        part = convert_unet_state_dict_to_peft(part)
    ranks = {f"^{key}": value.shape[1] for key, value in part.items() if "lora_B" in key and value.ndim > 1}
    alphas = None
    if network_alphas:
        alphas = {
            key.removeprefix(prefix): value for key, value in network_alphas.items() if key.startswith(prefix)
        }
    if metadata is not None:
        metadata = {
            key.removeprefix(prefix): value for key, value in metadata.items() if key.startswith(prefix)
        }
    return part, _create_lora_config(part, alphas, metadata, ranks)


def layer_scale(config: Any, layer: str) -> float:
    """alpha / rank of one layer, resolved from the config's patterns exactly as peft does when it injects."""
    from peft.utils.other import get_pattern_key

    rank = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), layer), config.r)
    alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), layer), config.lora_alpha)
    return alpha / math.sqrt(rank) if config.use_rslora else alpha / rank


def _load_text_encoder_parts(
    pipeline: Any,
    name: str,
    state_dict: dict[str, Any],
    network_alphas: dict[str, float] | None,
    metadata: dict[str, Any] | None,
    path: Path,
) -> None:
    from diffusers.utils.peft_utils import delete_adapter_layers

    for component in _text_encoders(pipeline):
        encoder = getattr(pipeline, component)
        if name in (getattr(encoder, "peft_config", None) or {}):
            delete_adapter_layers(encoder, name)  # the file changed since it was loaded
        if not any(key.startswith(component + ".") for key in state_dict):
            continue
        try:
            pipeline.load_lora_into_text_encoder(
                state_dict,
                network_alphas=network_alphas,
                text_encoder=encoder,
                prefix=component,
                lora_scale=pipeline.lora_scale,
                adapter_name=name,
                _pipeline=pipeline,
                metadata=metadata,
            )
        except (ValueError, KeyError, RuntimeError) as exc:
            raise AtelierError(f"LoRA file {path.name} could not be applied: {exc}", field="lora") from None


def _activate_text_encoders(pipeline: Any, wanted: Sequence[tuple[str, float]]) -> None:
    from diffusers.loaders.lora_base import (
        disable_lora_for_text_encoder,
        enable_lora_for_text_encoder,
        set_adapters_for_text_encoder,
    )

    for component in _text_encoders(pipeline):
        encoder = getattr(pipeline, component)
        present = getattr(encoder, "peft_config", None) or {}
        if not present:
            continue
        names = [(name, weight) for name, weight in wanted if name in present]
        if not names:
            disable_lora_for_text_encoder(encoder)
            continue
        enable_lora_for_text_encoder(encoder)
        set_adapters_for_text_encoder([n for n, _ in names], encoder, [w for _, w in names])


def _text_encoders(pipeline: Any) -> list[str]:
    loadable = getattr(pipeline, "_lora_loadable_modules", ())
    return [c for c in TEXT_ENCODERS if c in loadable and getattr(pipeline, c, None) is not None]
