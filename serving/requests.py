"""LibreTranslate's /translate fields, parsed and checked. Every problem is an ApiError with
LibreTranslate's status code (400) and a one-line message saying what to send instead."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    """An error answered as JSON {"error": message} with `status`; `kind` labels the metric."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def bad_request(message: str, kind: str = "bad_request") -> ApiError:
    return ApiError(400, kind, f"Invalid request: {message}")


@dataclasses.dataclass(frozen=True)
class TranslateRequest:
    texts: list[str]
    is_list: bool  # q was a list: answer a list


@dataclasses.dataclass(frozen=True)
class Limits:
    char_limit: int  # characters in all of a request's texts together
    batch_limit: int  # texts in one request's list


def _string_field(fields: Mapping[str, Any], name: str, default: str | None = None) -> str:
    value = fields.get(name, default)
    if value is None or value == "":
        raise bad_request(f"missing {name} parameter")
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a string, got {type(value).__name__}")
    return value


def _texts(fields: Mapping[str, Any], limits: Limits) -> tuple[list[str], bool]:
    q = fields.get("q")
    if q is None or q == "" or q == []:
        raise bad_request("missing q parameter")
    is_list = isinstance(q, list)
    texts = q if is_list else [q]
    if not all(isinstance(text, str) for text in texts):
        raise bad_request("q must be a string or a list of strings")
    if len(texts) > limits.batch_limit:
        raise bad_request(
            f"{len(texts)} texts exceed the batch limit of {limits.batch_limit}: send at most "
            f"{limits.batch_limit} per request",
            kind="too_large",
        )
    characters = sum(len(text) for text in texts)
    if characters > limits.char_limit:
        raise bad_request(
            f"{characters} characters exceed the limit of {limits.char_limit}: split the text "
            "over several requests",
            kind="too_large",
        )
    return list(texts), is_list


def _check_language(code: str, field: str, supported: str, pair: str) -> None:
    if code != supported:
        raise ApiError(
            400,
            "unsupported_language",
            f"{code} is not supported as {field} language: this server translates {pair} "
            "(GET /languages lists it)",
        )


def _alternatives(fields: Mapping[str, Any]) -> None:
    value = fields.get("alternatives", 0)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise bad_request(f"alternatives must be an integer, got {value!r}") from None
    if number < 0 or isinstance(value, bool | float):
        raise bad_request(f"alternatives must be a non-negative integer, got {value!r}")
    if number > 0:
        raise bad_request(
            "this server gives no alternative translations: send alternatives=0 or leave it out"
        )


def parse_translate(
    fields: Mapping[str, Any], *, source_lang: str, target_lang: str, limits: Limits
) -> TranslateRequest:
    """The request of /translate's fields (a JSON object, or form/query fields with a list
    where a name repeats). `source` may be "auto": the server has one source language."""
    texts, is_list = _texts(fields, limits)
    pair = f"{source_lang} to {target_lang}"
    source = _string_field(fields, "source")
    if source != "auto":
        _check_language(source, "source", source_lang, pair)
    _check_language(_string_field(fields, "target"), "target", target_lang, pair)
    text_format = _string_field(fields, "format", "text")
    if text_format != "text":
        raise bad_request(f"format {text_format!r} is not supported: send plain text (format=text)")
    _alternatives(fields)
    return TranslateRequest(texts, is_list)
