"""``gmta creds create|remove|list|password`` and ``load_block``, the loader it uses."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import gmta.modules  # noqa: F401  (what the command imports)
from gmta.auth.pass_table import Argon2Params, PassTable, verify_password
from gmta.cli import main
from gmta.config import module as registry
from gmta.config.loader import load_block
from gmta.config.module import Module
from gmta.config.reader import Directive, String
from gmta.errors import ConfigErrors
from gmta.table import Table
from gmta.table.file import FileTable

FAST = Argon2Params(memory_cost=8, iterations=1, lanes=1)


@pytest.fixture(autouse=True)
def fast_hashes(monkeypatch):
    monkeypatch.setattr(PassTable, "hash_params", FAST)


@pytest.fixture
def conf(tmp_path):
    """A configuration whose endpoint does not refer to the pass_table (yet)."""
    path = tmp_path / "gmta.conf"
    path.write_text(f"""\
state_dir {tmp_path}
hostname mx.example.org

auth.pass_table local_authdb {{
    table file passwd
}}

smtp tcp://127.0.0.1:0 {{
    tls off
    deliver_to dummy
}}
""")
    return path


@pytest.fixture
def run(monkeypatch):
    monkeypatch.delenv("GMTA_CONFIG", raising=False)

    def run(*args, input=None, env=None):
        return CliRunner().invoke(main, ["creds", *args], input=input, env=env)
    return run


def stored(tmp_path) -> dict[str, str]:
    lines = (tmp_path / "passwd").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines)


# -- create ------------------------------------------------------------------------------------

def test_create_with_password_option(run, conf, tmp_path):
    result = run("create", "-c", str(conf), "--password", "s3cret", "Alice@Example.ORG")
    assert result.exit_code == 0, result.output
    assert result.output == ""
    entries = stored(tmp_path)
    assert list(entries) == ["alice@example.org"]
    assert entries["alice@example.org"].startswith("argon2id:v=19:m=8:t=1:p=1:")
    assert verify_password(entries["alice@example.org"], "s3cret")
    # What the daemon would load authenticates the new user.
    auth = load_block(str(conf), "local_authdb")
    assert auth.authenticate("alice@example.org", "s3cret")


def test_create_prompts_twice_without_echo(run, conf, tmp_path):
    result = run("create", "-c", str(conf), "bob", input="pw1\npw1\n")
    assert result.exit_code == 0, result.output
    assert "pw1" not in result.output
    assert result.output.count("Password") == 1 and "Repeat for confirmation" in result.output
    assert verify_password(stored(tmp_path)["bob"], "pw1")


def test_create_prompt_asks_again_when_the_two_differ(run, conf, tmp_path):
    result = run("create", "-c", str(conf), "bob", input="pw1\npw2\npw3\npw3\n")
    assert result.exit_code == 0, result.output
    assert "do not match" in result.output
    assert verify_password(stored(tmp_path)["bob"], "pw3")


def test_create_existing_user_fails_before_asking(run, conf, tmp_path):
    assert run("create", "-c", str(conf), "--password", "a", "bob").exit_code == 0
    before = (tmp_path / "passwd").read_text()
    result = run("create", "-c", str(conf), "BOB", input="x\nx\n")
    assert result.exit_code == 1
    assert result.stderr == "Error: credentials for bob already exist\n"
    assert "Password" not in result.output
    assert (tmp_path / "passwd").read_text() == before


def test_create_race_with_another_creator(run, conf, tmp_path, monkeypatch):
    # The user appears between the check and the locked write.
    real = PassTable.create_user

    def racing(self, username, password):
        (tmp_path / "passwd").write_text("bob: argon2id:other\n")
        return real(self, username, password)
    monkeypatch.setattr(PassTable, "create_user", racing)
    result = run("create", "-c", str(conf), "--password", "a", "bob")
    assert result.exit_code == 1
    assert result.stderr == "Error: credentials for bob already exist\n"
    assert (tmp_path / "passwd").read_text() == "bob: argon2id:other\n"


def test_empty_password_is_refused(run, conf, tmp_path):
    result = run("create", "-c", str(conf), "--password", "", "bob")
    assert result.exit_code == 1 and result.stderr == "Error: the password is empty\n"
    assert not (tmp_path / "passwd").exists()


def test_invalid_user_name(run, conf):
    result = run("create", "-c", str(conf), "--password", "x", "a b")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: invalid user name 'a b': ")


def test_create_keeps_comments_and_other_users(run, conf, tmp_path):
    (tmp_path / "passwd").write_text("# gmta users\nalice: argon2id:x\n")
    assert run("create", "-c", str(conf), "--password", "pw", "bob").exit_code == 0
    lines = (tmp_path / "passwd").read_text().splitlines()
    assert lines[:2] == ["# gmta users", "alice: argon2id:x"]
    assert lines[2].startswith("bob: argon2id:")


# -- password ----------------------------------------------------------------------------------

def test_password_changes_an_existing_users_password(run, conf, tmp_path):
    run("create", "-c", str(conf), "--password", "old", "bob")
    result = run("password", "-c", str(conf), "Bob", input="new\nnew\n")
    assert result.exit_code == 0, result.output
    assert verify_password(stored(tmp_path)["bob"], "new")
    result = run("password", "-c", str(conf), "--password", "newer", "bob")
    assert result.exit_code == 0
    assert verify_password(stored(tmp_path)["bob"], "newer")
    assert not verify_password(stored(tmp_path)["bob"], "new")


def test_password_of_a_missing_user_fails_before_asking(run, conf):
    result = run("password", "-c", str(conf), "nobody", input="x\nx\n")
    assert result.exit_code == 1
    assert result.stderr == "Error: no credentials for nobody\n"
    assert "Password" not in result.output


def test_password_race_with_a_remover(run, conf, tmp_path, monkeypatch):
    run("create", "-c", str(conf), "--password", "old", "bob")
    real = PassTable.set_password

    def racing(self, username, password):
        (tmp_path / "passwd").write_text("")
        return real(self, username, password)
    monkeypatch.setattr(PassTable, "set_password", racing)
    result = run("password", "-c", str(conf), "--password", "new", "bob")
    assert (result.exit_code, result.stderr) == (1, "Error: no credentials for bob\n")


# -- remove and list --------------------------------------------------------------------------------

def test_remove(run, conf, tmp_path):
    for user in ("alice", "bob"):
        run("create", "-c", str(conf), "--password", "pw", user)
    result = run("remove", "-c", str(conf), "ALICE")
    assert result.exit_code == 0 and result.output == ""
    assert list(stored(tmp_path)) == ["bob"]
    result = run("remove", "-c", str(conf), "alice")
    assert (result.exit_code, result.stderr) == (1, "Error: no credentials for alice\n")


def test_list(run, conf):
    result = run("list", "-c", str(conf))
    assert (result.exit_code, result.output) == (0, "")
    for user in ("carol", "alice@example.org", "bob"):
        run("create", "-c", str(conf), "--password", "pw", user)
    result = run("list", "-c", str(conf))
    assert result.exit_code == 0
    assert result.output == "alice@example.org\nbob\ncarol\n"


def test_config_from_the_environment(run, conf):
    run("create", "-c", str(conf), "--password", "pw", "bob")
    result = run("list", env={"GMTA_CONFIG": str(conf)})
    assert (result.exit_code, result.output) == (0, "bob\n")


def test_help_warns_about_the_password_option(run):
    result = run("create", "--help")
    assert result.exit_code == 0
    assert "shell history" in " ".join(result.output.split())


# -- choosing the block ---------------------------------------------------------------------------------

def two_tables(tmp_path):
    path = tmp_path / "two.conf"
    path.write_text(f"state_dir {tmp_path}\n"
                    "auth.pass_table staff {\n    table file staff\n}\n"
                    "auth.pass_table customers customers_alias {\n    table file customers\n}\n"
                    "table.file aliases {\n    file aliases\n}\n")
    return str(path)


def test_several_blocks_need_table_option(run, tmp_path):
    path = two_tables(tmp_path)
    result = run("list", "-c", path)
    assert result.exit_code == 2
    assert result.stderr == (f"{path}: several auth.pass_table blocks: staff, customers "
                             "(choose one by name)\n")
    result = run("create", "-c", path, "--table", "customers_alias", "--password", "x", "bob")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "customers").read_text().startswith("bob: ")
    assert not (tmp_path / "staff").exists()


def test_table_option_must_name_a_pass_table(run, tmp_path):
    path = two_tables(tmp_path)
    result = run("list", "-c", path, "--table", "aliases")
    assert result.exit_code == 2
    assert result.stderr == f"{path}:8: aliases is a table.file block, not auth.pass_table\n"
    result = run("list", "-c", path, "--table", "nope")
    assert result.exit_code == 2
    assert result.stderr == (f"{path}: no configuration block named nope "
                             "(the auth.pass_table blocks are: staff, customers)\n")


def test_no_pass_table_block(run, tmp_path):
    path = tmp_path / "none.conf"
    path.write_text("smtp tcp://127.0.0.1:0 {\n    deliver_to dummy\n}\n")
    result = run("list", "-c", str(path))
    assert result.exit_code == 2
    assert result.stderr == (f"{path}: no auth.pass_table block in this configuration "
                             "(gmta looks for a top-level block such as "
                             "'auth.pass_table NAME { ... }')\n")


def test_config_errors_exit_2(run, tmp_path):
    path = tmp_path / "bad.conf"
    path.write_text("auth.pass_table a {\n    table file passwd\n")
    result = run("list", "-c", str(path))
    assert result.exit_code == 2 and result.stderr.startswith(f"{path}:1: missing closing }}")


def test_broken_table_file_is_reported_not_edited(run, conf, tmp_path):
    (tmp_path / "passwd").write_text("bob: x\n: y\n")
    result = run("list", "-c", str(conf))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{tmp_path}/passwd:2: empty key before colon")


def test_unwritable_directory(run, conf, tmp_path, monkeypatch):
    def denied(*args, **kw):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".passwd.lock"))
    monkeypatch.setattr("gmta.table.file.os.open", denied)
    result = run("create", "-c", str(conf), "--password", "x", "bob")
    assert result.exit_code == 1
    assert result.stderr == (f"Error: cannot update the table {tmp_path}/.passwd.lock: "
                             "Permission denied\n")


class StaticLike(Table):
    """A table that cannot be edited or listed."""

    name = "table.ut_fixed"
    directives = (Directive("entry", String()),)

    def lookup_multi(self, key):
        return []


@pytest.fixture
def fixed_table():
    registry.register(StaticLike)
    yield
    registry.unregister(StaticLike)


def test_table_that_cannot_be_edited(run, tmp_path, fixed_table):
    path = tmp_path / "ro.conf"
    path.write_text("auth.pass_table ro {\n    table ut_fixed\n}\n")
    result = run("create", "-c", str(path), "--password", "x", "bob")
    assert result.exit_code == 1
    assert result.stderr == ("Error: the table of ro (table.ut_fixed) cannot be edited; "
                             "gmta creds edits table.file tables\n")
    result = run("list", "-c", str(path))
    assert (result.exit_code, result.stderr) == (
        1, "Error: the table of ro (table.ut_fixed) cannot list its entries\n")


# -- load_block ------------------------------------------------------------------------------------------

class Broken(Module):
    """A registered block that fails whenever it is configured."""

    name = "ut.broken_block"
    kinds = frozenset({"table"})

    def configure(self, cfg, ctx):
        raise self.node.error("ut.broken_block was configured")


@pytest.fixture
def broken():
    registry.register(Broken)
    yield
    registry.unregister(Broken)


def write(tmp_path, text):
    path = tmp_path / "gmta.conf"
    path.write_text(text)
    return str(path)


def test_load_block_configures_only_the_block_and_what_it_refers_to(tmp_path, broken):
    path = write(tmp_path, f"state_dir {tmp_path}\n"
                           "ut.broken_block never_used { }\n"
                           "target.queue not_built_yet { }\n"
                           "smtp tcp://127.0.0.1:0 {\n    no_such_directive\n}\n"
                           "table.file t {\n    file t\n}\n"
                           "auth.pass_table a {\n    table &t\n}\n")
    auth = load_block(path, module="auth.pass_table")
    assert isinstance(auth, PassTable) and isinstance(auth.table, FileTable)
    assert auth.table.path == str(tmp_path / "t")


def test_load_block_by_name_and_alias(tmp_path):
    path = write(tmp_path, f"state_dir {tmp_path}\n"
                           "table.file first second {\n    file t\n}\n"
                           "table.file {\n    file u\n}\n")
    assert load_block(path, "second").instance_name == "first"
    assert load_block(path, "first", module="table.file").path == str(tmp_path / "t")
    # A block without a name is named after its module.
    assert load_block(path, "table.file").path == str(tmp_path / "u")


def test_load_block_reports_the_blocks_error(tmp_path, broken):
    path = write(tmp_path, "ut.broken_block b { }\n")
    with pytest.raises(ConfigErrors) as e:
        load_block(path, "b")
    assert [str(x) for x in e.value.errors] == [f"{path}:1: ut.broken_block was configured"]


def test_load_block_reports_global_and_registration_errors(tmp_path):
    path = write(tmp_path, "debug maybe\ntable.file t {\n    file t\n}\n")
    with pytest.raises(ConfigErrors) as e:
        load_block(path, "t")
    assert str(e.value.errors[0]).startswith(f"{path}:1: debug:")
    path = write(tmp_path, "table.file t {\n    file t\n}\ntable.file t {\n    file u\n}\n"
                           "table.file &x { }\n")
    with pytest.raises(ConfigErrors) as e:
        load_block(path, "t")
    assert [str(x) for x in e.value.errors] == [
        f"{path}:4: config block named t already exists (defined at {path}:1)",
        f"{path}:7: invalid block name '&x'"]


def test_load_block_reads_globals_like_load(tmp_path):
    (tmp_path / "state").mkdir()
    path = write(tmp_path, "state_dir state\ntable.file t {\n    file passwd\n}\n")
    assert load_block(path, "t").path == str(tmp_path / "state" / "passwd")


def test_load_block_unknown_name(tmp_path):
    path = write(tmp_path, "table.file t {\n    file t\n}\n")
    with pytest.raises(ConfigErrors) as e:
        load_block(path, "nope")
    assert str(e.value) == f"{path}: no configuration block named nope (the blocks are: t)"
    path = write(tmp_path, "")
    with pytest.raises(ConfigErrors) as e:
        load_block(path, "nope")
    assert str(e.value) == f"{path}: no configuration block named nope"


def test_load_block_needs_a_name_or_a_module(tmp_path):
    with pytest.raises(ValueError):
        load_block(write(tmp_path, ""))


def test_load_block_missing_file(tmp_path):
    with pytest.raises(ConfigErrors) as e:
        load_block(str(tmp_path / "absent.conf"), "x")
    assert str(e.value).startswith(f"{tmp_path}/absent.conf: cannot read configuration")
