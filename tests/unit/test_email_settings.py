"""`reports.email` in settings.yaml: addresses, secrets only from the environment, needed only to send."""

from __future__ import annotations

from pathlib import Path

import pytest

from recycle_engine.config import Need, load_settings
from recycle_engine.config.load import describe_settings
from recycle_engine.errors import ConfigError

BASE = """\
timezone: America/New_York
gateways:
  - id: nmi-main
    type: simulated
reports:
  email:
    host: smtp.example.com
    from_address: reports@example.com
"""


def a_file(tmp_path: Path, email_keys: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(BASE + email_keys, encoding="utf-8")
    return path


def test_given_an_email_block_then_defaults_fill_it_and_config_check_describes_it_without_secrets(
    tmp_path: Path,
) -> None:
    # given
    path = a_file(tmp_path, "    to: [billing@example.com]\n    username: ${U}\n    password: ${P}\n")
    # when
    settings = load_settings(path, {"U": "bot", "P": "pa55-word"})
    # then
    email = settings.reports.email
    assert email is not None
    assert (email.port, email.starttls, email.timeout_s, email.attempts, email.backoff_s) == (
        587,
        True,
        30.0,
        3,
        30.0,
    )
    assert (email.username, email.password) == ("bot", "pa55-word")
    described = "\n".join(describe_settings(settings))
    assert (
        "report e-mail: to billing@example.com via smtp.example.com:587 (STARTTLS, with a login), 3 tries"
        in described
    )
    assert "pa55-word" not in described
    assert "pa55-word" not in repr(settings)


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ("    to: []\n", "reports.email.to (line 9): needs at least 1 recipient"),
        ('    to: ["Billing <b@example.com>"]\n', "reports.email.to[0] (line 9): must be one e-mail address"),
        (
            "    to: [billing@example.com]\n    password: hunter2\n",
            "reports.email.password (line 10): must come from the environment",
        ),
        (
            "    to: [billing@example.com]\n    port: 0\n",
            "reports.email.port (line 10): must be between 1 and 65535",
        ),
        (
            "    to: [billing@example.com]\n    attempts: 11\n",
            "reports.email.attempts (line 10): must be between 1 and 10",
        ),
        ("    to: [billing@example.com]\n    form_address: x@example.com\n", "did you mean 'from_address'"),
        (
            "    to: [billing@example.com]\n    password: ${P}\n",
            "reports.email.password (line 10): needs username too",
        ),
    ],
)
def test_given_a_wrong_email_key_then_loading_names_it(tmp_path: Path, keys: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(a_file(tmp_path, keys), {"P": "pa55"})
    assert problem in str(caught.value)


def test_given_an_unset_password_variable_then_only_sending_needs_it(tmp_path: Path) -> None:
    # given
    path = a_file(
        tmp_path,
        "    to: [billing@example.com]\n    username: ${SMTP_USER}\n    password: ${SMTP_PASSWORD}\n",
    )
    # when: loaded for a command that does not send
    settings = load_settings(path, {"SMTP_USER": "bot"}, needs=[Need.FLEXFACTOR])
    # then: it loads; a command that sends is refused, naming the variable and its use
    assert [u.variable for u in settings.unset] == ["SMTP_PASSWORD"]
    with pytest.raises(ConfigError, match="SMTP_PASSWORD is not set; it is needed to e-mail the report"):
        load_settings(path, {"SMTP_USER": "bot"}, needs=[Need.EMAIL])
