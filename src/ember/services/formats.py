"""A response format as the grammar the engine samples under (structured output).

Converted before anything is generated, so a schema ember cannot enforce is a 400 naming the
keyword (engine/grammar.py's GrammarError), never unconstrained text.
"""

from __future__ import annotations

from ember.engine.grammar import GrammarError, json_object_gbnf, schema_to_gbnf
from ember.services.types import ResponseFormat


def format_grammar(form: ResponseFormat) -> str | None:
    """GBNF for json_object / json_schema; None for text."""
    if form.type == "json_object":
        return json_object_gbnf()
    if form.type != "json_schema" or form.schema is None:
        return None
    try:
        return schema_to_gbnf(form.schema)
    except GrammarError as exc:
        raise GrammarError(
            f"response_format: {exc.message}", keyword=exc.keyword, path=exc.path, param="response_format"
        ) from None
