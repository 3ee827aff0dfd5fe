import stat
import threading
from pathlib import Path

from pydantic import SecretStr

from faas import auth
from faas.config import Settings


def test_token_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    first = auth.admin_token(settings)
    assert len(first) >= 32
    assert auth.admin_token(settings) == first
    mode = stat.S_IMODE(settings.token_file.stat().st_mode)
    assert mode == 0o600


def test_concurrent_first_use_agrees_on_one_token(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    seen: list[str] = []
    threads = [
        threading.Thread(target=lambda: seen.append(auth.admin_token(settings))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1


def test_env_token_wins_and_writes_no_file(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, admin_token=SecretStr("from-env-0123456789"))
    assert auth.admin_token(settings) == "from-env-0123456789"
    assert not settings.token_file.exists()


def test_bearer_matches() -> None:
    assert auth.bearer_matches("Bearer abc", "abc")
    assert auth.bearer_matches("bearer abc", "abc")
    assert not auth.bearer_matches("Bearer abd", "abc")
    assert not auth.bearer_matches("Basic abc", "abc")
    assert not auth.bearer_matches("abc", "abc")
    assert not auth.bearer_matches(None, "abc")
    assert not auth.bearer_matches("Bearer ", "abc")


def test_an_empty_token_matches_nothing() -> None:
    assert not auth.bearer_matches("Bearer ", "")
    assert not auth.bearer_matches("Bearer", "")


def test_short_tokens_are_refused(tmp_path: Path) -> None:
    import pytest
    from pydantic import ValidationError

    from faas.errors import ProviderError

    with pytest.raises(ValidationError):
        Settings(state_dir=tmp_path, admin_token=SecretStr(""))
    settings = Settings(state_dir=tmp_path)
    settings.token_file.write_text("\n")
    with pytest.raises(ProviderError):
        auth.admin_token(settings)
