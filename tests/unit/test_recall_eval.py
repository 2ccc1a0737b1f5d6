"""The recall evaluation set (`bench.recall_eval`): the same on every run, and labelled
right: every question's evidence holds its answer, far outside the window."""

from __future__ import annotations

import re

from bench.recall_eval import WINDOW, build


def test_the_same_seed_builds_the_same_set_and_another_seed_another():
    assert build(4) == build(4)
    assert build(4, seed=18).turns != build(4).turns


def test_every_question_is_labelled_with_a_turn_of_its_user_that_holds_the_answer():
    evalset = build(6)
    turns = {t.message_id: t for t in evalset.turns}
    assert len(turns) == len(evalset.turns)  # ids are unique
    assert len(evalset.questions) == 6 * 6
    for question in evalset.questions:
        assert question.evidence
        for message_id in question.evidence:
            turn = turns[message_id]
            assert turn.user_id == question.user_id
            assert question.answer in turn.content
        # Asked in other words than stated: the answer itself is never in the question.
        assert question.answer not in question.query


def test_no_answer_lies_in_the_window_of_the_session_it_is_asked_in():
    evalset = build(6)
    for question in evalset.questions:
        window = evalset.window(question.session_id)
        assert len(window) == WINDOW
        assert not set(question.evidence) & {t.message_id for t in window}
        last = window[0].position
        for message_id in question.evidence:
            turn = next(t for t in evalset.turns if t.message_id == message_id)
            if turn.session_id == question.session_id:
                assert turn.position < last - 10


def test_distractors_state_the_same_kind_of_fact_about_something_else():
    evalset = build(20)
    stated = {m for t in evalset.turns for m in re.findall(r"#[A-Z]\d-\d{4}", t.content)}
    asked = {q.answer for q in evalset.questions if q.kind == "order number"}
    assert asked < stated  # every asked order number is stated, and others beside them
