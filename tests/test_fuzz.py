"""Schemathesis against the served OpenAPI schema, authenticated, on a real
web process: no 5xx, and every answer matches the schema."""

from __future__ import annotations

import re
import subprocess

import pytest

from .stack import BIN, Account

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

# positive_data_acceptance is left out: the schema cannot say that a username
# is taken or a password too common, so some schema-valid requests rightly
# answer 400. Every check on the answers themselves runs.
CHECKS = ["--checks", "all", "--exclude-checks", "positive_data_acceptance"]


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(private_stack) -> None:
    # No worker: the tasks it queues wait in a queue of this test's own.
    running = private_stack(TASK_RATE_LIMIT="1000000/min")
    fuzzer = Account.sign_up(running.base_url)
    result = subprocess.run(
        [
            str(BIN / "st"),
            "run",
            f"{running.base_url}/api/schema/?format=json",
            "--header",
            f"Authorization: Token {fuzzer.token}",
            # Revoking its own token would leave the rest of the run anonymous.
            "--exclude-operation-id",
            "auth_token_destroy",
            "--max-examples",
            "80",
            "--seed",
            "20261128",
            "--warnings",
            "off",
            *CHECKS,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = result.stdout + result.stderr
    generated = re.search(r"(\d+) generated", output)
    assert result.returncode == 0, output[-6000:]
    assert generated is not None, output[-3000:]
    assert int(generated.group(1)) >= 1000, output[-3000:]
    assert "500 Internal Server Error" not in running.logs()
