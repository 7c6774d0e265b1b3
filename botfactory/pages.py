"""HTML pages rendered from the autoescaped Jinja templates in botfactory/templates: every value
a template shows is escaped unless it is marked safe (no f-string markup, no manual escaping)."""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape


@cache
def environment() -> Environment:
    return Environment(loader=PackageLoader("botfactory", "templates"),
                       autoescape=select_autoescape(("html",), default=True),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                       keep_trailing_newline=True)


def render_page(template: str, **context: Any) -> str:
    """`template` (a file in botfactory/templates) rendered with `context`."""
    return environment().get_template(template).render(**context)
