"""Master keys: wrapping data keys, the key list spec, rotation and refusals."""

from __future__ import annotations

import base64

import pytest

from chatlog.schemas.errors import ConfigError, Undecryptable
from chatlog.schemas.master_keys import (
    LocalKeyProvider,
    WrappedKey,
    new_master_key,
    unwrap_data_key,
    user_pseudonym,
    user_pseudonyms,
    wrap_data_key,
)
from chatlog.schemas.sealing import DataKey, KeyScope

SCOPE = KeyScope("t1", "u1")


def test_a_wrapped_data_key_unwraps_to_the_same_key():
    provider = LocalKeyProvider.from_spec(new_master_key("k1"))
    key = DataKey.new(SCOPE)
    wrapped = wrap_data_key(provider, key)
    assert wrapped.kek_id == "k1"
    assert key.secret not in wrapped.blob
    back = unwrap_data_key(provider, wrapped, key_id=key.key_id, scope=SCOPE)
    assert back.secret == key.secret
    assert back.key_id == key.key_id


def test_a_wrapped_key_copied_to_another_user_or_id_does_not_unwrap():
    provider = LocalKeyProvider.from_spec(new_master_key("k1"))
    key = DataKey.new(SCOPE)
    wrapped = wrap_data_key(provider, key)
    with pytest.raises(Undecryptable, match="does not open"):
        unwrap_data_key(provider, wrapped, key_id=key.key_id, scope=KeyScope("t1", "u2"))
    with pytest.raises(Undecryptable):
        unwrap_data_key(provider, wrapped, key_id="another-id", scope=SCOPE)


def test_rotation_wraps_under_the_first_key_and_unwraps_under_every_listed_one():
    old, new = new_master_key("k1"), new_master_key("k2")
    key = DataKey.new(SCOPE)
    before = wrap_data_key(LocalKeyProvider.from_spec(old), key)
    during = LocalKeyProvider.from_spec(f"{new},{old}")
    assert during.current == "k2"
    assert unwrap_data_key(during, before, key_id=key.key_id, scope=SCOPE).secret == key.secret
    rewrapped = wrap_data_key(during, key)
    assert rewrapped.kek_id == "k2"
    after = LocalKeyProvider.from_spec(new)
    assert unwrap_data_key(after, rewrapped, key_id=key.key_id, scope=SCOPE).secret == key.secret
    with pytest.raises(Undecryptable, match="master key 'k1', which this process does not have"):
        unwrap_data_key(after, before, key_id=key.key_id, scope=SCOPE)


def test_a_different_master_key_under_the_same_id_is_refused_as_undecryptable():
    key = DataKey.new(SCOPE)
    wrapped = wrap_data_key(LocalKeyProvider.from_spec(new_master_key("k1")), key)
    impostor = LocalKeyProvider.from_spec(new_master_key("k1"))
    with pytest.raises(Undecryptable, match="another one, or the record was altered"):
        unwrap_data_key(impostor, wrapped, key_id=key.key_id, scope=SCOPE)
    flipped = WrappedKey("k1", wrapped.blob[:-1] + bytes([wrapped.blob[-1] ^ 1]))
    with pytest.raises(Undecryptable):
        unwrap_data_key(impostor, flipped, key_id=key.key_id, scope=SCOPE)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", "is empty"),
        ("k1", "entry 1 is not"),
        ("k1:not-base64!", "entry 1 is not"),
        (f"k1:{base64.b64encode(bytes(16)).decode()}", "entry 1 is not"),
        # Random keys get ids: every xdist worker must collect the same test names.
        pytest.param(
            f"{new_master_key('k1')},bad id:{base64.b64encode(bytes(32)).decode()}",
            "entry 2",
            id="bad-id",
        ),
        pytest.param(f"{new_master_key('k1')},{new_master_key('k1')}", "listed twice", id="twice"),
    ],
)
def test_a_bad_spec_names_the_setting_and_never_the_key(spec, problem):
    with pytest.raises(ConfigError, match=problem) as caught:
        LocalKeyProvider.from_spec(spec)
    assert "CHATLOG_MASTER_KEY" in str(caught.value)
    for entry in spec.split(","):
        secret = entry.partition(":")[2]
        if secret:
            assert secret not in str(caught.value)


def test_the_provider_never_shows_its_keys():
    spec = new_master_key("k1")
    provider = LocalKeyProvider.from_spec(spec)
    assert spec.partition(":")[2] not in repr(provider)
    assert "k1" in repr(provider)


def test_a_mac_is_keyed_per_master_key_and_purpose_and_found_again_after_rotation():
    old, new = new_master_key("k1"), new_master_key("k2")
    before = LocalKeyProvider.from_spec(old)
    mac = before.mac("pii", b"4111111111111111")
    assert mac.key_id == "k1"
    assert len(mac.digest) == 32
    assert before.mac("pii", b"4111111111111111") == mac  # deterministic: it can be looked up
    assert before.mac("user", b"4111111111111111").digest != mac.digest  # one key per purpose
    assert LocalKeyProvider.from_spec(new).mac("pii", b"4111111111111111").digest != mac.digest
    during = LocalKeyProvider.from_spec(f"{new},{old}")
    assert during.mac("pii", b"x").key_id == "k2"
    assert mac in during.macs("pii", b"4111111111111111")
    with pytest.raises(ValueError, match="MAC purpose"):
        before.mac("Not A Purpose", b"x")


def test_a_user_pseudonym_binds_tenant_and_id_without_showing_either():
    provider = LocalKeyProvider.from_spec(new_master_key("k1"))
    alice = user_pseudonym(provider, tenant="t1", user_id="alice")
    assert alice == user_pseudonym(provider, tenant="t1", user_id="alice")
    assert alice != user_pseudonym(provider, tenant="t2", user_id="alice")
    # Length-prefixed parts: ("t1", "alice") and ("t1a", "lice") are different users.
    assert alice != user_pseudonym(provider, tenant="t1a", user_id="lice")
    assert "alice" not in str(alice)
    assert user_pseudonyms(provider, tenant="t1", user_id="alice") == (alice,)
