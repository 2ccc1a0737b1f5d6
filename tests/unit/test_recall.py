"""The recall index's pure rules: the model record, the mismatch error, the stored vector."""

from __future__ import annotations

import struct

import pytest

from chatlog.projections.recall import EmbeddingModel, model_mismatch, vector_bytes
from chatlog.schemas.errors import ConfigError, EmbeddingModelMismatch, InvalidInput

MODEL = EmbeddingModel("wordllama-l2-supercat", 4)


def test_a_vector_is_stored_as_little_endian_float32():
    assert vector_bytes([1.0, -0.5, 0.25, 0.0], MODEL) == struct.pack("<4f", 1.0, -0.5, 0.25, 0.0)


@pytest.mark.parametrize(
    ("vector", "problem"),
    [
        ([1.0, 0.0, 0.0], "a vector of 3 numbers does not fit embedding model"),
        ([1.0, 0.0, float("nan"), 0.0], "NaN or infinity"),
        ([1.0, 0.0, float("inf"), 0.0], "NaN or infinity"),
        ([1e300, 0.0, 0.0, 0.0], "NaN or infinity"),  # beyond float32: stored as infinity
    ],
)
def test_a_vector_that_does_not_fit_is_refused(vector, problem):
    with pytest.raises(InvalidInput, match=problem):
        vector_bytes(vector, MODEL)


def test_the_same_model_is_no_mismatch():
    assert model_mismatch("g1", MODEL, EmbeddingModel("wordllama-l2-supercat", 4)) is None


@pytest.mark.parametrize(
    "wanted",
    [EmbeddingModel("text-embedding-3-small", 4), EmbeddingModel("wordllama-l2-supercat", 8)],
)
def test_a_mismatch_names_both_models_and_the_fix(wanted):
    error = model_mismatch("g3", MODEL, wanted)
    assert isinstance(error, EmbeddingModelMismatch)
    assert isinstance(error, ConfigError)  # refuses to start, as a bad setting does
    assert "generation g3" in error.message
    assert str(MODEL) in error.message
    assert str(wanted) in error.message
    assert "chatlog replay" in error.message
    assert error.context["index_dimension"] == 4


@pytest.mark.parametrize(("name", "dimension"), [("", 4), ("model\n", 4), ("m", 0), ("m", 10**6)])
def test_a_model_record_must_make_sense(name, dimension):
    with pytest.raises(InvalidInput):
        EmbeddingModel(name, dimension)
