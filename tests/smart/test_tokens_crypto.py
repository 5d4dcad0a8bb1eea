"""Token responses parsed tolerantly, encryption at rest, PKCE and settings."""

from __future__ import annotations

import pytest

from bff.settings import SettingsError
from bff.smart import FernetCipher, SmartConfigError, SmartSettings, TokenCipherError, TokenExchangeError
from bff.smart.crypto import pkce_challenge, pkce_verifier
from bff.smart.tokens import parse_bool, parse_token_response

BASE = {"access_token": "AT-1", "token_type": "Bearer", "expires_in": 3600, "scope": "launch openid"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("false", False), ("False", False), (" true ", True), (None, True), ("no", True)],
)
def test_parse_bool_is_tolerant_and_defaults_to_showing_the_banner(value: object, expected: bool) -> None:
    assert parse_bool(value, default=True) is expected


def test_a_token_response_with_epic_extras() -> None:
    body = {
        **BASE,
        "expires_in": "3240",
        "token_type": "bearer",
        "patient": "erXuFYUfucBZaryVksYEcMg3",
        "__epic.dstu2.patient": "TnOZ.elPXC6zcBNFMcFA7A5KZbYxo2.4T4M1mWEhhF3P",
        "encounter": "eySnzekbpf6uGZz87ndPuRQ3",
        "need_patient_banner": "false",
        "smart_style_url": "https://fhir.epic.com/EpicServices/SmartStyle.json",
        "appointment": "12345",
        "launch_token_extra": "must not be kept",
        "nested": {"ignored": True},
        "refresh_token": "RT-1",
    }
    tokens = parse_token_response(body)
    assert tokens.expires_in == 3240
    assert tokens.scopes == ("launch", "openid")
    assert tokens.need_patient_banner is False
    assert tokens.refresh_token == "RT-1"
    assert tokens.context == {
        "__epic.dstu2.patient": "TnOZ.elPXC6zcBNFMcFA7A5KZbYxo2.4T4M1mWEhhF3P",
        "appointment": "12345",
    }
    assert "AT-1" not in repr(tokens)
    assert "RT-1" not in repr(tokens)


@pytest.mark.parametrize(
    "change",
    [
        {"access_token": None},
        {"access_token": ""},
        {"token_type": "DPoP"},
        {"token_type": None},
        {"expires_in": "soon"},
        {"expires_in": 0},
        {"patient": {"id": "x"}},
    ],
)
def test_an_unusable_token_response_is_refused(change: dict[str, object]) -> None:
    body = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(TokenExchangeError):
        parse_token_response(body, TokenExchangeError)


def test_missing_expires_in_and_scope_are_none_and_empty() -> None:
    tokens = parse_token_response({"access_token": "AT", "token_type": "Bearer"})
    assert (tokens.expires_in, tokens.scopes, tokens.refresh_token, tokens.id_token) == (None, (), None, None)


def test_pkce_verifier_and_challenge() -> None:
    assert 43 <= len(pkce_verifier()) <= 128
    verifier, challenge = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert pkce_challenge(verifier) == challenge  # RFC 7636 appendix B


def test_fernet_cipher_round_trips_rotates_and_refuses_other_keys() -> None:
    old, new = FernetCipher.generate_key(), FernetCipher.generate_key()
    sealed = FernetCipher([old]).encrypt("AT-secret")
    assert "AT-secret" not in sealed
    rotated = FernetCipher([new, old])
    assert rotated.decrypt(sealed) == "AT-secret"
    assert FernetCipher([new]).decrypt(rotated.encrypt("x")) == "x"
    with pytest.raises(TokenCipherError):
        FernetCipher([new]).decrypt(sealed)
    with pytest.raises(TokenCipherError):
        FernetCipher([new]).decrypt("not a token")
    with pytest.raises(SmartConfigError):
        FernetCipher([])
    with pytest.raises(SmartConfigError):
        FernetCipher(["too-short"])


def test_a_cipher_derived_from_the_app_secret_is_stable_and_not_the_secret() -> None:
    secret = b"an-app-secret-of-enough-length-0123456789"
    one, two = FernetCipher.from_secrets([secret]), FernetCipher.from_secrets([secret])
    assert two.decrypt(one.encrypt("AT")) == "AT"
    with pytest.raises(TokenCipherError):
        FernetCipher.from_secrets([b"another-secret-of-enough-length"]).decrypt(one.encrypt("AT"))
    with pytest.raises(SmartConfigError):
        FernetCipher.from_secrets([b"short"])


def test_smart_settings_from_env() -> None:
    assert SmartSettings.from_env({}) == SmartSettings()
    key = FernetCipher.generate_key()
    settings = SmartSettings.from_env(
        {
            "SMART_TOKEN_KEYS": f" {key} , ",
            "SMART_REFRESH_LEEWAY_S": "90",
            "SMART_BACKEND_ALG": "RS384",
            "SMART_BACKEND_KID": "k1",
        }
    )
    assert settings.token_keys == (key,)
    assert (settings.refresh_leeway_s, settings.backend_alg, settings.backend_kid) == (90, "RS384", "k1")
    assert settings.cipher(b"").decrypt(FernetCipher([key]).encrypt("x")) == "x"
    with pytest.raises(SettingsError, match="SMART_BACKEND_ALG"):
        SmartSettings.from_env({"SMART_BACKEND_ALG": "HS256"})
    with pytest.raises(SettingsError, match="SMART_LAUNCH_TTL_S"):
        SmartSettings.from_env({"SMART_LAUNCH_TTL_S": "-1"})
