"""The view store contract against the in-memory store."""

from __future__ import annotations

import pytest

from chatlog.projections.store import InMemoryViewStore
from tests.contracts import ViewStoreContract


class TestInMemoryViewStore(ViewStoreContract):
    @pytest.fixture
    def store(self):
        return InMemoryViewStore()

    def erase_owner(self, store, tenant, user):
        store.erased.add((tenant, user))
