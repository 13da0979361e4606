"""Prompt text -> the embeddings diffusers' pipelines take, with A1111's prompt language.

Encoding happens here, outside diffusers' pipelines, so the stock pipelines run unchanged:

- emphasis ``(x:1.3)`` scales token embeddings, then restores their mean (A1111's default "Original" emphasis);
- prompts of any length are split in 75-token chunks (BREAK forces one), encoded separately and concatenated;
- the positive and negative prompts are padded to the same number of chunks with empty chunks;
- scheduled ``[a:b:0.5]`` and alternating ``[a|b]`` prompts and composable ``AND`` parts are applied by
  :class:`PromptGuidance`, which swaps the UNet's text conditioning per step through forward hooks.

A plain prompt takes none of the special paths and gives exactly diffusers' own ``encode_prompt`` result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from atelier.engine.embeddings import CLIP_G, CLIP_L, Embedding, EmbeddingTable, embedding_vectors_in_place
from atelier.engine.memory import execution_device
from atelier.prompts.chunks import chunk_tokens, pad_chunk, token_runs
from atelier.prompts.parser import (
    parse_attention,
    schedule_and_parts,
    schedule_prompt,
    text_at_step,
)

CHUNK_TOKENS = 75


def diffusers_clip_skip(a1111_clip_skip: int) -> int | None:
    """A1111 counts the last layer as 1; diffusers counts the layers skipped."""
    return a1111_clip_skip - 1 if a1111_clip_skip > 1 else None


@dataclass
class EncodedText:
    """One text's embeddings: ``embeds`` (1, 77 * chunks, width) and SDXL's pooled embedding (1, width)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    @property
    def chunks(self) -> int:
        return self.embeds.shape[1] // (CHUNK_TOKENS + 2)


@dataclass
class _EncoderSlot:
    tokenizer: Any
    text_encoder: Any
    # SD 1.5 takes the final layer (after final_layer_norm); SDXL's encoders take the penultimate hidden state.
    sdxl: bool
    pooled: bool
    comma: int | None = None
    # Textual inversion embeddings the request's prompts name, for this encoder (None: no embeddings).
    embeddings: EmbeddingTable | None = None

    def __post_init__(self) -> None:
        # Chunks break after a comma when they can (A1111's comma backtrack).
        comma = self.tokenizer.convert_tokens_to_ids(",</w>")
        self.comma = None if comma == self.tokenizer.unk_token_id else comma


class PromptEncoder:
    """Encodes prompt texts for one pipeline (SD 1.5: one CLIP; SDXL: two; SDXL refiner: the second only)."""

    def __init__(
        self, pipeline: Any, *, clip_skip: int = 1, embeddings: list[Embedding] | None = None
    ) -> None:
        self.clip_skip = clip_skip
        self.slots: list[_EncoderSlot] = []
        sdxl = hasattr(pipeline, "text_encoder_2")
        if getattr(pipeline, "text_encoder", None) is not None:
            self.slots.append(_EncoderSlot(pipeline.tokenizer, pipeline.text_encoder, sdxl, pooled=False))
        if sdxl and getattr(pipeline, "text_encoder_2", None) is not None:
            self.slots.append(_EncoderSlot(pipeline.tokenizer_2, pipeline.text_encoder_2, True, pooled=True))
        if embeddings:
            for slot in self.slots:
                # SDXL's second encoder (and the refiner's only one) is OpenCLIP bigG: the embeddings' clip_g.
                key = CLIP_G if slot.pooled else CLIP_L
                width = slot.text_encoder.get_input_embeddings().weight.shape[-1]
                slot.embeddings = EmbeddingTable(embeddings, slot.tokenizer, key, width) or None
        # Where inputs go: the GPU even while an offloaded model waits in CPU RAM (engine/memory.py).
        self.device = execution_device(pipeline)
        self.dtype = pipeline.unet.dtype
        self._cache: dict[str, EncodedText] = {}

    # -- one text ---------------------------------------------------------------------------------------------

    def encode(self, text: str) -> EncodedText:
        """Encode a text with emphasis and chunking (no scheduling, no AND: see :func:`build_conditioning`)."""
        if text not in self._cache:
            self._cache[text] = self._encode(parse_attention(text))
        return self._cache[text]

    def empty_chunk(self) -> EncodedText:
        """What A1111 pads a shorter prompt with: the encoding of an empty chunk."""
        return self.encode("")

    def _encode(self, runs: list[tuple[str, float]]) -> EncodedText:
        per_slot = []
        pooled = None
        chunk_lists = [self._chunks(slot, runs) for slot in self.slots]
        count = max(len(c) for c in chunk_lists)
        for slot, slot_chunks in zip(self.slots, chunk_lists, strict=True):
            while len(slot_chunks) < count:  # tokenizers with different vocabularies (never in practice)
                slot_chunks.append(([], []))
            embeds, slot_pooled = self._encode_chunks(slot, slot_chunks)
            per_slot.append(embeds)
            if slot.pooled:
                pooled = slot_pooled
        embeds = torch.cat(per_slot, dim=-1)
        return EncodedText(embeds.to(self.dtype), pooled.to(self.dtype) if pooled is not None else None)

    def _chunks(
        self, slot: _EncoderSlot, runs: list[tuple[str, float]]
    ) -> list[tuple[list[int], list[float]]]:
        def encode(texts: list[str]) -> list[list[int]]:
            if not texts:
                return []
            ids = slot.tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
            if slot.embeddings is not None:
                ids = [slot.embeddings.replace(list(row)) for row in ids]
            return ids

        return chunk_tokens(token_runs(runs, encode), slot.comma, chunk_size=CHUNK_TOKENS)

    def _encode_chunks(
        self, slot: _EncoderSlot, chunks: list[tuple[list[int], list[float]]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokenizer = slot.tokenizer
        padded = [
            pad_chunk(
                chunk, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, CHUNK_TOKENS
            )
            for chunk in chunks
        ]
        rows = [tokens for tokens, _ in padded]
        weights = [multipliers for _, multipliers in padded]
        input_ids = torch.tensor(rows, dtype=torch.long, device=self.device)
        with embedding_vectors_in_place(slot.text_encoder, input_ids, slot.embeddings) as readable_ids:
            # Hidden states are only needed below the last layer (SDXL, clip skip); skip them otherwise.
            output = slot.text_encoder(readable_ids, output_hidden_states=slot.sdxl or self.clip_skip > 1)
        if slot.sdxl:
            hidden = output.hidden_states[-(self.clip_skip + 1)]
        elif self.clip_skip > 1:
            hidden = _final_layer_norm(slot.text_encoder)(output.hidden_states[-self.clip_skip])
        else:
            hidden = output.last_hidden_state
        pooled = output.text_embeds[:1] if slot.pooled else None
        multipliers = torch.tensor(weights, dtype=hidden.dtype, device=hidden.device)
        if (multipliers != 1.0).any():
            hidden = _apply_emphasis(hidden, multipliers)
        # Chunks are concatenated along the token axis into one sequence.
        return hidden.reshape(1, -1, hidden.shape[-1]), pooled


def _final_layer_norm(text_encoder: Any) -> Any:
    # transformers 5 flattened CLIPTextModel (no .text_model); older versions nest it.
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def _apply_emphasis(hidden: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis, per chunk: scale each token, then restore the chunk's mean."""
    original_mean = hidden.mean(dim=(1, 2), keepdim=True)
    hidden = hidden * multipliers.unsqueeze(-1)
    new_mean = hidden.mean(dim=(1, 2), keepdim=True)
    return hidden * (original_mean / new_mean)


# -- pipeline inputs -------------------------------------------------------------------------------------------


def pad_to_chunks(encoded: EncodedText, chunks: int, encoder: PromptEncoder) -> EncodedText:
    if encoded.chunks >= chunks:
        return encoded
    extra = encoder.empty_chunk().embeds.repeat(1, chunks - encoded.chunks, 1)
    return EncodedText(torch.cat([encoded.embeds, extra], dim=1), encoded.pooled)


def repeat_last_to(encoded: EncodedText, tokens: int) -> EncodedText:
    """A1111's ``stack_conds`` for AND parts of different lengths: repeat the last vector."""
    missing = tokens - encoded.embeds.shape[1]
    if missing <= 0:
        return encoded
    last = encoded.embeds[:, -1:, :].repeat(1, missing, 1)
    return EncodedText(torch.cat([encoded.embeds, last], dim=1), encoded.pooled)


def _kwargs(positive: EncodedText, negative: EncodedText) -> dict[str, torch.Tensor]:
    kwargs = {"prompt_embeds": positive.embeds, "negative_prompt_embeds": negative.embeds}
    if positive.pooled is not None:
        assert negative.pooled is not None  # one encoder gives every text a pooled embedding, or none
        kwargs["pooled_prompt_embeds"] = positive.pooled
        kwargs["negative_pooled_prompt_embeds"] = negative.pooled
    return kwargs


@dataclass
class Conditioning:
    """Keyword arguments for a diffusers pipeline call, plus the per-step guidance when the prompt needs it."""

    kwargs: dict[str, torch.Tensor]
    guidance: PromptGuidance | None = None

    @contextlib.contextmanager
    def attached(self, unet: Any) -> Iterator[None]:
        if self.guidance is None:
            yield
            return
        with self.guidance.attached(unet):
            yield

    def step_done(self, step_index: int) -> None:
        if self.guidance is not None:
            self.guidance.current_step = step_index + 1


def build_conditioning(
    encoder: PromptEncoder,
    prompt: str,
    negative_prompt: str,
    *,
    steps: int,
    zero_empty_negative: bool = False,
    cfg: bool = True,
) -> Conditioning:
    """Everything the pipeline needs for this prompt pair. ``prompt`` must already be free of LoRA tags."""
    parts = schedule_and_parts(prompt, steps)
    negative_schedule = schedule_prompt(negative_prompt, steps)

    def zeroed(text: str) -> bool:
        # SDXL's empty negative prompt is zeros, as in diffusers and A1111.
        return zero_empty_negative and text == ""

    # Every text any step can use is encoded once; all are padded to one length so that steps can swap freely.
    part_tokens = max(encoder.encode(text).embeds.shape[1] for part in parts for _, text in part.schedule)
    negative_chunks = [encoder.encode(text).chunks for _, text in negative_schedule if not zeroed(text)]
    chunks = max([part_tokens // (CHUNK_TOKENS + 2), *negative_chunks])
    padded: dict[tuple[str, bool], EncodedText] = {}

    def prepared(text: str, positive: bool) -> EncodedText:
        if (text, positive) not in padded:
            if not positive and zeroed(text):
                like = encoder.encode(parts[0].schedule[0][1])
                shape = (1, chunks * (CHUNK_TOKENS + 2), like.embeds.shape[-1])
                embeds = torch.zeros(shape, dtype=like.embeds.dtype, device=like.embeds.device)
                pooled = None if like.pooled is None else torch.zeros_like(like.pooled)
                encoded = EncodedText(embeds, pooled)
            else:
                encoded = encoder.encode(text)
                if positive:
                    encoded = repeat_last_to(encoded, part_tokens)
                encoded = pad_to_chunks(encoded, chunks, encoder)
            padded[(text, positive)] = encoded
        return padded[(text, positive)]

    def positive_at(step: int) -> list[tuple[float, EncodedText]]:
        return [(part.weight, prepared(text_at_step(part.schedule, step), True)) for part in parts]

    def uncond_at(step: int) -> EncodedText:
        return prepared(text_at_step(negative_schedule, step), False)

    kwargs = _kwargs(positive_at(0)[0][1], uncond_at(0))
    plain = (
        len(parts) == 1
        and parts[0].weight == 1.0
        and len(parts[0].schedule) == 1
        and len(negative_schedule) == 1
    )
    if plain:
        return Conditioning(kwargs)
    return Conditioning(kwargs, PromptGuidance(positive_at, uncond_at, cfg=cfg))


@dataclass
class PromptGuidance:
    """Per-step prompt changes and composable AND, applied around the UNet with forward hooks.

    The pipeline still batches ``[uncond, cond]`` for classifier-free guidance. The pre-hook widens the batch to
    ``[uncond, part_1 .. part_n]`` with this step's embeddings; the post-hook folds it back to
    ``[uncond, uncond + sum(w_i * (part_i - uncond))]``, so the pipeline's own guidance formula yields A1111's
    composable diffusion: ``uncond + scale * sum(w_i * (part_i - uncond))``.
    """

    positive_at: Any
    uncond_at: Any
    cfg: bool = True
    current_step: int = 0
    _half: int = field(default=0, repr=False)
    _weights: list[float] = field(default_factory=list, repr=False)

    @contextlib.contextmanager
    def attached(self, unet: Any) -> Iterator[None]:
        self.current_step = 0
        handles = [
            unet.register_forward_pre_hook(self._before, with_kwargs=True),
            unet.register_forward_hook(self._after),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _before(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        parts = self.positive_at(self.current_step)
        uncond = self.uncond_at(self.current_step)
        incoming = kwargs["encoder_hidden_states"].shape[0]
        # With CFG the pipeline sends [uncond x B, cond x B]; without it only [cond x B].
        half = incoming // 2 if self.cfg else incoming
        self._half, self._weights = half, [weight for weight, _ in parts]

        def widen(tensor: torch.Tensor) -> torch.Tensor:
            if not self.cfg:
                return torch.cat([tensor] * len(parts))
            return torch.cat([tensor[:half]] + [tensor[half:]] * len(parts))

        states = ([uncond.embeds] if self.cfg else []) + [part.embeds for _, part in parts]
        dtype = kwargs["encoder_hidden_states"].dtype
        new_kwargs = dict(kwargs)
        new_kwargs["encoder_hidden_states"] = torch.cat([s.expand(half, -1, -1) for s in states]).to(dtype)
        added = kwargs.get("added_cond_kwargs")
        if added:
            pooled = ([uncond.pooled] if self.cfg else []) + [part.pooled for _, part in parts]
            new_kwargs["added_cond_kwargs"] = {
                **added,
                "text_embeds": torch.cat([p.expand(half, -1) for p in pooled]).to(added["text_embeds"].dtype),
                "time_ids": widen(added["time_ids"]),
            }
        if kwargs.get("timestep_cond") is not None:
            new_kwargs["timestep_cond"] = widen(kwargs["timestep_cond"])
        # ControlNet residuals are added to the UNet's features row by row: they follow the sample's rows.
        if kwargs.get("down_block_additional_residuals") is not None:
            new_kwargs["down_block_additional_residuals"] = [
                widen(residual) for residual in kwargs["down_block_additional_residuals"]
            ]
        if kwargs.get("mid_block_additional_residual") is not None:
            new_kwargs["mid_block_additional_residual"] = widen(kwargs["mid_block_additional_residual"])
        new_args = list(args)
        timestep = new_args[1] if len(new_args) > 1 else kwargs.get("timestep")
        if isinstance(timestep, torch.Tensor) and timestep.ndim > 0 and timestep.shape[0] == incoming:
            if len(new_args) > 1:
                new_args[1] = widen(timestep)
            else:
                new_kwargs["timestep"] = widen(timestep)
        if args:
            new_args[0] = widen(args[0])
        else:
            new_kwargs["sample"] = widen(kwargs["sample"])
        return tuple(new_args), new_kwargs

    def _after(self, module: Any, args: tuple, output: Any) -> Any:
        prediction = output[0] if isinstance(output, tuple) else output.sample
        half, weights = self._half, self._weights
        uncond = prediction[:half] if self.cfg else None
        parts = (prediction[half:] if self.cfg else prediction).split(half)
        if len(parts) == 1 and weights[0] == 1.0:
            combined = parts[0]
        elif uncond is None:
            combined = sum(w * p for w, p in zip(weights, parts, strict=True)) / (sum(weights) or 1.0)
        else:
            combined = uncond + sum(w * (p - uncond) for w, p in zip(weights, parts, strict=True))
        folded = combined if uncond is None else torch.cat([uncond, combined])
        if isinstance(output, tuple):
            return (folded, *output[1:])
        output.sample = folded
        return output
