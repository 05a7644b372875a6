"""The shard's pay_many (ledger/dispatch.py): many payments in one call, each going the way a
lone "pay" goes and failing alone; one answer, in item order, once every item has its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kernel.limits import BATCH_ITEMS_MAX
from ledger.dispatch import PAY_MANY_ITEMS_MAX, DispatchMixin

Reply = Callable[[bool, Any], None]


class Intake:
    """Stands in for the worker's own dispatch of "pay": holds each item's reply, so a test
    answers them in any order (as group commits do), or refuses an item at once."""

    def __init__(self, refuse: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.held: dict[str, Reply] = {}
        self.refuse = refuse

    def dispatch(self, op: str, args: Any, reply: Reply) -> None:
        assert op == "pay"
        if args["payment_id"] in self.refuse:
            reply(False, {"code": "BAD_REQUEST", "message": "refused at intake"})
        else:
            self.held[args["payment_id"]] = reply


def pay_many(intake: Intake, items: Any) -> list[tuple[bool, Any]]:
    answers: list[tuple[bool, Any]] = []
    DispatchMixin._dispatch_pay_many(intake, items, lambda ok, result: answers.append((ok, result)))  # type: ignore[arg-type]
    return answers


def test_one_answer_in_item_order_after_the_last_item_answers() -> None:
    intake = Intake()
    answers = pay_many(intake, [{"payment_id": f"p{i}"} for i in range(3)])
    assert answers == [] and set(intake.held) == {"p0", "p1", "p2"}
    intake.held["p2"](True, {"code": "OK", "n": 2})  # committed in an earlier batch
    intake.held["p0"](True, {"code": "REPLAY", "n": 0})
    assert answers == []
    intake.held["p1"](True, {"code": "AGREEMENT_NOT_FOUND", "n": 1})
    assert answers == [
        (
            True,
            [
                [True, {"code": "REPLAY", "n": 0}],
                [True, {"code": "AGREEMENT_NOT_FOUND", "n": 1}],
                [True, {"code": "OK", "n": 2}],
            ],
        )
    ]
    intake.held["p1"](True, {"code": "OK"})  # a second answer to an item changes nothing
    assert len(answers) == 1


def test_an_item_refused_at_intake_fails_alone() -> None:
    intake = Intake(refuse={"p1"})
    answers = pay_many(intake, [{"payment_id": "p0"}, {"payment_id": "p1"}])
    assert answers == [] and set(intake.held) == {"p0"}
    intake.held["p0"](True, {"code": "OK"})
    assert answers == [
        (True, [[True, {"code": "OK"}], [False, {"code": "BAD_REQUEST", "message": "refused at intake"}]])
    ]


def test_every_item_refused_at_once_still_answers_once() -> None:
    answers = pay_many(Intake(refuse={"a", "b"}), [{"payment_id": "a"}, {"payment_id": "b"}])
    assert len(answers) == 1 and [ok for ok, _ in answers[0][1]] == [False, False]


def test_a_malformed_call_is_refused_whole() -> None:
    assert PAY_MANY_ITEMS_MAX == BATCH_ITEMS_MAX
    for bad in (None, {}, "pay", [], [{"payment_id": "x"}] * (PAY_MANY_ITEMS_MAX + 1)):
        intake = Intake()
        answers = pay_many(intake, bad)
        assert answers and answers[0][0] is False and answers[0][1]["code"] == "BAD_REQUEST", bad
        assert intake.held == {}
