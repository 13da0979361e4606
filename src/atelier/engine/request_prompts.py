"""A request's prompts as the passes use them: comments stripped, LoRA tags taken out and resolved to files."""

from __future__ import annotations

from dataclasses import dataclass, field

from atelier.engine.embeddings import Embedding, EmbeddingLibrary
from atelier.engine.loras import AppliedLora, LoraLibrary
from atelier.engine.request import GenerationRequest
from atelier.errors import AtelierError
from atelier.prompts.parser import parse_prompt, strip_comments


@dataclass
class RequestPrompts:
    """The request's prompts with comments stripped and LoRA tags taken out (and resolved to files)."""

    positive: str
    negative: str
    refiner_positive: str
    refiner_negative: str
    hires_positive: str
    hires_negative: str
    loras: list[AppliedLora]
    # Textual inversion embeddings whose names occur in any of the prompts above.
    embeddings: list[Embedding] = field(default_factory=list)

    @classmethod
    def parse(
        cls,
        request: GenerationRequest,
        library: LoraLibrary | None,
        embeddings: EmbeddingLibrary | None = None,
    ) -> RequestPrompts:
        parsed = parse_prompt(request.prompt)
        loras = []
        for tag in parsed.loras:
            if library is None:
                raise AtelierError(
                    f"the prompt uses <lora:{tag.name}>, but no LoRA folder is set up", field="lora"
                )
            loras.append(AppliedLora(library.entry(tag.name), tag.te_weight, tag.unet_weight))
        refiner_positive = request.refiner_prompt if request.refiner_prompt is not None else request.prompt
        refiner_negative = (
            request.refiner_negative_prompt
            if request.refiner_negative_prompt is not None
            else request.negative_prompt
        )
        hires = parse_prompt(request.hr_prompt) if request.hr_prompt else parsed
        # The LoRAs stay applied for the hires pass (the same UNet); its prompt may not ask for others.
        extra = sorted({tag.name for tag in hires.loras} - {tag.name for tag in parsed.loras})
        if extra:
            raise AtelierError(
                f"the hires prompt uses <lora:{extra[0]}>, which the prompt does not; LoRAs apply to both passes",
                field="hr_prompt",
            )
        prompts = cls(
            positive=parsed.text,
            negative=strip_comments(request.negative_prompt),
            refiner_positive=parse_prompt(refiner_positive).text,
            refiner_negative=strip_comments(refiner_negative),
            hires_positive=hires.text,
            hires_negative=strip_comments(request.hr_negative_prompt or request.negative_prompt),
            loras=loras,
        )
        if embeddings is not None:
            prompts.embeddings = embeddings.used_in(prompts.texts())
        return prompts

    def texts(self) -> list[str]:
        return [
            self.positive,
            self.negative,
            self.refiner_positive,
            self.refiner_negative,
            self.hires_positive,
            self.hires_negative,
        ]
