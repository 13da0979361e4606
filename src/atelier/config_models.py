"""One base for the settings and specs people write, and one "did you mean" for the keys they misspell.

Studio settings, training options, ad specs, scene and template files are written by hand (TOML, CLI flags,
environment variables), so their errors must read as one line that names the setting, never as pydantic's
multi-line report. :class:`ConfigModel` is a pydantic model that forbids unknown keys and turns the first
validation error into :class:`~atelier.errors.AtelierError` with the field's dotted path; a misspelt key gets the
closest known name. :func:`closest` is the one place that guesses that name, for the validators that walk their
files by hand as well.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from atelier.errors import AtelierError


def closest(key: str, known: Iterable[str]) -> str | None:
    """The known name ``key`` was most likely meant to be (``network-dim``, ``Netwrok_dim`` -> ``network_dim``)."""
    names = sorted(known)
    if not names:
        return None
    wanted = key.replace("-", "_").lower()
    lowered = {name.lower(): name for name in names}
    match = difflib.get_close_matches(wanted, list(lowered), n=1)
    return lowered[match[0]] if match else None


def unknown_key_error(
    key: str, known: Iterable[str], *, where: str, prefix: str = "", field: str | None = None
) -> AtelierError:
    """``unknown key 'sedes' in scene 'studio'; did you mean 'seeds'?`` (or the known keys when none is close).

    ``prefix`` is the table the key sits in (``brand.``): shown and used as the field, not matched.
    """
    names = list(known)
    guess = closest(key, names)
    hint = f"; did you mean {guess!r}?" if guess else f"; known keys: {', '.join(names)}"
    return AtelierError(f"unknown key {prefix + key!r} in {where}{hint}", field=field or prefix + key)


class ConfigModel(BaseModel):
    """A settings or spec model whose bad input is one :class:`AtelierError` naming the field.

    Build instances with :meth:`parse` (``where`` names the file or source in messages). Values are checked
    strictly, as written: ``"600"`` is not a number and ``true`` is not 1 (an int still counts as a float).
    Rules that involve more than one field raise :class:`AtelierError` from a validator; pydantic passes it
    through unchanged.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    #: How messages name a document of this kind when ``parse`` is given no ``where``.
    config_name: ClassVar[str] = "settings"

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, where: str | None = None) -> Self:
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise config_error(exc, cls, where or cls.config_name) from None


_BOUND_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def config_error(exc: ValidationError, model: type[BaseModel], where: str) -> AtelierError:
    """The first of pydantic's errors as one line in Atelier's words: the dotted field, what is wrong, the value."""
    errors = exc.errors(include_url=False)
    # A misspelt key also makes the key it was meant to be "missing": name the misspelling, with its correction.
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    location = [str(part) for part in error["loc"]]
    field = ".".join(location) or None
    name = field or "value"
    if error["type"] == "extra_forbidden" and location:
        prefix = "".join(f"{part}." for part in location[:-1])
        return unknown_key_error(location[-1], _known_keys(model, location[:-1]), where=where, prefix=prefix)
    if error["type"] == "missing":
        return AtelierError(f"{name} is required in {where}", field=field)
    given = error.get("input")
    if error["type"] in _BOUND_ERRORS:
        low, high = _bounds(model, location)
        if low is not None and high is not None:
            return AtelierError(
                f"{name} must be a number from {low:g} to {high:g}, got {given!r}", field=field
            )
    message = error["msg"].removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    return AtelierError(f"{name} in {where}: {message}, got {given!r}", field=field)


def _model_at(model: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    """The nested model that ``path`` (field names) leads to from ``model``; None when it leads elsewhere."""
    current = model
    for part in path:
        field = current.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        current = annotation
    return current


def _known_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    """The field names (by alias where one is set) of the model at ``path``."""
    current = _model_at(model, path)
    return [] if current is None else [info.alias or name for name, info in current.model_fields.items()]


def _bounds(model: type[BaseModel], location: list[str]) -> tuple[float | None, float | None]:
    """The lower and upper bounds (``Field(ge=..., le=...)``) of the field at ``location``."""
    owner = _model_at(model, location[:-1])
    field = owner.model_fields.get(location[-1]) if owner is not None and location else None
    low = high = None
    for rule in field.metadata if field is not None else []:
        low = next((getattr(rule, k) for k in ("ge", "gt") if getattr(rule, k, None) is not None), low)
        high = next((getattr(rule, k) for k in ("le", "lt") if getattr(rule, k, None) is not None), high)
    return low, high
