"""Secret settings from files: a folder laid out as the kubelet mounts a Secret, named by VIXEN_SECRETS_DIR."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from services.common.app.secret_files import SECRETS_DIR_VARIABLE, secrets_folder
from services.common.app.settings import BrokerSettings, database_url_field, load_settings
from tests.support.settings_env import settings_env

BROKER_URL = "amqp://vixenbliss-content:f1le-pa55word@rabbitmq:5672/vixen"


class FileBackedSettings(BrokerSettings):
    database_url: str = database_url_field("content", "sqlite+aiosqlite:///unused.db")
    modal_api_key: SecretStr | None = None


def mount_secret(folder: Path, values: dict[str, str]) -> Path:
    """The kubelet's layout: a timestamped folder of files, `..data` linking to it, and each key a link through
    `..data` (which is how a Secret's update swaps every file at once)."""
    version = folder / "..2026_12_08_00_00_00.000000001"
    version.mkdir(parents=True)
    for key, value in values.items():
        (version / key).write_text(value, encoding="utf-8")
    (folder / "..data").symlink_to(version.name)
    for key in values:
        (folder / key).symlink_to(Path("..data") / key)
    return folder


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    return settings_env(monkeypatch, FileBackedSettings, {})


def test_each_variable_is_read_from_its_file_without_the_trailing_newline(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # `kubectl create secret --from-file` keeps the newline an editor leaves at the end of a file.
    folder = mount_secret(
        tmp_path / "secrets",
        {"RABBITMQ_URL": BROKER_URL + "\n", "CONTENT_DATABASE_URL": "postgresql+asyncpg://c:pw@db/content\n"},
    )
    env.setenv(SECRETS_DIR_VARIABLE, str(folder))
    settings = FileBackedSettings()
    assert settings.rabbitmq_url.get_secret_value() == BROKER_URL
    # An alias choice of the field, matched like the environment's names are.
    assert settings.database_url == "postgresql+asyncpg://c:pw@db/content"


def test_file_names_match_without_regard_to_case_as_variables_do(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv(SECRETS_DIR_VARIABLE, str(mount_secret(tmp_path / "s", {"rabbitmq_url": BROKER_URL})))
    assert FileBackedSettings().rabbitmq_url.get_secret_value() == BROKER_URL


def test_a_variable_in_the_environment_wins_over_the_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv(SECRETS_DIR_VARIABLE, str(mount_secret(tmp_path / "s", {"RABBITMQ_URL": BROKER_URL})))
    env.setenv("RABBITMQ_URL", "amqp://other:env-pa55word@rabbitmq/")
    assert FileBackedSettings().rabbitmq_url.get_secret_value() == "amqp://other:env-pa55word@rabbitmq/"


def test_without_the_variable_no_file_is_read(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mount_secret(tmp_path / "s", {"RABBITMQ_URL": BROKER_URL})
    env.chdir(tmp_path / "s")  # not even from the working folder
    with pytest.raises(SystemExit):
        load_settings(FileBackedSettings)
    assert capsys.readouterr().err.strip() == "configuration error: RABBITMQ_URL is not set"


def test_a_placeholder_in_a_file_is_refused_like_one_in_the_environment_without_echoing_it(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = mount_secret(tmp_path / "s", {"RABBITMQ_URL": BROKER_URL, "MODAL_API_KEY": "changeme\n"})
    env.setenv(SECRETS_DIR_VARIABLE, str(folder))
    with pytest.raises(SystemExit):
        load_settings(FileBackedSettings)
    line = capsys.readouterr().err
    assert "MODAL_API_KEY is a placeholder value" in line and "changeme" not in line


def test_a_file_linking_out_of_the_folder_is_not_read(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.write_text(BROKER_URL, encoding="utf-8")
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "RABBITMQ_URL").symlink_to(outside)
    env.setenv(SECRETS_DIR_VARIABLE, str(folder))
    with pytest.warns(UserWarning, match="outside"), pytest.raises(ValidationError):
        FileBackedSettings()


@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_a_secrets_folder_that_is_not_one_stops_the_service_in_one_line(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    named = tmp_path / "not-mounted"
    if kind == "a file":
        named.write_text("RABBITMQ_URL=" + BROKER_URL, encoding="utf-8")
    env.setenv(SECRETS_DIR_VARIABLE, str(named))
    with pytest.raises(SystemExit) as stopped:
        load_settings(FileBackedSettings)
    assert stopped.value.code == 2
    line = capsys.readouterr().err.strip()
    why = "is not a folder (is the secret volume mounted?)"
    assert line == f"configuration error: {SECRETS_DIR_VARIABLE}={named} {why}"


def test_an_empty_variable_names_no_folder(tmp_path: Path) -> None:
    assert secrets_folder({SECRETS_DIR_VARIABLE: "  "}) is None
    assert secrets_folder({}) is None
    assert secrets_folder({SECRETS_DIR_VARIABLE: str(tmp_path)}) == tmp_path
