"""The ``gmta`` command line (DESIGN §2): version and check-config."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

import gmta
from gmta.cli import EXIT_CONFIG_ERROR, main
from gmta.config import module as registry
from gmta.config.module import Module
from gmta.config.reader import Directive, ModuleRef


class CliEndpoint(Module):
    name = "ut.cli_endpoint"
    endpoint = True
    max_inline_args = 10
    directives = (Directive("deliver_to", ModuleRef("target"), required=True),)


@pytest.fixture
def endpoint():
    import gmta.modules  # noqa: F401  (what check-config imports; registers 'dummy')

    registry.register(CliEndpoint)
    yield
    registry.unregister(CliEndpoint)


@pytest.fixture
def run(monkeypatch):
    monkeypatch.delenv("GMTA_CONFIG", raising=False)

    def run(*args, env=None):
        return CliRunner().invoke(main, list(args), env=env)
    return run


GOOD = "ut.cli_endpoint tcp://127.0.0.1:2525 {\n    deliver_to dummy\n}\n"


def write(path, text):
    path.write_text(text)
    return str(path)


def test_version(run):
    result = run("version")
    assert result.exit_code == 0
    assert result.output == f"gmta {gmta.__version__}\n"


def test_check_config_valid(run, endpoint, tmp_path):
    result = run("check-config", "-c", write(tmp_path / "gmta.conf", GOOD))
    assert result.exit_code == 0, result.output
    assert result.stdout == "No errors detected\n"
    assert result.stderr == ""


def test_check_config_prints_every_error_and_exits_2(run, endpoint, tmp_path):
    path = write(tmp_path / "gmta.conf",
                 "hostnme mx.example.org\n"
                 "ut.cli_endpoint tcp://127.0.0.1:2525 {\n    deliver_to &missing\n}\n")
    result = run("check-config", "--config", path)
    assert result.exit_code == EXIT_CONFIG_ERROR == 2
    assert "No errors detected" not in result.output
    assert result.stderr.splitlines() == [
        f"{path}:1: unknown module or global directive: hostnme (did you mean hostname?)",
        f"{path}:3: unknown configuration block: &missing "
        "(define it at top level, such as 'MODULE missing { ... }')",
    ]


def test_check_config_syntax_error(run, endpoint, tmp_path):
    path = write(tmp_path / "gmta.conf", "ut.cli_endpoint tcp://127.0.0.1:2525 {\n")
    result = run("check-config", "-c", path)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{path}:1: missing closing }}")


def test_check_config_prints_warnings_but_succeeds(run, endpoint, tmp_path):
    path = write(tmp_path / "gmta.conf", "debug $(verbose)\n" + GOOD)
    result = run("check-config", "-c", path)
    assert result.exit_code == 0
    assert result.stdout == "No errors detected\n"
    assert result.stderr == f"{path}:1: warning: macro $(verbose) is not defined and expands to nothing\n"


def test_config_option_beats_environment_which_beats_default(run, endpoint, tmp_path):
    good = write(tmp_path / "good.conf", GOOD)
    broken = write(tmp_path / "broken.conf", "frobnicate\n" + GOOD)
    # -c wins over GMTA_CONFIG
    result = run("check-config", "-c", good, env={"GMTA_CONFIG": broken})
    assert (result.exit_code, result.stdout) == (0, "No errors detected\n")
    # GMTA_CONFIG wins over the default
    result = run("check-config", env={"GMTA_CONFIG": broken})
    assert result.exit_code == 2 and result.stderr.startswith(f"{broken}:1: unknown module")
    result = run("check-config", env={"GMTA_CONFIG": good})
    assert result.exit_code == 0
    # the default file
    if os.path.exists("/etc/gmta/gmta.conf"):
        pytest.skip("this machine has a real /etc/gmta/gmta.conf")
    result = run("check-config")
    assert result.exit_code == 2
    assert result.stderr.startswith("/etc/gmta/gmta.conf: ")


def test_default_config_path_is_documented(run):
    result = run("check-config", "--help")
    assert result.exit_code == 0
    assert "/etc/gmta/gmta.conf" in result.output and "GMTA_CONFIG" in result.output
