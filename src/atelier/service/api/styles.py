"""Saved prompt styles over HTTP: ``/api/styles`` (list, import A1111's styles.csv, save, delete) and A1111's
``/sdapi/v1/prompt-styles``. Everyone may list and apply styles; changing them needs an admin key, like the
studio's other shared settings."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from atelier.errors import AtelierError
from atelier.prompts.styles import PromptStyle, read_styles_csv, write_styles_csv
from atelier.service.api.common import require_admin
from atelier.service.studio import Studio
from atelier.service.styles import StyleLibrary


def _styles(request: Request) -> StyleLibrary:
    studio: Studio = request.app.state.studio
    return StyleLibrary(studio.settings)


StylesDep = Annotated[StyleLibrary, Depends(_styles)]


class StyleBody(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    prompt: str = ""
    negative_prompt: str = ""


class StylesBody(BaseModel):
    styles: list[StyleBody] | None = Field(
        default=None, description="the whole list, replacing the current one"
    )
    csv: str | None = Field(default=None, description="or an A1111 styles.csv, as text")


def build_styles_router() -> APIRouter:
    router = APIRouter(tags=["styles"])

    @router.get("/api/styles", summary="Saved prompt styles")
    def list_styles(styles: StylesDep) -> dict[str, Any]:
        found = styles.list()
        return {"styles": [style.to_dict() for style in found], "csv": write_styles_csv(found)}

    @router.put("/api/styles", summary="Replace every style (a list, or A1111's styles.csv as text); admin")
    def replace_styles(body: StylesBody, request: Request, styles: StylesDep) -> dict[str, Any]:
        require_admin(request, "changing the studio's styles")
        if (body.styles is None) == (body.csv is None):
            raise AtelierError(
                "send either styles (a list) or csv (the text of a styles.csv)", field="styles"
            )
        new = (
            read_styles_csv(body.csv)
            if body.csv is not None
            else [PromptStyle(item.name, item.prompt, item.negative_prompt) for item in body.styles or []]
        )
        return {"styles": [style.to_dict() for style in styles.replace(new)]}

    @router.post(
        "/api/styles", status_code=201, summary="Save one style (replacing one of the same name); admin"
    )
    def save_style(body: StyleBody, request: Request, styles: StylesDep) -> dict[str, str]:
        require_admin(request, "changing the studio's styles")
        return styles.save(PromptStyle(body.name.strip(), body.prompt, body.negative_prompt)).to_dict()

    @router.delete("/api/styles/{name}", status_code=204, summary="Delete a style; admin")
    def delete_style(name: str, request: Request, styles: StylesDep) -> None:
        require_admin(request, "changing the studio's styles")
        styles.delete(name)

    @router.get("/sdapi/v1/prompt-styles", tags=["a1111"], summary="Saved prompt styles (A1111)")
    def prompt_styles(styles: StylesDep) -> list[dict[str, str]]:
        return [style.to_dict() for style in styles.list()]

    return router
