"""Captions to text-encoder states for training, with kohya's ``max_token_length`` chunking and clip skip.

CLIP reads 77 tokens (BOS, 75 tokens, EOS). For longer captions kohya tokenizes to ``max_token_length + 2``
tokens, cuts the 75-token middle into chunks that each get their own BOS and EOS (so every chunk is a normal
77-token CLIP input), encodes the chunks as one batch, and joins the results back: the first chunk's BOS state,
the 75 middle states of every chunk, and the last chunk's final state; 150 and 225 tokens give 152 and 227 states.
SDXL's pooled embedding is taken from the first chunk, as kohya does.

Clip skip follows the generation engine (and so A1111 and diffusers), so a LoRA is trained on the conditioning it
is later used with: SD 1.5 takes ``hidden_states[-clip_skip]`` and applies the final layer norm; SDXL takes
``hidden_states[-(clip_skip + 1)]`` of both encoders (the penultimate layer at clip skip 1) without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

CLIP_CHUNK = 77


def tokenize(tokenizer: Any, captions: Sequence[str], max_token_length: int) -> torch.Tensor:
    """Token ids of shape ``(batch, chunks, 77)``: one chunk at 75 tokens, two at 150, three at 225."""
    input_ids = tokenizer(
        list(captions),
        padding="max_length",
        truncation=True,
        max_length=max_token_length + 2,
        return_tensors="pt",
    ).input_ids
    if max_token_length + 2 <= CLIP_CHUNK:
        return input_ids[:, None, :]
    middle = CLIP_CHUNK - 2
    pads_with_eos = tokenizer.pad_token_id == tokenizer.eos_token_id
    chunks = []
    for start in range(1, max_token_length + 1, middle):
        chunk = torch.cat([input_ids[:, :1], input_ids[:, start : start + middle], input_ids[:, -1:]], dim=1)
        if not pads_with_eos:
            # Tokenizers that pad with another token (SDXL's second one pads with "!") leave chunks that were cut
            # mid-caption without an EOS, and empty chunks with BOS directly followed by padding; kohya writes
            # an EOS in both places so each chunk is a well-formed CLIP input.
            cut_mid_caption = (chunk[:, -2] != tokenizer.eos_token_id) & (
                chunk[:, -2] != tokenizer.pad_token_id
            )
            chunk[cut_mid_caption, -1] = tokenizer.eos_token_id
            empty = chunk[:, 1] == tokenizer.pad_token_id
            chunk[empty, 1] = tokenizer.eos_token_id
        chunks.append(chunk)
    return torch.stack(chunks, dim=1)


def _join_chunks(states: torch.Tensor, batch: int) -> torch.Tensor:
    """``(batch * chunks, 77, dim)`` -> ``(batch, 2 + 75 * chunks, dim)`` as kohya joins them."""
    states = states.reshape(batch, -1, states.shape[-1])
    if states.shape[1] == CLIP_CHUNK:
        return states
    middles = [states[:, start : start + CLIP_CHUNK - 2] for start in range(1, states.shape[1], CLIP_CHUNK)]
    return torch.cat([states[:, :1], *middles, states[:, -1:]], dim=1)


def _final_layer_norm(text_encoder: Any) -> torch.nn.Module:
    # DistributedDataParallel wraps the model in `.module`. transformers 5 dropped the `text_model` level from
    # CLIPTextModel; CLIPTextModelWithProjection kept it.
    model = getattr(text_encoder, "module", text_encoder)
    inner = getattr(model, "text_model", model)
    return inner.final_layer_norm


def encode_sd15(text_encoder: Any, input_ids: torch.Tensor, clip_skip: int) -> torch.Tensor:
    """SD 1.5 conditioning ``(batch, tokens, 768)`` from ids of shape ``(batch, chunks, 77)`` on its device."""
    batch = input_ids.shape[0]
    flat_ids = input_ids.reshape(-1, CLIP_CHUNK)
    if clip_skip <= 1:
        states = text_encoder(flat_ids, return_dict=True).last_hidden_state
    else:
        output = text_encoder(flat_ids, output_hidden_states=True, return_dict=True)
        states = _final_layer_norm(text_encoder)(output.hidden_states[-clip_skip])
    return _join_chunks(states, batch)


def encode_sdxl(
    text_encoder: Any,
    text_encoder_2: Any,
    input_ids: torch.Tensor,
    input_ids_2: torch.Tensor,
    clip_skip: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL conditioning: both encoders' states concatenated ``(batch, tokens, 2048)`` and the pooled embedding."""
    batch = input_ids.shape[0]
    layer = -(clip_skip + 1)
    output_1 = text_encoder(input_ids.reshape(-1, CLIP_CHUNK), output_hidden_states=True, return_dict=True)
    output_2 = text_encoder_2(
        input_ids_2.reshape(-1, CLIP_CHUNK), output_hidden_states=True, return_dict=True
    )
    states_1 = _join_chunks(output_1.hidden_states[layer], batch)
    states_2 = _join_chunks(output_2.hidden_states[layer], batch)
    pooled = output_2.text_embeds.reshape(batch, -1, output_2.text_embeds.shape[-1])[:, 0]
    return torch.cat([states_1, states_2.to(states_1.dtype)], dim=-1), pooled
