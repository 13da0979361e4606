"""The studio's saved prompt styles (A1111's ``styles.csv``), shared by everyone and applied at submission.

They live in the studio settings table under one key, so every API process and worker sees the same list; the
A1111 options route leaves that key out. Saving replaces the whole list in one write: two admins saving at the
same instant keep the later list (styles change rarely; a table of their own can come when they need history).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable

from atelier.config_models import closest
from atelier.errors import AtelierError, NotFoundError
from atelier.prompts.styles import MAX_STYLES, PromptStyle, check_style
from atelier.service.registry import StudioSettings

STYLES_KEY = "prompt_styles"


class StyleLibrary:
    def __init__(self, settings: StudioSettings) -> None:
        self.settings = settings

    def list(self) -> builtins.list[PromptStyle]:
        stored = self.settings.get(STYLES_KEY) or []
        return [
            PromptStyle(item["name"], item.get("prompt", ""), item.get("negative_prompt", ""))
            for item in stored
        ]

    def find(self, names: Iterable[str], *, field: str = "styles") -> builtins.list[PromptStyle]:
        """The named styles, in the order given; NotFoundError with the closest name for an unknown one."""
        known = {style.name: style for style in self.list()}
        found = []
        for name in names:
            if name not in known:
                hint = closest(name, known)
                raise NotFoundError(
                    f"style {name!r} does not exist" + (f"; did you mean {hint!r}?" if hint else ""),
                    field=field,
                )
            found.append(known[name])
        return found

    def replace(self, styles: Iterable[PromptStyle]) -> builtins.list[PromptStyle]:
        unique = {style.name: check_style(style) for style in styles}
        if len(unique) > MAX_STYLES:
            raise AtelierError(f"at most {MAX_STYLES} styles", field="styles")
        self.settings.update({STYLES_KEY: [style.to_dict() for style in unique.values()]})
        return list(unique.values())

    def save(self, style: PromptStyle) -> PromptStyle:
        """Add a style, or replace the one of the same name."""
        styles = {item.name: item for item in self.list()}
        styles[style.name] = check_style(style)
        self.replace(styles.values())
        return style

    def delete(self, name: str) -> None:
        styles = {item.name: item for item in self.list()}
        if name not in styles:
            raise NotFoundError(f"style {name!r} does not exist", field="name")
        del styles[name]
        self.replace(styles.values())
