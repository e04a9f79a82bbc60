"""The managed Redis's secret: the generated password file and the URL shown to people."""

from __future__ import annotations

import stat
from pathlib import Path

from coordinator.bus.redis_server import read_password, redact_url


def test_redact_url_masks_the_password_and_keeps_the_rest() -> None:
    assert redact_url("redis://:s3cr3t@127.0.0.1:6380/0") == "redis://:***@127.0.0.1:6380/0"
    assert redact_url("rediss://app:s3cr3t@cache.internal:6379") == "rediss://app:***@cache.internal:6379"
    assert redact_url("redis://127.0.0.1:6380/0") == "redis://127.0.0.1:6380/0"


def test_the_password_is_generated_once_into_a_0600_file(tmp_path: Path) -> None:
    first = read_password(tmp_path)
    assert len(first) >= 32 and first.replace("-", "").replace("_", "").isalnum()  # URL-safe as it is
    assert read_password(tmp_path) == first
    assert stat.S_IMODE((tmp_path / "password").stat().st_mode) == 0o600


def test_a_password_file_left_readable_by_others_is_made_private(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("given\n")
    (tmp_path / "password").chmod(0o644)
    assert read_password(tmp_path) == "given"
    assert stat.S_IMODE((tmp_path / "password").stat().st_mode) == 0o600
