"""Input URLs at the worker, through the real worker process and moto's S3 server: a URL is
read only under a prefix of the worker's input-urls, with the worker's own credentials; a URL
that carries credentials, a query string or a climb out of its prefix is refused; and no
answer, stored job or log line holds a credential, at debug level too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine._errors import InputError
from engine._worker.urls import check_url
from engine.testing.fakegraph import FakeGraph
from engine.testing.sample import write_sample

from ..object_store import ACCESS_KEY, SECRET_KEY, Bucket, s3, s3_env
from ..test_worker import ACT_1, API_TOKEN, AUD_1, WorkerProcess, submit, worker_env, write_config
from .test_worker_paths import AUTH, assert_quiet, ended, job_texts, post

__all__ = ["s3"]  # the fixture

SESSION_TOKEN = "aws-session-token-DO-NOT-LEAK-0c3e"
PASSWORD = "url-password-DO-NOT-LEAK-8d21"
SIGNATURE = "url-signature-DO-NOT-LEAK-e6f0"
SECRETS = (SECRET_KEY, ACCESS_KEY, SESSION_TOKEN, PASSWORD, SIGNATURE)


def assert_no_secret(*texts: str) -> None:
    assert_quiet(*texts)
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def store_env() -> dict[str, str]:
    """The worker's environment: the test's tokens, and the store's chain with a session
    token, which a store library's debug log would print with each request's headers."""
    return worker_env(
        AUDIENCE_ENGINE_API_TOKEN=API_TOKEN, AWS_SESSION_TOKEN=SESSION_TOKEN, **s3_env()
    )


async def test_only_urls_under_an_allowed_prefix_are_read(
    fake: FakeGraph, s3: Bucket, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    people = write_sample(tmp_path / "people.csv", 300, seed=4)
    allowed = s3.put("exports/people.csv", people.read_bytes())
    s3.put("private/people.csv", people.read_bytes())
    s3.put("exports-old/people.csv", people.read_bytes())
    prefix = s3.url("exports")
    config = write_config(
        tmp_path, fake.base_url, f'input-urls = ["{prefix}"]', 'log-level = "debug"'
    )
    worker = await workers(config, store_env())
    job = {"audience": AUD_1, "ad_account": ACT_1}
    bucket = s3.name
    attacks = [
        (f"s3://{bucket}/private/people.csv", "outside the worker's input-urls"),
        (f"s3://{bucket}/exports-old/people.csv", "outside the worker's input-urls"),
        (f"s3://{bucket}-other/exports/people.csv", "outside the worker's input-urls"),
        (f"gs://{bucket}/exports/people.csv", "outside the worker's input-urls"),
        (f"s3://{bucket}/exports/../private/people.csv", "holds a . or .. segment"),
        (f"s3://{bucket}/exports/%2e%2e/private/people.csv", "holds a . or .. segment"),
        (f"s3://{bucket}/exports/..%5cprivate/people.csv", "or a backslash"),
        (f"s3://{ACCESS_KEY}:{PASSWORD}@{bucket}/exports/people.csv", "may not carry credentials"),
        (f"{allowed}?X-Amz-Signature={SIGNATURE}", "may not carry credentials"),
        (f"s3://{bucket}/exports/missing.csv", "no such object"),
        (f"s3://{bucket}/exports/a\x00.csv", "control character"),
    ]
    for url, message in attacks:
        status, text = await post(http, worker.url, input=url, **job)
        assert status == 422 and message in text, (url, text)
        assert_no_secret(text)
    done = await submit(http, worker.url, input=allowed, headers=AUTH, **job)
    assert done["source"] == "url"
    (finished,) = await ended(http, worker.url, [done["id"]])
    assert finished["state"] == "completed", finished
    assert finished["report"]["rows_read"] == 300
    assert_no_secret(await job_texts(http, worker.url), worker.log_text())


async def test_without_input_urls_no_url_is_read(
    fake: FakeGraph, s3: Bucket, tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    fake.register_audience(AUD_1, ACT_1)
    url = s3.put("exports/people.csv", write_sample(tmp_path / "p.csv", 20).read_bytes())
    worker = await workers(write_config(tmp_path, fake.base_url), store_env())
    status, text = await post(http, worker.url, audience=AUD_1, ad_account=ACT_1, input=url)
    assert status == 422 and "sets no input-urls" in text, text
    assert_no_secret(text, worker.log_text())


async def test_a_prefix_with_credentials_is_refused_unquoted(
    fake: FakeGraph, tmp_path: Path
) -> None:
    for entry, message in (
        (f"s3://{ACCESS_KEY}:{PASSWORD}@lists/", "entry 2: the input URL may not carry"),
        (f"https://lists.example/x?sig={SIGNATURE}", "entry 2: the input URL may not carry"),
        ("ftp://lists.example/", "entry 2 must be an s3://"),
        ("s3:///exports/", "entry 2 names no bucket"),
    ):
        config = write_config(tmp_path, fake.base_url, f'input-urls = ["s3://ok/", "{entry}"]')
        code, err = await WorkerProcess(config, store_env()).run_to_exit()
        assert code == 2 and message in err, err
        assert_no_secret(err)


@pytest.mark.parametrize(
    "url",
    [
        "s3://lists/exportsX/a.csv",
        "s3://lists/export/a.csv",
        "s3://lists.evil/exports/a.csv",
        "s3://lists/exports/./a.csv",
        "s3://lists/exports/%2E%2E/b.csv",
        "https://data.example/lists@evil.example/a.csv",
        "https://data.example:8443/lists/a.csv",
        "https://data.example.evil/lists/a.csv",
        "https://data.example/lists/a.csv#x",
        "https://data.example/lists/a.csv\r\nHost: evil",
    ],
)
def test_prefix_matching_holds_at_the_boundary(url: str) -> None:
    prefixes = ("s3://lists/exports", "https://data.example/lists/")
    check_url("s3://LISTS/exports/a.csv", prefixes)  # the bucket compares lowercase
    check_url("HTTPS://data.example/lists/sub/a.csv", prefixes)
    with pytest.raises(InputError):
        check_url(url, prefixes)
