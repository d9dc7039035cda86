"""Shared test settings: strict rank promotion and a PRNG key fixture."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)
