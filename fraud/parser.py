"""Tokenizer and recursive-descent parser for rule files, with type checking.

The parser produces a typed syntax tree (fraud.syntax); nothing here is ever passed to
`eval`. Every error is a RuleError naming file, line and column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fraud.errors import RuleError
from fraud.syntax import (
    ATTRIBUTES,
    KEY_ATTRIBUTES,
    Aggregate,
    Attribute,
    BoolOp,
    Compare,
    InList,
    InSet,
    Literal,
    Node,
    Not,
)

__all__ = ["RULE_ACTIONS", "RULE_TEXT_BYTES_MAX", "ParsedFile", "ParsedRule", "parse_text"]

# Limits: a rule file is configuration, not data; anything larger is a mistake.
RULE_TEXT_BYTES_MAX = 1_000_000
# A rule's action; "score" only adds its score (signals that decide through thresholds).
RULE_ACTIONS = ("allow", "review", "block", "score")
RULES_PER_FILE_MAX = 2_000
EXPRESSION_DEPTH_MAX = 64
IDENTIFIER_LENGTH_MAX = 64
STRING_LENGTH_MAX = 1_024
DESCRIPTION_LENGTH_MAX = 1_024
SET_LITERAL_SIZE_MAX = 1_000
LIST_LITERAL_SIZE_MAX = 10_000
WINDOW_S_MAX = 30 * 86_400
INT_ABS_MAX = 10**18

_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}

_TOKEN_RE = re.compile(
    r"""
    (?P<newline>\n)
  | (?P<space>[ \t\r]+)
  | (?P<comment>\#[^\n]*)
  | (?P<duration>[0-9][0-9_]*[smhd](?![A-Za-z0-9_]))
  | (?P<int>[0-9][0-9_]*(?![A-Za-z0-9_]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<op>==|!=|<=|>=|<|>|=|\(|\)|\[|\]|\{|\}|,|-)
    """,
    re.VERBOSE,
)
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}
_COMPARE_OPS = frozenset({"==", "!=", "<", "<=", ">", ">="})
_ORDER_OPS = frozenset({"<", "<=", ">", ">="})


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "ident" | "int" | "duration" | "string" | "op" | "eof"
    text: str
    value: int | str | None
    line: int
    column: int


@dataclass(slots=True)
class ParsedRule:
    rule_id: str
    action: str
    score: int
    shadow: bool
    description: str
    condition: Node
    line: int
    column: int


@dataclass(slots=True)
class ParsedFile:
    rules: list[ParsedRule] = field(default_factory=list)
    lists: dict[str, tuple[str, ...]] = field(default_factory=dict)
    review_threshold_score: int | None = None
    block_threshold_score: int | None = None


def _tokenize(text: str, filename: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    line = 1
    line_start = 0
    length = len(text)
    while position < length:
        match = _TOKEN_RE.match(text, position)
        column = position - line_start + 1
        if match is None:
            char = text[position]
            if char == '"':
                raise RuleError(filename, line, column, "unterminated string literal")
            if char.isdigit():
                raise RuleError(
                    filename,
                    line,
                    column,
                    "malformed number or duration (durations are like 30s, 10m, 1h, 7d)",
                )
            raise RuleError(filename, line, column, f"unexpected character {char!r}")
        kind = match.lastgroup
        raw = match.group()
        position = match.end()
        if kind == "newline":
            line += 1
            line_start = position
            continue
        if kind in ("space", "comment"):
            continue
        value: int | str | None = None
        if kind == "int" or kind == "duration":
            digits = raw[:-1] if kind == "duration" else raw
            try:
                number = int(digits)
            except ValueError:
                raise RuleError(filename, line, column, f"malformed number {raw!r}") from None
            if number > INT_ABS_MAX:
                raise RuleError(filename, line, column, f"number {raw} is larger than {INT_ABS_MAX}")
            value = number * _DURATION_UNITS_S[raw[-1]] if kind == "duration" else number
        elif kind == "string":
            value = _unescape(raw[1:-1], filename, line, column)
            if len(value) > STRING_LENGTH_MAX:
                raise RuleError(filename, line, column, f"string longer than {STRING_LENGTH_MAX} characters")
        elif kind == "ident" and len(raw) > IDENTIFIER_LENGTH_MAX:
            raise RuleError(filename, line, column, f"identifier longer than {IDENTIFIER_LENGTH_MAX} characters")
        assert kind is not None
        tokens.append(Token(kind, raw, value, line, column))
    tokens.append(Token("eof", "", None, line, position - line_start + 1))
    return tokens


def _unescape(body: str, filename: str, line: int, column: int) -> str:
    if "\\" not in body:
        return body
    out: list[str] = []
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\":
            escaped = body[index + 1]
            if escaped not in _ESCAPES:
                raise RuleError(filename, line, column + index + 1, f"unknown escape \\{escaped}")
            out.append(_ESCAPES[escaped])
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


class _Parser:
    def __init__(self, tokens: list[Token], filename: str) -> None:
        self.tokens = tokens
        self.filename = filename
        self.index = 0
        self.depth = 0
        # (list name, token) for every `in list NAME`, checked once declarations are known.
        self.list_references: list[tuple[str, Token]] = []

    # -- token helpers -------------------------------------------------------------

    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def error(self, token: Token | Node, message: str) -> RuleError:
        return RuleError(self.filename, token.line, token.column, message)

    def advance(self) -> Token:
        token = self.tokens[self.index]
        if token.kind != "eof":
            self.index += 1
        return token

    def at(self, kind: str, text: str | None = None) -> bool:
        token = self.current
        return token.kind == kind and (text is None or token.text == text)

    def at_keyword(self, word: str) -> bool:
        return self.at("ident", word)

    def expect(self, kind: str, text: str | None = None, what: str | None = None) -> Token:
        if not self.at(kind, text):
            wanted = what or (repr(text) if text is not None else kind)
            raise self.error(self.current, f"expected {wanted}, found {self.describe(self.current)}")
        return self.advance()

    @staticmethod
    def describe(token: Token) -> str:
        return "end of file" if token.kind == "eof" else repr(token.text)

    # -- file level ----------------------------------------------------------------

    def parse_file(self) -> ParsedFile:
        parsed = ParsedFile()
        seen_rule_ids: set[str] = set()
        while not self.at("eof"):
            token = self.current
            if self.at_keyword("rule"):
                rule = self.parse_rule()
                if rule.rule_id in seen_rule_ids:
                    raise self.error(token, f"duplicate rule id {rule.rule_id!r}")
                seen_rule_ids.add(rule.rule_id)
                if len(parsed.rules) >= RULES_PER_FILE_MAX:
                    raise self.error(token, f"more than {RULES_PER_FILE_MAX} rules in one file")
                parsed.rules.append(rule)
            elif self.at_keyword("list"):
                self.parse_list_declaration(parsed)
            elif self.at_keyword("threshold"):
                self.parse_threshold(parsed)
            else:
                raise self.error(token, f"expected 'rule', 'list' or 'threshold', found {self.describe(token)}")
        for name, token in self.list_references:
            if name not in parsed.lists:
                raise self.error(token, f"list {name!r} is not declared (add: list {name} = [])")
        return parsed

    def parse_list_declaration(self, parsed: ParsedFile) -> None:
        self.advance()
        name_token = self.expect("ident", what="a list name")
        if name_token.text in parsed.lists:
            raise self.error(name_token, f"list {name_token.text!r} declared twice")
        self.expect("op", "=")
        self.expect("op", "[")
        values: list[str] = []
        while not self.at("op", "]"):
            value_token = self.expect("string", what="a string")
            assert isinstance(value_token.value, str)
            values.append(value_token.value)
            if len(values) > LIST_LITERAL_SIZE_MAX:
                raise self.error(value_token, f"more than {LIST_LITERAL_SIZE_MAX} values in a list literal")
            if not self.at("op", "]"):
                self.expect("op", ",", what="',' or ']'")
        self.advance()
        parsed.lists[name_token.text] = tuple(values)

    def parse_threshold(self, parsed: ParsedFile) -> None:
        self.advance()
        which = self.expect("ident", what="'review' or 'block'")
        if which.text not in ("review", "block"):
            raise self.error(which, f"expected 'review' or 'block', found {which.text!r}")
        value_token = self.expect("int", what="a positive score")
        assert isinstance(value_token.value, int)
        if value_token.value < 1:
            raise self.error(value_token, "threshold must be at least 1")
        attribute = f"{which.text}_threshold_score"
        if getattr(parsed, attribute) is not None:
            raise self.error(which, f"threshold {which.text} declared twice")
        setattr(parsed, attribute, value_token.value)
        if (
            parsed.review_threshold_score is not None
            and parsed.block_threshold_score is not None
            and parsed.block_threshold_score <= parsed.review_threshold_score
        ):
            raise self.error(value_token, "threshold block must be greater than threshold review")

    def parse_rule(self) -> ParsedRule:
        rule_token = self.advance()
        id_token = self.expect("ident", what="a rule id")
        self.expect("op", "{")
        action: str | None = None
        score = 0
        shadow = False
        description: str | None = None
        condition: Node | None = None
        seen: set[str] = set()
        while not self.at("op", "}"):
            clause = self.expect("ident", what="'action', 'score', 'shadow', 'description', 'when' or '}'")
            if clause.text in seen:
                raise self.error(clause, f"{clause.text!r} given twice in rule {id_token.text!r}")
            seen.add(clause.text)
            if clause.text == "action":
                action_token = self.expect("ident", what="'allow', 'review', 'block' or 'score'")
                # 'score' rules only add their score: signals that decide via thresholds.
                if action_token.text not in RULE_ACTIONS:
                    raise self.error(
                        action_token, f"unknown action {action_token.text!r}; expected allow, review, block or score"
                    )
                action = action_token.text
            elif clause.text == "score":
                score = self.parse_signed_int()
            elif clause.text == "shadow":
                shadow = True
            elif clause.text == "description":
                text_token = self.expect("string", what="a quoted description")
                assert isinstance(text_token.value, str)
                if len(text_token.value) > DESCRIPTION_LENGTH_MAX:
                    raise self.error(text_token, "description too long")
                description = text_token.value
            elif clause.text == "when":
                condition = self.parse_expression()
                if condition.type != "bool":  # type: ignore[attr-defined]
                    raise self.error(condition, f"condition must be true/false, not {condition.type}")  # type: ignore[attr-defined]
            else:
                raise self.error(
                    clause, f"unknown clause {clause.text!r}; expected action, score, shadow, description or when"
                )
        closing = self.advance()
        if action is None:
            raise self.error(closing, f"rule {id_token.text!r} has no action")
        if condition is None:
            raise self.error(closing, f"rule {id_token.text!r} has no 'when' condition")
        if description is None:
            raise self.error(closing, f"rule {id_token.text!r} has no description")
        return ParsedRule(
            id_token.text, action, score, shadow, description, condition, rule_token.line, rule_token.column
        )

    def parse_signed_int(self) -> int:
        negative = False
        if self.at("op", "-"):
            self.advance()
            negative = True
        token = self.expect("int", what="an integer")
        assert isinstance(token.value, int)
        return -token.value if negative else token.value

    # -- expressions ---------------------------------------------------------------

    def enter(self, token: Token) -> None:
        self.depth += 1
        if self.depth > EXPRESSION_DEPTH_MAX:
            raise self.error(token, f"expression nested deeper than {EXPRESSION_DEPTH_MAX}")

    def parse_expression(self) -> Node:
        self.enter(self.current)
        try:
            return self.parse_or()
        finally:
            self.depth -= 1

    def parse_or(self) -> Node:
        first = self.current
        operands = [self.parse_and()]
        while self.at_keyword("or"):
            self.advance()
            operands.append(self.parse_and())
        if len(operands) == 1:
            return operands[0]
        self.check_bool_operands(operands, "or")
        return BoolOp(first.line, first.column, "or", tuple(operands))

    def parse_and(self) -> Node:
        first = self.current
        operands = [self.parse_not()]
        while self.at_keyword("and"):
            self.advance()
            operands.append(self.parse_not())
        if len(operands) == 1:
            return operands[0]
        self.check_bool_operands(operands, "and")
        return BoolOp(first.line, first.column, "and", tuple(operands))

    def check_bool_operands(self, operands: list[Node], op: str) -> None:
        for operand in operands:
            if operand.type != "bool":  # type: ignore[attr-defined]
                raise self.error(operand, f"'{op}' needs true/false operands, not {operand.type}")  # type: ignore[attr-defined]

    def parse_not(self) -> Node:
        if self.at_keyword("not"):
            token = self.advance()
            self.enter(token)
            try:
                operand = self.parse_not()
            finally:
                self.depth -= 1
            if operand.type != "bool":  # type: ignore[attr-defined]
                raise self.error(operand, f"'not' needs a true/false operand, not {operand.type}")  # type: ignore[attr-defined]
            return Not(token.line, token.column, operand)
        return self.parse_predicate()

    def parse_predicate(self) -> Node:
        left = self.parse_operand()
        token = self.current
        if token.kind == "op" and token.text in _COMPARE_OPS:
            self.advance()
            right = self.parse_operand()
            self.check_comparison(token, token.text, left, right)
            return Compare(left.line, left.column, token.text, left, right)
        negated = False
        if self.at_keyword("not") and self.tokens[self.index + 1].text == "in":
            self.advance()
            negated = True
        if self.at_keyword("in"):
            in_token = self.advance()
            if self.at_keyword("list"):
                self.advance()
                name_token = self.expect("ident", what="a list name")
                if left.type not in ("str", "str?"):  # type: ignore[attr-defined]
                    raise self.error(in_token, f"'in list' needs a string attribute, not {left.type}")  # type: ignore[attr-defined]
                self.list_references.append((name_token.text, name_token))
                return InList(left.line, left.column, left, name_token.text, negated)
            if self.at("op", "["):
                return self.parse_set_literal(left, in_token, negated)
            raise self.error(
                self.current, f"expected 'list NAME' or '[' after 'in', found {self.describe(self.current)}"
            )
        if negated:
            raise self.error(token, "expected 'in' after 'not'")
        return left

    def parse_set_literal(self, left: Node, in_token: Token, negated: bool) -> Node:
        self.advance()
        left_type = left.type  # type: ignore[attr-defined]
        element_type = "int" if left_type == "int" else "str" if left_type in ("str", "str?") else None
        if element_type is None:
            raise self.error(in_token, f"'in [...]' needs an int or string operand, not {left_type}")
        values: set[int | str] = set()
        while not self.at("op", "]"):
            value_token = self.current
            if element_type == "int":
                values.add(self.parse_signed_int())
            else:
                self.expect("string", what="a string")
                assert isinstance(value_token.value, str)
                values.add(value_token.value)
            if len(values) > SET_LITERAL_SIZE_MAX:
                raise self.error(value_token, f"more than {SET_LITERAL_SIZE_MAX} values in a set literal")
            if not self.at("op", "]"):
                self.expect("op", ",", what="',' or ']'")
        self.advance()
        return InSet(left.line, left.column, left, frozenset(values), negated)

    def check_comparison(self, token: Token, op: str, left: Node, right: Node) -> None:
        left_type: str = left.type  # type: ignore[attr-defined]
        right_type: str = right.type  # type: ignore[attr-defined]
        if op in _ORDER_OPS:
            if left_type != "int" or right_type != "int":
                raise self.error(token, f"'{op}' compares integers, not {left_type} and {right_type}")
            return
        kinds = {left_type, right_type}
        if left_type == right_type and left_type != "null":
            return
        if kinds == {"str", "str?"} or kinds == {"str?", "null"}:
            return
        if "null" in kinds:
            other = right if left_type == "null" else left
            raise self.error(token, f"{self.show(other)} is never null; only device_id and ip may be")
        raise self.error(token, f"cannot compare {left_type} with {right_type}")

    @staticmethod
    def show(node: Node) -> str:
        if isinstance(node, Attribute):
            return node.name
        return "this value"

    def parse_operand(self) -> Node:
        token = self.current
        if token.kind == "int":
            self.advance()
            assert isinstance(token.value, int)
            return Literal(token.line, token.column, token.value, "int")
        if token.kind == "op" and token.text == "-":
            value = self.parse_signed_int()
            return Literal(token.line, token.column, value, "int")
        if token.kind == "string":
            self.advance()
            return Literal(token.line, token.column, token.value, "str")
        if token.kind == "duration":
            raise self.error(token, "a duration is only allowed as the window of count/sum/distinct")
        if token.kind == "op" and token.text == "(":
            self.advance()
            inner = self.parse_expression()
            self.expect("op", ")", what="')'")
            return inner
        if token.kind == "ident":
            word = token.text
            if word == "true" or word == "false":
                self.advance()
                return Literal(token.line, token.column, word == "true", "bool")
            if word == "null":
                self.advance()
                return Literal(token.line, token.column, None, "null")
            if word in ("count", "sum", "distinct") and self.tokens[self.index + 1].text == "(":
                return self.parse_aggregate()
            if word in ATTRIBUTES:
                self.advance()
                return Attribute(token.line, token.column, word)
            known = ", ".join(sorted(ATTRIBUTES))
            raise self.error(token, f"unknown attribute {word!r}; known: {known}")
        raise self.error(token, f"expected a value, found {self.describe(token)}")

    def parse_aggregate(self) -> Node:
        kind_token = self.advance()
        kind = kind_token.text
        self.expect("op", "(")
        field_name: str | None = None
        if kind == "sum":
            field_token = self.expect("ident", what="'amount'")
            if field_token.text != "amount":
                raise self.error(field_token, "sum() only sums amount")
            field_name = "amount"
            self.expect("op", ",")
        elif kind == "distinct":
            field_token = self.expect("ident", what="an attribute to count distinct values of")
            if field_token.text not in KEY_ATTRIBUTES:
                raise self.error(field_token, f"distinct() counts one of {', '.join(KEY_ATTRIBUTES)}")
            field_name = field_token.text
            self.expect("op", ",")
        by_token = self.expect("ident", "by", what="'by'")
        key = self.parse_key(by_token)
        if field_name is not None and field_name in key:
            raise self.error(by_token, f"distinct({field_name}) keyed by {field_name} is always 1")
        self.expect("op", ",", what="',' then a window like 10m")
        window_token = self.expect("duration", what="a window like 30s, 10m, 1h or 1d")
        assert isinstance(window_token.value, int)
        if not 1 <= window_token.value <= WINDOW_S_MAX:
            raise self.error(window_token, f"window must be between 1s and {WINDOW_S_MAX // 86_400}d")
        self.expect("op", ")", what="')'")
        return Aggregate(kind_token.line, kind_token.column, kind, field_name, key, window_token.value)

    def parse_key(self, by_token: Token) -> tuple[str, ...]:
        names: list[Token] = []
        if self.at("op", "("):
            self.advance()
            names.append(self.expect("ident", what="an attribute"))
            self.expect("op", ",", what="',' (a key is one attribute or a pair)")
            names.append(self.expect("ident", what="an attribute"))
            self.expect("op", ")", what="')' (a key is one attribute or a pair)")
        else:
            names.append(self.expect("ident", what="an attribute"))
        for name in names:
            if name.text not in KEY_ATTRIBUTES:
                raise self.error(name, f"cannot key a window by {name.text!r}; use one of {', '.join(KEY_ATTRIBUTES)}")
        if len(names) == 2 and names[0].text == names[1].text:
            raise self.error(names[1], "a pair key needs two different attributes")
        return tuple(sorted(name.text for name in names))


def parse_text(text: str, filename: str) -> ParsedFile:
    """Parse and type-check rule text; raises RuleError."""
    if len(text.encode("utf-8")) > RULE_TEXT_BYTES_MAX:
        raise RuleError(filename, 1, 1, f"rule text larger than {RULE_TEXT_BYTES_MAX} bytes")
    tokens = _tokenize(text, filename)
    return _Parser(tokens, filename).parse_file()
