"""JSON schema -> GBNF, without a model: what each keyword lets through, and what is refused.

The judge of what a grammar allows is llama.cpp's own grammar sampler over the real
SmolLM2 vocabulary (GrammarOracle, vocabulary only); the judge of what the schema allows
is jsonschema or Python's `re`, so every check compares the grammar with the schema.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any, Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field
from tests.engine.conftest import GrammarOracle

from ember.engine.grammar import GrammarCompiler, GrammarError, json_object_gbnf, schema_to_gbnf

VALIDATOR = jsonschema.Draft202012Validator


def allowed(schema: dict[str, Any], instance: Any, validator: Any = VALIDATOR) -> bool:
    return bool(validator(schema, format_checker=validator.FORMAT_CHECKER).is_valid(instance))


def check(
    oracle: GrammarOracle,
    schema: dict[str, Any],
    texts: list[str],
    *,
    complete: bool = True,
    validator: Any = VALIDATOR,
) -> None:
    """The grammar accepts a text only if the schema does; with complete=True, exactly when it does."""
    gbnf = schema_to_gbnf(schema)
    for text in texts:
        accepted = oracle.accepts(gbnf, text)
        valid = allowed(schema, json.loads(text), validator)
        if accepted:
            assert valid, f"{schema} lets through {text!r}, which the schema does not allow"
        elif complete:
            assert not valid, f"{schema} refuses {text!r}, which the schema allows"


# --- numbers -------------------------------------------------------------------------


@pytest.mark.parametrize("low,high", [(0, 30), (-15, 7), (-250, -3), (95, 1105), (None, 12), (-8, None), (7, 7)])
def test_integer_bounds_are_exact(grammar_oracle: GrammarOracle, low: int | None, high: int | None) -> None:
    schema: dict[str, Any] = {"type": "integer"}
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["maximum"] = high
    values = {*range(-300, 1200, 13), 0, 1, -1, 9, 10, 99, 100, 999, 1000}
    values |= {b + d for b in (low, high) if b is not None for d in (-1, 0, 1)}
    check(grammar_oracle, schema, [str(v) for v in sorted(values)])
    gbnf = schema_to_gbnf(schema)
    for text in ("01", "+1", "1.0", "1e1", "00"):
        assert not grammar_oracle.accepts(gbnf, text)


def test_integer_exclusive_and_fractional_bounds(grammar_oracle: GrammarOracle) -> None:
    schema = {"type": "integer", "exclusiveMinimum": 2, "exclusiveMaximum": 9.5}
    check(grammar_oracle, schema, [str(v) for v in range(-2, 14)])
    check(grammar_oracle, {"type": "integer", "minimum": 0.5, "maximum": 3.9}, [str(v) for v in range(-1, 6)])
    # Draft 4 spelled exclusiveness as a flag.
    check(
        grammar_oracle,
        {"type": "integer", "minimum": 0, "exclusiveMinimum": True, "maximum": 3},
        [str(v) for v in range(-1, 6)],
        validator=jsonschema.Draft4Validator,
    )


def test_number_bounds_never_let_a_value_out(grammar_oracle: GrammarOracle) -> None:
    rng = random.Random(7)
    for _ in range(25):

        def bound() -> float | int | None:
            return rng.choice([None, rng.randint(-20, 20), round(rng.uniform(-20, 20), rng.randint(1, 3))])

        low, high = bound(), bound()
        if low is not None and high is not None and low > high:
            low, high = high, low
        schema: dict[str, Any] = {"type": "number"}
        if low is not None:
            schema[rng.choice(["minimum", "exclusiveMinimum"])] = low
        if high is not None:
            schema[rng.choice(["maximum", "exclusiveMaximum"])] = high
        if allowed(schema, low) is False and low == high:
            continue  # no number at all
        texts = {f"{rng.uniform(-25, 25):.{rng.randint(0, 4)}f}" for _ in range(25)}
        texts |= {repr(round(b + d, 4)) for b in (low, high) if b is not None for d in (-0.01, 0, 0.01)}
        texts = {t for t in texts if not re.match(r"-?0\d", t) and t != "-0"}
        check(grammar_oracle, schema, sorted(texts), complete=False)


def test_far_bounds(grammar_oracle: GrammarOracle) -> None:
    check(grammar_oracle, {"type": "number", "minimum": 1e20}, ["1", "100000000000000000000", "1e21"], complete=False)
    # A maximum past every number written is no bound at all (generators write 1.7976931348623157e308).
    check(grammar_oracle, {"type": "integer", "maximum": 1.7976931348623157e308}, ["1", "-5", "123456789"])
    check(grammar_oracle, {"type": "number", "minimum": -1e300, "maximum": 0}, ["-3.5", "0", "1"])
    with pytest.raises(GrammarError):
        schema_to_gbnf({"type": "integer", "minimum": 1e40})  # a lower bound out there is a real one


def test_number_bounds_keep_what_they_can(grammar_oracle: GrammarOracle) -> None:
    schema = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
    check(grammar_oracle, schema, ["0", "0.0", "0.5", "1", "1.0", "1.5", "0.000001", "0.999", "-0.1", "2"])
    pydantic_like = {"type": "number", "exclusiveMinimum": 19, "exclusiveMaximum": 25.5}  # gt=19, lt=25.5
    check(grammar_oracle, pydantic_like, ["19", "19.0", "19.01", "25.4999", "25.5", "22", "26"])


# --- strings, arrays, objects, literals -------------------------------------------------


def test_string_lengths_count_characters(grammar_oracle: GrammarOracle) -> None:
    schema = {"type": "string", "minLength": 2, "maxLength": 4}
    texts = ['"a"', '"ab"', '"abcd"', '"abcde"', '"é\\n"', '"\\u00e9a"', '"a\\"b"', '"日本語"', '"日本語です!"']
    check(grammar_oracle, schema, texts)


def test_strings_hold_no_raw_control_characters(grammar_oracle: GrammarOracle) -> None:
    gbnf = schema_to_gbnf({"type": "string"})
    assert grammar_oracle.accepts(gbnf, '"line\\nbreak \\t tab"')
    assert not grammar_oracle.accepts(gbnf, '"line\nbreak"')
    assert not grammar_oracle.accepts(gbnf, '"a\\ud800"')  # a lone surrogate escape


def test_array_items_and_lengths(grammar_oracle: GrammarOracle) -> None:
    schema = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "maxItems": 3}
    check(grammar_oracle, schema, ["[]", "[1]", "[1, 2]", "[1,2,3]", "[1, 2, 3, 4]", "[-1]", '["a"]'])
    pair = {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2, "maxItems": 2}
    check(grammar_oracle, pair, ['[1, "a"]', '["a", 1]', "[1]", '[1, "a", 2]'])
    check(grammar_oracle, {"type": "array", "items": False}, ["[]", "[1]"])


def test_enum_and_const_values_are_written_exactly(grammar_oracle: GrammarOracle) -> None:
    values: list[Any] = ['say "hi"', "back\\slash", "ünïcode", 3, None, True, {"k": [1, 2]}]
    schema = {"enum": values}
    texts = [json.dumps(v) for v in values] + [json.dumps(v, ensure_ascii=False) for v in values]
    check(grammar_oracle, schema, [*texts, '"say hi"', "4", "false", '{"k": [1]}'], complete=False)
    gbnf = schema_to_gbnf(schema)
    assert all(grammar_oracle.accepts(gbnf, json.dumps(v, ensure_ascii=False)) for v in values)
    check(grammar_oracle, {"const": "x", "type": "string"}, ['"x"', '"y"'])
    check(grammar_oracle, {"type": "string", "enum": ["a", 1, "b"]}, ['"a"', '"b"', "1"])


def test_property_names_are_written_exactly(grammar_oracle: GrammarOracle) -> None:
    # An empty name is a valid key; it once took the root rule's name.
    odd = {
        "type": "object",
        "properties": {
            'a b"c\\d': {"type": "integer"},
            "": {"type": "boolean"},
            "root": {"type": "null"},
            "space": {"type": "string"},
        },
        "required": ['a b"c\\d', "", "root", "space"],
    }
    text = json.dumps({'a b"c\\d': 1, "": True, "root": None, "space": "x"})
    check(grammar_oracle, odd, [text, "true", '{"": true}'])
    assert grammar_oracle.accepts(schema_to_gbnf(odd), text)


def test_objects_write_required_and_declared_properties_only(grammar_oracle: GrammarOracle) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "string"}, "c": {"type": "boolean"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    texts = [
        '{"a": 1}',
        '{"a": 1, "b": "x"}',
        '{"a": 1, "c": true}',
        '{"a": 1, "b": "x", "c": false}',
        '{"b": "x"}',
        "{}",
        '{"a": 1, "d": 2}',
        '{"a": "1"}',
    ]
    check(grammar_oracle, schema, texts)
    mapping = {"type": "object", "additionalProperties": {"type": "integer"}}
    check(grammar_oracle, mapping, ["{}", '{"x": 1, "y": 2}', '{"x": "1"}'])
    check(grammar_oracle, {"type": "object", "additionalProperties": False}, ["{}", '{"x": 1}'])


class Tag(BaseModel):
    label: str = Field(max_length=12)
    weight: float = Field(ge=0, le=1)


class Node(BaseModel):
    name: str
    children: list[Node] = Field(default_factory=list, max_length=2)


class Record(BaseModel):
    model_config = {"extra": "forbid"}
    id: int = Field(ge=1, le=999)
    kind: Literal["a", "b"]
    tag: Tag  # a $ref to $defs/Tag
    Tag: int  # a property with the same name as a definition
    maybe: Tag | None = None
    note: str | None = Field(default=None, max_length=5)


def test_pydantic_refs_optional_and_collisions(grammar_oracle: GrammarOracle) -> None:
    schema = Record.model_json_schema()
    good = [
        '{"id": 5, "kind": "a", "tag": {"label": "x", "weight": 0.5}, "Tag": 3}',
        '{"id": 999, "kind": "b", "tag": {"label": "", "weight": 1}, "Tag": -4, "maybe": null, "note": "hi"}',
        '{"id": 1, "kind": "a", "tag": {"label": "y", "weight": 0}, "Tag": 0, "maybe": {"label": "z", "weight": 0.25}}',
    ]
    bad = [
        '{"id": 0, "kind": "a", "tag": {"label": "x", "weight": 0.5}, "Tag": 3}',
        '{"id": 5, "kind": "c", "tag": {"label": "x", "weight": 0.5}, "Tag": 3}',
        '{"id": 5, "kind": "a", "tag": 3, "Tag": 3}',
        '{"id": 5, "kind": "a", "tag": {"label": "x", "weight": 0.5}, "Tag": 3, "note": "too long"}',
        '{"id": 5, "kind": "a", "tag": {"label": "x", "weight": 2}, "Tag": 3}',
    ]
    check(grammar_oracle, schema, good + bad)
    gbnf = schema_to_gbnf(schema)
    for text in good:
        assert grammar_oracle.accepts(gbnf, text)
        Record.model_validate_json(text)


def test_recursive_refs(grammar_oracle: GrammarOracle) -> None:
    schema = Node.model_json_schema()
    check(
        grammar_oracle,
        schema,
        [
            '{"name": "a"}',
            '{"name": "a", "children": [{"name": "b", "children": [{"name": "c"}]}, {"name": "d"}]}',
            '{"name": "a", "children": [{"name": "b"}, {"name": "c"}, {"name": "d"}]}',
            '{"children": []}',
        ],
    )


class Cat(BaseModel):
    pet: Literal["cat"]
    lives: int = Field(ge=0, le=9)


class Dog(BaseModel):
    pet: Literal["dog"]
    good: bool


class Owner(BaseModel):
    animal: Cat | Dog = Field(discriminator="pet")


def test_one_of_with_disjoint_branches(grammar_oracle: GrammarOracle) -> None:
    schema = Owner.model_json_schema()
    assert "oneOf" in json.dumps(schema)
    check(
        grammar_oracle,
        schema,
        [
            '{"animal": {"pet": "cat", "lives": 3}}',
            '{"animal": {"pet": "dog", "good": true}}',
            '{"animal": {"pet": "dog", "lives": 3}}',
        ],
    )
    check(grammar_oracle, {"oneOf": [{"type": "string"}, {"type": "integer"}]}, ['"a"', "1", "1.5"])


@pytest.mark.parametrize(
    "pattern,texts",
    [
        (r"^[0-9]{5}$", ["12345", "1234", "123456", "abcde"]),
        (r"^[a-z]+(-[a-z]+)*$", ["abc", "abc-def", "abc-", "-abc", "ABC"]),
        (r"^\d{3}-\d{4}$", ["555-1234", "5551234"]),
        (r"^(cat|dog)s?$", ["cat", "dogs", "bird"]),
        (r"^[^\W_]+$", ["abc123", "a_b"]),
        (r'^a"b\\c$', ['a"b\\c', "ab"]),
        (r"^.{2,4}$", ["ab", "abcd", "a", "abcde", 'a"', "a\\b"]),
        (r"^[^a-c]$", ["d", "a", '"']),
        (r"^\s?x$", ["x", " x", "\tx", "  x"]),
        (r"ab+", ["ab", "abbb", "xab"]),  # unanchored: only whole matches are written
    ],
)
def test_patterns_never_let_a_mismatch_through(grammar_oracle: GrammarOracle, pattern: str, texts: list[str]) -> None:
    schema = {"type": "string", "pattern": pattern}
    gbnf = schema_to_gbnf(schema)
    for text in texts:
        encoded = json.dumps(text, ensure_ascii=False)
        accepted = grammar_oracle.accepts(gbnf, encoded)
        if accepted:
            assert re.search(pattern, text), (pattern, text)
        elif re.fullmatch(pattern.strip("^$"), text):
            pytest.fail(f"{pattern} refuses {text!r}, which matches it whole")


def test_formats(grammar_oracle: GrammarOracle) -> None:
    check(
        grammar_oracle,
        {"type": "string", "format": "date"},
        [
            '"2024-02-29"',
            '"2023-02-29"',
            '"2000-02-29"',
            '"1900-02-29"',
            '"2023-04-31"',
            '"2023-12-31"',
            '"0000-01-01"',
            '"2023-13-01"',
        ],
    )
    check(
        grammar_oracle,
        {"type": "string", "format": "date-time"},
        ['"2024-05-06T07:08:09Z"', '"2024-05-06T07:08:09.123+02:00"', '"2024-05-06 07:08:09"'],
        complete=False,
    )
    uuid = schema_to_gbnf({"type": "string", "format": "uuid"})
    assert grammar_oracle.accepts(uuid, '"123e4567-e89b-12d3-a456-426614174000"')
    assert not grammar_oracle.accepts(uuid, '"123e4567e89b12d3a456426614174000"')


# --- whitespace, json_object, caching, compiling -------------------------------------


def test_whitespace_is_one_space_at_most(grammar_oracle: GrammarOracle) -> None:
    for gbnf in (json_object_gbnf(), schema_to_gbnf({"type": "object", "properties": {"a": {"type": "integer"}}})):
        assert grammar_oracle.accepts(gbnf, '{"a": 1}')
        assert grammar_oracle.accepts(gbnf, '{ "a" : 1 } ')
        for text in ('{  "a": 1}', '{\n"a": 1}', '{"a":\t1}', '{"a": 1}  ', '{"a": 1}\n'):
            assert not grammar_oracle.accepts(gbnf, text), text


def test_json_object_is_any_object(grammar_oracle: GrammarOracle) -> None:
    gbnf = json_object_gbnf()
    assert grammar_oracle.accepts(gbnf, '{"a": [1, 2.5e3, "x", null, {"b": {}}], "c": false}')
    for text in ("[1]", '"a"', "1", "null", '{"a": 1'):
        assert not grammar_oracle.accepts(gbnf, text)


def test_conversion_is_cached_per_schema() -> None:
    schema = Record.model_json_schema()
    assert schema_to_gbnf(schema) is schema_to_gbnf(json.loads(json.dumps(schema)))


def test_compile_errors_are_grammar_errors(grammar_oracle: GrammarOracle) -> None:
    compiler = GrammarCompiler(grammar_oracle.vocab)
    try:
        for gbnf in ("root ::= nope", 'root ::= "unterminated', 'root ::= root "a"', "", "   "):
            with pytest.raises(GrammarError) as caught:
                compiler.check(gbnf)
            assert caught.value.status_code == 400
        compiler.check(schema_to_gbnf(Record.model_json_schema()))
    finally:
        compiler.close()


# --- refusals ---------------------------------------------------------------------------


class Tagged(BaseModel):
    tags: set[str]


@pytest.mark.parametrize(
    "schema,keyword",
    [
        ({"not": {"type": "string"}}, "not"),
        ({"type": "integer", "if": {"minimum": 0}, "then": {"maximum": 3}}, "if"),
        (Tagged.model_json_schema(), "uniqueItems"),
        ({"type": "object", "patternProperties": {"^x": {"type": "integer"}}}, "patternProperties"),
        ({"type": "object", "propertyNames": {"maxLength": 3}}, "propertyNames"),
        ({"type": "object", "minProperties": 1}, "minProperties"),
        ({"type": "integer", "multipleOf": 5}, "multipleOf"),
        ({"type": "array", "contains": {"type": "integer"}}, "contains"),
        ({"allOf": [{"type": "integer"}, {"minimum": 3}]}, "allOf"),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
        ({"type": "string", "nullable": True}, "nullable"),
        ({"type": "string", "format": "email"}, "format"),
        ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "maxLength"),
        ({"type": "string", "pattern": "(?=a)a"}, "pattern"),
        ({"type": "string", "pattern": "(a)\\1"}, "pattern"),
        ({"type": "string", "pattern": "[unclosed"}, "pattern"),
        ({"type": "string", "pattern": "(?i)abc"}, "pattern"),
        ({"$defs": {"A": {"type": "string"}}, "$ref": "#/$defs/A", "maxLength": 2}, "maxLength"),
        ({"$ref": "#/$defs/Missing"}, "$ref"),
        ({"$ref": "https://example.com/schema.json"}, "$ref"),
        ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["b"]}, "required"),
        ({"type": "string", "contentEncoding": "base64"}, "contentEncoding"),
        ({"type": "integer", "minimum": 5, "maximum": 4}, "minimum"),
        ({"type": "array", "minItems": 3, "maxItems": 2}, "maxItems"),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 100000}, "minItems"),
        ({"type": "integer", "minimum": "3"}, "minimum"),
        ({"type": "strng"}, "type"),
        (
            {"properties": {"a": {"type": "object", "properties": {"b": {"type": "integer", "multipleOf": 2}}}}},
            "multipleOf",
        ),
    ],
)
def test_what_cannot_be_enforced_is_refused_by_name(schema: dict[str, Any], keyword: str) -> None:
    with pytest.raises(GrammarError) as caught:
        schema_to_gbnf(schema)
    error = caught.value
    assert error.keyword == keyword
    assert error.status_code == 400
    assert error.message


def test_refusals_say_where(grammar_oracle: GrammarOracle) -> None:
    schema = {"properties": {"a": {"type": "object", "properties": {"b": {"type": "integer", "multipleOf": 2}}}}}
    with pytest.raises(GrammarError) as caught:
        schema_to_gbnf(schema)
    assert caught.value.path == "/properties/a/properties/b"
    assert "/properties/a/properties/b" in caught.value.message


def test_annotations_pass(grammar_oracle: GrammarOracle) -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:x",
        "$comment": "c",
        "title": "T",
        "description": "d",
        "type": "object",
        "examples": [{"a": 1}],
        "deprecated": False,
        "properties": {"a": {"type": "integer", "default": 1, "readOnly": True, "writeOnly": False}},
        "required": ["a"],
    }
    assert grammar_oracle.accepts(schema_to_gbnf(schema), '{"a": 1}')


def test_not_json_is_refused() -> None:
    with pytest.raises(GrammarError):
        schema_to_gbnf({"type": "number", "maximum": float("nan")})
    with pytest.raises(GrammarError):
        schema_to_gbnf(["not", "an", "object"])  # type: ignore[arg-type]
