"""One table of job options (`UploadJob`'s fields): the library, the command line, the worker
and config files all take the options it declares, with its defaults and bounds."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from engine import _cli
from engine._api import Uploader
from engine._errors import ConfigError
from engine._options import UploadJob, job_options
from engine._worker.settings import load_config, load_secrets

# Keywords of a call that are not options of the job: the secrets, and what runs it.
RUNTIME = {"access_token", "app_secret", "progress", "stop", "cancel", "unrecorded_batches"}


def test_the_library_takes_every_option_with_its_default() -> None:
    params = inspect.signature(Uploader.upload).parameters
    keywords = {n: p.default for n, p in params.items() if n not in {"self", "source"} | RUNTIME}
    table = {o.keyword: o.default for o in job_options() if o.keyword}
    assert keywords.keys() == table.keys()
    for name, default in table.items():
        if name not in ("audience", "ad_account"):  # required: no default
            # None stands for an empty map in a signature (no mutable default).
            assert keywords[name] == (None if default == {} else default), name
    # Options set on the Uploader, not per upload.
    uploader = inspect.signature(Uploader.__init__).parameters
    assert {o.field for o in job_options() if not o.keyword} <= set(uploader)


def test_the_command_line_has_a_flag_for_every_option() -> None:
    parser = _cli.build_parser()
    up = next(
        a
        for a in parser._subparsers._group_actions[0].choices.values()
        if a.prog.endswith("upload")
    )  # type: ignore[union-attr]
    flags = {s for action in up._actions for s in action.option_strings}
    assert {o.flag for o in job_options() if o.flag} <= flags
    for opt in job_options():
        assert opt.help, opt.field
    # A float option takes a fraction on the command line.
    args = parser.parse_args(
        ["upload", "x.csv", "--session-window", "3.5", "--read-timeout", "2.5"]
    )
    assert (args.session_window_s, args.read_timeout_s) == (3.5, 2.5)


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("batch_size", 10_001),
        ("batch_size", 0),
        ("max_retries", -1),
        ("concurrency", 0),
        ("read_timeout_s", 0.0),
        ("session_id", 0),
        ("mode", "upsert"),
        ("format", "xml"),
    ],
)
def test_the_job_checks_each_option_by_the_table(field: str, bad: object) -> None:
    with pytest.raises(ConfigError, match=field.split("_")[0]):
        UploadJob("x.csv", audience_id="1", ad_account="act_1", **{field: bad})  # type: ignore[arg-type]


def test_a_config_file_with_an_unknown_key_is_refused_naming_the_closest(tmp_path: Path) -> None:
    config = tmp_path / "job.toml"
    config.write_text('audience = "1"\nconcurency = 2\n')
    with pytest.raises(
        _cli.InputError, match="unknown option 'concurency'; did you mean 'concurrency'"
    ):
        _cli._read_config(str(config))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max-jbos = 2\n", "unknown setting 'max-jbos' .*; did you mean 'max-jobs'"),
        ("[limits]\nbrust = 3\n", "unknown \\[limits\\] setting 'brust'; did you mean 'burst'"),
    ],
)
def test_the_workers_config_refuses_an_unknown_key_naming_the_closest(
    tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "worker.toml"
    config.write_text(f'state-dir = "state"\n{text}')
    with pytest.raises(ConfigError, match=message):
        load_config(config)
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('acess_token = "x"\n')
    secrets.chmod(0o600)
    with pytest.raises(ConfigError, match="'acess_token'; did you mean 'access_token'"):
        load_secrets(secrets, {})


def test_a_config_file_sets_options_by_their_long_names(tmp_path: Path) -> None:
    config = tmp_path / "job.toml"
    config.write_text(
        'audience = "1"\nad-account = "act_1"\nrejects = "r.csv"\nread-timeout = 5.0\n'
        '[column-map]\nEMAIL = "mail"\n'
    )
    assert _cli._read_config(str(config)) == {
        "audience_id": "1",
        "ad_account": "act_1",
        "rejects_path": "r.csv",
        "read_timeout_s": 5.0,
        "column_map": {"EMAIL": "mail"},
    }


def test_the_worker_takes_the_options_the_table_allows_it() -> None:
    from engine._worker.intake import _FIELDS, job_option

    allowed = {o.keyword for o in job_options() if o.worker}
    assert set(_FIELDS) == allowed | {"input"}
    assert "checkpoint" not in _FIELDS and "session_window_s" not in _FIELDS
    assert job_option("max_removal_share", 1) == 1.0  # a JSON integer for a float option
