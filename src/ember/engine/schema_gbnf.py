"""JSON schema -> GBNF, on llama-cpp-python's SchemaConverter, with every keyword accounted for.

The converter is used as a library: its rule bookkeeping (`_add_rule`,
`format_grammar`), `$ref` resolution and object rules stay; `visit` is
ember's own so that each keyword of each (sub)schema is either enforced or
refused. Invariants of what comes out:

- Every text the grammar allows is JSON that validates against the schema.
  Where the grammar cannot say everything a schema allows it says less
  (objects carry only their declared properties, numbers have at most 15
  decimals, unanchored patterns match whole), never more.
- A keyword the grammar cannot enforce raises SchemaError naming it:
  `not`, `if`, `uniqueItems`, `patternProperties`, unknown `format`s,
  an `allOf` of several schemas, and so on. Annotations pass.
- Whitespace between tokens is at most one space (`space ::= " "?`) and
  strings hold no raw control characters, so no answer can run on in
  spaces or newlines outside a string's own content.
"""

from __future__ import annotations

import json
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext
from typing import Any

from llama_cpp.llama_grammar import PRIMITIVE_RULES, RESERVED_NAMES, BuiltinRule, SchemaConverter

from ember.engine.gbnf_numbers import FRACTION_DIGITS, inclusive_bounds, integer_range, number_range, places_for
from ember.engine.gbnf_pattern import MAX_REPEAT, PatternError, gbnf_string, pattern_to_gbnf

MAX_BOUND_DIGITS = 30  # numeric bounds past this many digits are refused rather than written out

ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "discriminator",
        "$defs",
        "definitions",
    }
)
_GENERAL = frozenset({"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"})
_NUMERIC = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
_BY_TYPE: dict[str, frozenset[str]] = {
    "string": frozenset({"minLength", "maxLength", "pattern", "format"}),
    "integer": _NUMERIC,
    "number": _NUMERIC,
    "array": frozenset({"items", "prefixItems", "minItems", "maxItems", "additionalItems"}),
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "boolean": frozenset(),
    "null": frozenset(),
}
ENFORCED = _GENERAL | frozenset().union(*_BY_TYPE.values())
REFUSED = frozenset(
    {
        "not",
        "if",
        "then",
        "else",
        "uniqueItems",
        "patternProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "contains",
        "minContains",
        "maxContains",
        "unevaluatedProperties",
        "unevaluatedItems",
        "multipleOf",
        "contentEncoding",
        "contentMediaType",
        "contentSchema",
        "$dynamicRef",
        "$dynamicAnchor",
        "$recursiveRef",
        "$recursiveAnchor",
        "$anchor",
        "$vocabulary",
    }
)

_SPACE = '" "?'  # at most one space between tokens
# A character of a JSON string: no raw control characters (JSON forbids them; raw newlines
# were how answers ran away), escapes with no lone surrogates.
_CHAR = (
    r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" ([0-9a-cA-Ce-fE-F] [0-9a-fA-F]{3} '
    r"| [dD] [0-7] [0-9a-fA-F]{2}))"
)
_YEAR = '([1-9] [0-9]{3} | "0" [1-9] [0-9]{2} | "00" [1-9] [0-9] | "000" [1-9])'
_LEAP = '("0" [48] | [2468] [048] | [13579] [26])'
_DAY28 = '("0" [1-9] | "1" [0-9] | "2" [0-8])'
_DATE = (
    f'{_YEAR} "-" ("0" [13578] | "1" [02]) "-" ({_DAY28} | "29" | "3" [01]) '
    f'| {_YEAR} "-" ("0" [469] | "11") "-" ({_DAY28} | "29" | "30") '
    f'| {_YEAR} "-02-" {_DAY28} '
    f'| ([0-9] [0-9] {_LEAP} | {_LEAP} "00") "-02-29"'
)
_TIME = (
    '([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? '
    '("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])'
)
_HEX = "[0-9a-fA-F]"

RULES: dict[str, BuiltinRule] = {
    **PRIMITIVE_RULES,
    "char": BuiltinRule(_CHAR, []),
    "date": BuiltinRule(_DATE, []),
    "time": BuiltinRule(_TIME, []),
    "date-time": BuiltinRule('date "T" time', ["date", "time"]),
    "date-string": BuiltinRule('"\\"" date "\\"" space', ["date"]),
    "time-string": BuiltinRule('"\\"" time "\\"" space', ["time"]),
    "date-time-string": BuiltinRule('"\\"" date-time "\\"" space', ["date-time"]),
    "uuid-string": BuiltinRule(
        f'"\\"" {_HEX}{{8}} "-" {_HEX}{{4}} "-" {_HEX}{{4}} "-" {_HEX}{{4}} "-" {_HEX}{{12}} "\\"" space', []
    ),
}
FORMATS = ("date", "time", "date-time", "uuid")


class SchemaError(ValueError):
    """The schema cannot be turned into a grammar that enforces it; `keyword` names why where one does."""

    def __init__(self, message: str, *, keyword: str | None = None, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.keyword = keyword
        self.path = path


def _json_types(value: Any) -> set[str]:
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"integer", "number"} if value.is_integer() else {"number"}
    if isinstance(value, str):
        return {"string"}
    return {"array"} if isinstance(value, list) else {"object"}


def _times(low: int, high: int | None) -> str:
    """A GBNF quantifier for low..high repetitions (high None: no limit; never 0..0)."""
    if high is None:
        return {0: "*", 1: "+"}.get(low, f"{{{low},}}")
    if (low, high) == (0, 1):
        return "?"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


def _pointer(path: str, key: str | int) -> str:
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


class SchemaGrammar(SchemaConverter):
    """One conversion: construct, then `convert(schema)` once."""

    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        self._rules = {"space": _SPACE}
        self._paths: dict[int, str] = {}
        self._ref_rules: dict[str, str] = {}
        self._at_root = False

    def convert(self, schema: Any) -> str:
        if not isinstance(schema, dict | bool):
            raise SchemaError("a JSON schema must be an object (or true)")
        document = json.loads(json.dumps(schema))  # a private copy: resolve_refs rewrites $ref in place
        try:
            document = self.resolve_refs(document, "")
        except (AssertionError, ValueError, KeyError, TypeError) as exc:
            raise SchemaError(f"a $ref cannot be resolved: {exc}", keyword="$ref") from None
        self._index(document, "")
        self._at_root = True
        self.visit(document, "")
        return self.format_grammar()

    # --- the converter's helpers, made exact ---------------------------------

    def _format_literal(self, literal: str) -> str:
        # The converter's own leaves backslashes unescaped: "a\\b" would come out as an invalid escape.
        return gbnf_string(literal)

    def _generate_constant_rule(self, value: Any) -> str:
        return self._format_literal(json.dumps(value, ensure_ascii=False))

    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        key = self._add_rule(name, rule.content)
        for dep in rule.deps:
            if dep not in self._rules:
                self._add_primitive(dep, RULES[dep])
        return key

    def _primitive(self, name: str) -> str:
        return self._add_primitive(name, RULES[name])

    def _resolve_ref(self, ref: str) -> str:
        """The rule of a $ref target: one rule per target, named after it, safe for recursion."""
        if ref in self._ref_rules:
            return self._ref_rules[ref]
        if ref not in self._refs:
            raise SchemaError(f"the $ref {ref!r} cannot be resolved", keyword="$ref")
        base = ref.split("/")[-1] or "ref"
        name = self._add_rule(f"ref-{base}" if base in RESERVED_NAMES else base, "(reserved)")
        self._ref_rules[ref] = name
        self._rules[name] = self.visit(self._refs[ref], name)
        return name

    # --- paths, for error messages --------------------------------------------

    def _index(self, node: Any, path: str) -> None:
        if isinstance(node, dict):
            self._paths[id(node)] = path or "/"
            for key, value in node.items():
                self._index(value, _pointer(path, key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                self._index(value, _pointer(path, i))

    def _derived(self, schema: dict[str, Any], parent: dict[str, Any]) -> dict[str, Any]:
        self._paths[id(schema)] = self._paths.get(id(parent), "")
        return schema

    def _error(self, schema: Any, message: str, keyword: str | None) -> SchemaError:
        path = self._paths.get(id(schema), "") if isinstance(schema, dict) else ""
        where = f" (at {path})" if path and path != "/" else ""
        return SchemaError(f"{message}{where}", keyword=keyword, path=path)

    # --- visiting ---------------------------------------------------------------

    def visit(self, schema: Any, name: str) -> str:
        # Names come from property names: an empty one ("" is a valid key) must not take the root's.
        at_root, self._at_root = self._at_root, False
        rule_name = name + "-" if name in RESERVED_NAMES else name or ("root" if at_root else "property")
        if schema is True or schema == {}:
            return self._add_rule(rule_name, self._primitive("value"))
        if schema is False:
            raise self._error(schema, "the schema `false` allows no value", None)
        if not isinstance(schema, dict):
            raise self._error(schema, "a JSON schema must be an object or a boolean", None)
        self._check_keywords(schema)
        constraints = [key for key in schema if key not in ANNOTATIONS]
        for combiner in ("$ref", "allOf", "anyOf", "oneOf"):
            if combiner in schema:
                others = [key for key in constraints if key != combiner]
                if others:
                    raise self._error(schema, f"'{others[0]}' next to '{combiner}' cannot be enforced", others[0])
                return self._combined(schema, combiner, name, rule_name)
        types = self._types(schema)
        if "enum" in schema or "const" in schema:
            return self._enum(schema, types, constraints, rule_name)
        if types is None:
            return self._add_rule(rule_name, self._primitive("value"))
        if len(types) > 1:
            alternatives = [
                self.visit(self._derived({**schema, "type": t}, schema), f"{name}-{t}" if name else t) for t in types
            ]
            return self._add_rule(rule_name, " | ".join(alternatives))
        kind = types[0]
        if kind in ("boolean", "null"):
            return self._add_rule(rule_name, self._primitive(kind))
        if kind in ("integer", "number"):
            return self._number(schema, kind, rule_name)
        if kind == "string":
            return self._string(schema, rule_name)
        if kind == "array":
            return self._array(schema, name, rule_name)
        return self._object(schema, name, rule_name)

    def _check_keywords(self, schema: dict[str, Any]) -> None:
        for key in schema:
            if key in ANNOTATIONS or key in ENFORCED:
                continue
            if key in REFUSED:
                raise self._error(schema, f"the JSON schema keyword '{key}' cannot be enforced", key)
            raise self._error(schema, f"'{key}' is not a JSON schema keyword ember knows", key)

    def _types(self, schema: dict[str, Any]) -> list[str] | None:
        """The JSON types a schema's values can take; None for any. Keywords imply a type when `type` is absent."""
        declared = schema.get("type")
        if declared is None:
            found = [kind for kind, keywords in _BY_TYPE.items() if keywords & schema.keys()]
        else:
            found = [declared] if isinstance(declared, str) else declared
            if not isinstance(found, list) or not found:
                raise self._error(schema, "'type' must be a type name or a list of them", "type")
            for kind in found:
                if kind not in _BY_TYPE:
                    raise self._error(schema, f"'{kind}' is not a JSON type", "type")
        kinds = list(dict.fromkeys(found))
        if "integer" in kinds and "number" in kinds:
            kinds.remove("integer")
        return kinds or None

    def _combined(self, schema: dict[str, Any], combiner: str, name: str, rule_name: str) -> str:
        if combiner == "$ref":
            ref = schema["$ref"]
            if not isinstance(ref, str):
                raise self._error(schema, "'$ref' must be a string", "$ref")
            return self._add_rule(rule_name, self._resolve_ref(ref))
        options = schema[combiner]
        if not isinstance(options, list) or not options:
            raise self._error(schema, f"'{combiner}' must be a non-empty list of schemas", combiner)
        if combiner == "allOf":
            if len(options) > 1:
                raise self._error(schema, "an 'allOf' of more than one schema cannot be enforced", "allOf")
            return self._add_rule(rule_name, self.visit(options[0], f"{name}-all" if name else "all"))
        if combiner == "oneOf":
            self._check_disjoint(schema, options)
        if "anyOf" in schema and "oneOf" in schema:
            raise self._error(schema, "'anyOf' next to 'oneOf' cannot be enforced", "oneOf")
        alternatives = [
            self.visit(option, f"{name}{'-' if name else 'alternative-'}{i}") for i, option in enumerate(options)
        ]
        return self._add_rule(rule_name, " | ".join(alternatives))

    # --- oneOf: only where no value can match two branches ---------------------

    def _target(self, schema: Any) -> Any:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and seen < 32:
            schema = self._refs.get(schema["$ref"], {})
            seen += 1
        return schema

    def _constants(self, schema: dict[str, Any]) -> list[Any] | None:
        if "const" in schema:
            return [schema["const"]]
        enum = schema.get("enum")
        return enum if isinstance(enum, list) else None

    def _disjoint(self, a: Any, b: Any) -> bool:
        a, b = self._target(a), self._target(b)
        if not isinstance(a, dict) or not isinstance(b, dict):
            return False
        ta, tb = self._types(a), self._types(b)
        if ta is not None and tb is not None:
            wide_a = set(ta) | ({"integer"} if "number" in ta else set())
            wide_b = set(tb) | ({"integer"} if "number" in tb else set())
            if not wide_a & wide_b:
                return True
        ca, cb = self._constants(a), self._constants(b)
        if ca is not None and cb is not None:
            return not any(x == y and type(x) is type(y) for x in ca for y in cb)
        # Objects told apart by a required property with different constant values (tagged unions).
        props_a, props_b = a.get("properties"), b.get("properties")
        if isinstance(props_a, dict) and isinstance(props_b, dict):
            required = set(a.get("required", [])) & set(b.get("required", []))
            for key in required & props_a.keys() & props_b.keys():
                if self._disjoint(props_a[key], props_b[key]):
                    return True
        return False

    def _check_disjoint(self, schema: dict[str, Any], options: list[Any]) -> None:
        for i, a in enumerate(options):
            for b in options[i + 1 :]:
                if not self._disjoint(a, b):
                    raise self._error(
                        schema,
                        "a 'oneOf' whose branches can match the same value cannot be "
                        "enforced (use anyOf, or tell the branches apart by type or a constant)",
                        "oneOf",
                    )

    # --- leaves -----------------------------------------------------------------

    def _enum(self, schema: dict[str, Any], types: list[str] | None, constraints: list[str], rule_name: str) -> str:
        others = [key for key in constraints if key not in ("type", "enum", "const")]
        if others:
            raise self._error(schema, f"'{others[0]}' next to 'enum' or 'const' cannot be enforced", others[0])
        if "const" in schema:
            values = [schema["const"]]
            if "enum" in schema:
                values = [v for v in schema["enum"] if v == schema["const"]]
        else:
            values = schema["enum"]
            if not isinstance(values, list):
                raise self._error(schema, "'enum' must be a list", "enum")
        if types is not None:
            values = [
                v for v in values if _json_types(v) & set(types) or ("number" in types and "integer" in _json_types(v))
            ]
        if not values:
            keyword = "enum" if "enum" in schema else "const"
            raise self._error(schema, f"no value of '{keyword}' fits the schema", keyword)
        return self._add_rule(rule_name, " | ".join(dict.fromkeys(self._generate_constant_rule(v) for v in values)))

    def _bound(self, schema: dict[str, Any], key: str) -> Decimal | None:
        value = schema.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._error(schema, f"'{key}' must be a number", key)
        bound = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        if not bound.is_finite():
            raise self._error(schema, f"'{key}' must be a finite number", key)
        if abs(bound) >= Decimal(10) ** MAX_BOUND_DIGITS:
            # A bound past every number the grammar writes on its side is no bound (1e308 as "no maximum").
            if (bound > 0) == key.endswith("aximum"):
                return None
            raise self._error(schema, f"'{key}' is too large to enforce", key)
        return bound

    def _bounds(self, schema: dict[str, Any]) -> tuple[Decimal | None, ...]:
        minimum, maximum = self._bound(schema, "minimum"), self._bound(schema, "maximum")
        ex_min = self._exclusive(schema, "exclusiveMinimum", minimum)
        ex_max = self._exclusive(schema, "exclusiveMaximum", maximum)
        if schema.get("exclusiveMinimum") is True:
            minimum = None
        if schema.get("exclusiveMaximum") is True:
            maximum = None
        return minimum, maximum, ex_min, ex_max

    def _exclusive(self, schema: dict[str, Any], key: str, inclusive: Decimal | None) -> Decimal | None:
        flag = schema.get(key)
        if isinstance(flag, bool):  # draft 4 wrote exclusiveness as a flag on minimum and maximum
            return inclusive if flag else None
        return self._bound(schema, key)

    def _number(self, schema: dict[str, Any], kind: str, rule_name: str) -> str:
        with localcontext() as context:
            context.prec = 2 * MAX_BOUND_DIGITS + FRACTION_DIGITS  # exact for every bound accepted
            return self._bounded_number(schema, kind, rule_name)

    def _bounded_number(self, schema: dict[str, Any], kind: str, rule_name: str) -> str:
        minimum, maximum, ex_min, ex_max = self._bounds(schema)
        if minimum is None and maximum is None and ex_min is None and ex_max is None:
            return self._add_rule(rule_name, self._primitive(kind))
        if kind == "integer":
            lows = [int(b.to_integral_value(rounding=ROUND_CEILING)) for b in (minimum,) if b is not None]
            lows += [int(b.to_integral_value(rounding=ROUND_FLOOR)) + 1 for b in (ex_min,) if b is not None]
            highs = [int(b.to_integral_value(rounding=ROUND_FLOOR)) for b in (maximum,) if b is not None]
            highs += [int(b.to_integral_value(rounding=ROUND_CEILING)) - 1 for b in (ex_max,) if b is not None]
            low, high = max(lows, default=None), min(highs, default=None)
            if low is not None and high is not None and low > high:
                raise self._error(schema, "no integer satisfies the bounds", "minimum")
            return self._add_rule(rule_name, f"({integer_range(low, high)}) space")
        places = places_for(ex_min, ex_max)
        low_d, high_d = inclusive_bounds(minimum, maximum, ex_min, ex_max, places)
        # An answer is read as a float: a bound only a hair inside an exclusive one could read as equal.
        if ex_min is not None and low_d is not None and not float(low_d) > float(ex_min):
            raise self._error(schema, "'exclusiveMinimum' is too large to enforce exactly", "exclusiveMinimum")
        if ex_max is not None and high_d is not None and not float(high_d) < float(ex_max):
            raise self._error(schema, "'exclusiveMaximum' is too large to enforce exactly", "exclusiveMaximum")
        if low_d is not None and high_d is not None and low_d > high_d:
            raise self._error(schema, "no number satisfies the bounds", "minimum")
        return self._add_rule(rule_name, f"({number_range(low_d, high_d, places)}) space")

    def _count(self, schema: dict[str, Any], key: str) -> int | None:
        value = schema.get(key)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._error(schema, f"'{key}' must be a non-negative integer", key)
        return value

    def _counts(self, schema: dict[str, Any], low_key: str, high_key: str) -> tuple[int, int | None]:
        low, high = self._count(schema, low_key) or 0, self._count(schema, high_key)
        if high is not None and high < low:
            raise self._error(schema, f"'{high_key}' is less than '{low_key}'", high_key)
        if low > MAX_REPEAT:
            raise self._error(schema, f"'{low_key}' over {MAX_REPEAT} cannot be enforced", low_key)
        if high is not None:
            high = min(high, max(low, MAX_REPEAT))  # fewer is still valid
        return low, high

    def _string(self, schema: dict[str, Any], rule_name: str) -> str:
        lengths = [key for key in ("minLength", "maxLength") if key in schema]
        if "pattern" in schema:
            others = [*lengths, *(["format"] if "format" in schema else [])]
            if others:
                raise self._error(schema, f"'{others[0]}' next to 'pattern' cannot be enforced", others[0])
            pattern = schema["pattern"]
            if not isinstance(pattern, str):
                raise self._error(schema, "'pattern' must be a string", "pattern")
            try:
                body = pattern_to_gbnf(pattern)
            except PatternError as exc:
                raise self._error(schema, str(exc), "pattern") from None
            return self._add_rule(rule_name, f'"\\"" {body} "\\"" space')
        if "format" in schema:
            if lengths:
                raise self._error(schema, f"'{lengths[0]}' next to 'format' cannot be enforced", lengths[0])
            fmt = schema["format"]
            if fmt not in FORMATS:
                raise self._error(
                    schema,
                    f"the string format {fmt!r} cannot be enforced (ember enforces {', '.join(FORMATS)})",
                    "format",
                )
            return self._add_rule(rule_name, self._primitive(f"{fmt}-string"))
        if lengths:
            low, high = self._counts(schema, "minLength", "maxLength")
            char = self._primitive("char")
            repeat = "" if high == 0 else f"{char}{_times(low, high)}"
            return self._add_rule(rule_name, f'"\\"" {repeat} "\\"" space')
        return self._add_rule(rule_name, self._primitive("string"))

    def _array(self, schema: dict[str, Any], name: str, rule_name: str) -> str:
        low, high = self._counts(schema, "minItems", "maxItems")
        items = schema.get("items")
        prefix = schema.get("prefixItems")
        rest: Any = items
        if isinstance(items, list):  # draft 4 tuples
            prefix, rest = items, schema.get("additionalItems")
        if prefix is not None and not isinstance(prefix, list):
            raise self._error(schema, "'prefixItems' must be a list of schemas", "prefixItems")
        prefix = prefix or []
        stem = f"{name}{'-' if name else ''}"
        written = len(prefix) if high is None else min(len(prefix), high)
        parts = [self.visit(item, f"{stem}tuple-{i}") for i, item in enumerate(prefix[:written])]
        if written < len(prefix):
            rest_low, rest_high = 0, 0
        else:
            rest_low = max(0, low - written)
            if rest is False:
                rest_high = 0
            elif high is not None:
                rest_high = high - written
            elif rest is None and prefix:
                rest_high = rest_low  # more items are allowed, but none is needed
            else:
                rest_high = None
        if rest_high is not None and rest_low > rest_high:
            raise self._error(schema, "'minItems' asks for more items than the schema allows", "minItems")
        body = ' "," space '.join(parts)
        if rest_high != 0:
            item = self.visit(rest if isinstance(rest, dict) else {}, f"{stem}item")
            more = f'("," space {item})'
            if parts:
                body += f" {more}{_times(rest_low, rest_high)}"
            elif rest_low > 0:
                tail_high = None if rest_high is None else rest_high - 1
                body = item if tail_high == 0 else f"{item} {more}{_times(rest_low - 1, tail_high)}"
            elif rest_high == 1:
                body = f"{item}?"
            else:
                body = f"({item} {more}{_times(0, None if rest_high is None else rest_high - 1)})?"
        return self._add_rule(rule_name, f'"[" space {body} "]" space' if body else '"[" space "]" space')

    def _object(self, schema: dict[str, Any], name: str, rule_name: str) -> str:
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        extra = schema.get("additionalProperties")
        if not isinstance(properties, dict):
            raise self._error(schema, "'properties' must be an object", "properties")
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise self._error(schema, "'required' must be a list of property names", "required")
        for key in required:
            if key not in properties or properties[key] is False:
                raise self._error(
                    schema,
                    f"the required property {key!r} is not among the properties "
                    "(ember writes only declared properties)",
                    "required",
                )
        declared = [(key, value) for key, value in properties.items() if value is not False]
        if declared:
            # Only the declared properties are written, whatever additionalProperties allows.
            return self._add_rule(rule_name, self._build_object_rule(declared, set(required), name, None))
        if extra is False:
            return self._add_rule(rule_name, '"{" space "}" space')
        if extra is None or extra is True or extra == {}:
            return self._add_rule(rule_name, self._primitive("object"))
        if not isinstance(extra, dict):
            raise self._error(schema, "'additionalProperties' must be a schema", "additionalProperties")
        return self._add_rule(rule_name, self._build_object_rule([], set(), name, extra))
