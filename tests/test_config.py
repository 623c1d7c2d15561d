"""Configuration loading and validation (CONFIG.md §1–§12, §14; OPERATIONS.md §2, §11.4).

Every expectation here is taken from the normative spec: exact messages, exact paths.
Where the spec leaves a path open (a missing key, a duplicate), the test accepts the key's
path or its object's path and says so.
"""

import copy
import json
import math
import os
import re

import pytest
import webtest

import sovrium
from conftest import BASIC_CONFIG, TEST_ENV

INVALID_NAME = "Invalid name '{}': use lower-case letters, digits and underscores, starting with a letter"
AUTH = {"strategies": ["emailAndPassword"]}
TASKS = "tables[1]"
NEW = "tables[1].fields[11]"  # path of a field appended to BASIC_CONFIG's tasks table


# --------------------------------------------------------------------------- helpers


def validate(cfg, env=None):
    """validate_config with the test environment; returns (errors, warnings) as given."""
    return sovrium.validate_config(copy.deepcopy(cfg), env={**TEST_ENV, **(env or {})})


def pairs(items):
    return [(e["path"], e["message"]) for e in items]


def has_error(errors, paths, message):
    """True when one error has `message` (str or compiled regex) at one of `paths` (None = any)."""
    if isinstance(paths, str):
        paths = (paths,)
    for e in errors:
        if paths is not None and e["path"] not in paths:
            continue
        if isinstance(message, re.Pattern):
            if message.fullmatch(e["message"]):
                return True
        elif e["message"] == message:
            return True
    return False


def basic():
    return copy.deepcopy(BASIC_CONFIG)


def with_auth(cfg=None):
    cfg = cfg or basic()
    cfg["auth"] = copy.deepcopy(AUTH)
    return cfg


def add(**field):
    """Mutation: append a field to the tasks table (its path is NEW)."""
    def mutate(c):
        c["tables"][1]["fields"].append(field)
    return mutate


def set_field(table, index, **kv):
    def mutate(c):
        c["tables"][table]["fields"][index].update(kv)
    return mutate


def del_field_key(table, index, key):
    def mutate(c):
        del c["tables"][table]["fields"][index][key]
    return mutate


def set_table(table, **kv):
    def mutate(c):
        c["tables"][table].update(kv)
    return mutate


def set_top(**kv):
    def mutate(c):
        c.update(kv)
    return mutate


def del_top(key):
    def mutate(c):
        del c[key]
    return mutate


def both(*mutations):
    def mutate(c):
        for m in mutations:
            m(c)
    return mutate


def view(**kv):
    def mutate(c):
        c["tables"][1]["views"][0].update(kv)
    return mutate


def filter_leaf(**kv):
    def mutate(c):
        c["tables"][1]["views"][0]["filters"]["and"][0].update(kv)
    return mutate


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def missing(obj_path, key):
    """A missing key may be reported at the object or at the key (the spec shows neither)."""
    return (obj_path, f"{obj_path}.{key}" if obj_path else key)


# --------------------------------------------------------------------------- baselines


def test_basic_config_is_valid():
    errors, warnings = validate(basic())
    assert errors == []
    assert warnings == []


def test_basic_config_with_auth_is_valid():
    errors, _ = validate(with_auth())
    assert errors == []


# --------------------------------------------------------------------------- §1.1 formats


YAML_TYPING = """\
name: typing
theme:
  yes_word: yes
  no_word: no
  on_word: on
  off_word: off
  clock: 10:30
  octal_looking: 0755
  underscored: 1_000
  a_date: 2026-03-01
  octal: 0o17
  hexa: 0x1F
  negative: -12
  plus: +5
  decimal: 1.5
  infinity: .inf
  tilde: ~
  null_caps: NULL
  empty:
  true_caps: TRUE
  false_title: False
  quoted_int: "12"
"""


@pytest.mark.parametrize("key, expected", [
    pytest.param("yes_word", "yes", id="yes-stays-string"),
    pytest.param("no_word", "no", id="no-stays-string"),
    pytest.param("on_word", "on", id="on-stays-string"),
    pytest.param("off_word", "off", id="off-stays-string"),
    pytest.param("clock", "10:30", id="sexagesimal-stays-string"),
    pytest.param("octal_looking", 755, id="0755-is-decimal-755"),
    pytest.param("underscored", "1_000", id="underscore-number-stays-string"),
    pytest.param("a_date", "2026-03-01", id="date-stays-string"),
    pytest.param("octal", 15, id="0o-octal"),
    pytest.param("hexa", 31, id="0x-hex"),
    pytest.param("negative", -12, id="negative-int"),
    pytest.param("plus", 5, id="plus-int"),
    pytest.param("decimal", 1.5, id="float"),
    pytest.param("infinity", math.inf, id="inf"),
    pytest.param("tilde", None, id="tilde-null"),
    pytest.param("null_caps", None, id="NULL-null"),
    pytest.param("empty", None, id="empty-null"),
    pytest.param("true_caps", True, id="TRUE-bool"),
    pytest.param("false_title", False, id="False-bool"),
    pytest.param("quoted_int", "12", id="quoted-stays-string"),
])
def test_yaml_12_core_typing(tmp_path, key, expected):
    cfg = sovrium.load_config(str(write(tmp_path / "app.yaml", YAML_TYPING)))
    value = cfg["theme"][key]
    assert value == expected
    assert type(value) is not bool or type(expected) is bool
    if isinstance(expected, str):
        assert isinstance(value, str)
    if isinstance(expected, int) and not isinstance(expected, bool):
        assert isinstance(value, int) and not isinstance(value, bool)


def test_yaml_nan_is_float(tmp_path):
    cfg = sovrium.load_config(str(write(tmp_path / "app.yaml", "name: x\ntheme: {n: .nan}\n")))
    assert isinstance(cfg["theme"]["n"], float) and math.isnan(cfg["theme"]["n"])


def test_yaml_anchors_and_aliases_allowed(tmp_path):
    text = "name: x\ntheme: &base {color: red}\npalette: *base\n"
    cfg = sovrium.load_config(str(write(tmp_path / "app.yaml", text)))
    assert cfg["palette"] == {"color": "red"}


def test_yaml_object_tags_rejected(tmp_path):
    text = "name: x\ntheme: !!python/object/apply:os.system ['true']\n"
    with pytest.raises(sovrium.ConfigError):
        sovrium.load_config(str(write(tmp_path / "app.yaml", text)))


def test_root_must_be_a_mapping(tmp_path):
    with pytest.raises(sovrium.ConfigError):
        sovrium.load_config(str(write(tmp_path / "app.yaml", "- a\n- b\n")))


@pytest.mark.parametrize("filename, text, expected", [
    pytest.param("app.yaml", "name: v-app\nversion: 1.10\n", "1.10", id="yaml-1.10"),
    pytest.param("app.yaml", "name: v-app\nversion: 2\n", "2", id="yaml-int"),
    pytest.param("app.yaml", "name: v-app\nversion: 1.0\n", "1.0", id="yaml-1.0"),
    pytest.param("app.json", '{"name": "v-app", "version": 1.10}', "1.10", id="json-1.10"),
])
def test_version_number_taken_as_written(tmp_path, make_app, capsys, filename, text, expected):
    path = write(tmp_path / filename, text)
    app = sovrium.App(str(path), db_path=str(tmp_path / "v.db"), env=dict(TEST_ENV))
    try:
        assert app.config["version"] == expected
    finally:
        app.close()
    assert sovrium.main(["validate", str(path)]) == 0
    assert "ok: v-app — 0 tables" in capsys.readouterr().err


@pytest.mark.parametrize("filename, text, key", [
    pytest.param("app.yaml", "name: a\nname: b\n", "name", id="yaml-top"),
    pytest.param("app.yaml", "name: a\ntables:\n  - name: t\n    name: u\n    fields: []\n", "name",
                 id="yaml-nested"),
    pytest.param("app.json", '{"name": "a", "name": "b"}', "name", id="json-top"),
    pytest.param("app.json", '{"name": "a", "theme": {"x": 1, "x": 2}}', "x", id="json-nested"),
])
def test_duplicate_keys_are_errors(tmp_path, filename, text, key):
    with pytest.raises(sovrium.ConfigError) as exc:
        sovrium.load_config(str(write(tmp_path / filename, text)))
    assert any(e["message"].endswith(f"Duplicate key '{key}'") for e in exc.value.errors)


def _full_lines(errors):
    return [f"{e['path']}: {e['message']}" if e["path"] else e["message"] for e in errors]


def test_yaml_syntax_error_line_format(tmp_path):
    path = write(tmp_path / "app.yaml", "name: app\nversion: '1'\n\tbad: 1\n")
    with pytest.raises(sovrium.ConfigError) as exc:
        sovrium.load_config(str(path))
    assert any(re.fullmatch(r"app\.yaml:3:1: YAML syntax error: .+", line)
               for line in _full_lines(exc.value.errors)), exc.value.errors


def test_json_syntax_error_line_format(tmp_path):
    path = write(tmp_path / "app.json", '{"name": "app",\n "version": }\n')
    with pytest.raises(sovrium.ConfigError) as exc:
        sovrium.load_config(str(path))
    assert any(re.fullmatch(r"app\.json:2:\d+: JSON syntax error: .+", line)
               for line in _full_lines(exc.value.errors)), exc.value.errors


def test_syntax_error_in_included_file_names_it_relative_to_root(tmp_path):
    write(tmp_path / "app.yaml", "name: app\ntables:\n  - $ref: tables/bad.yaml\n")
    write(tmp_path / "tables" / "bad.yaml", "name: t\nfields: [\n")
    with pytest.raises(sovrium.ConfigError) as exc:
        sovrium.load_config(str(tmp_path / "app.yaml"))
    assert any(re.fullmatch(r"tables/bad\.yaml:\d+:\d+: YAML syntax error: .+", line)
               for line in _full_lines(exc.value.errors)), exc.value.errors


def test_cli_prints_syntax_error_line(tmp_path, capsys):
    path = write(tmp_path / "app.yaml", "name: app\nversion: '1'\n\tbad: 1\n")
    assert sovrium.main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert re.search(r"^error: app\.yaml:3:1: YAML syntax error: .+$", err, re.M), err


# --------------------------------------------------------------------------- §1.2 $ref


TABLE_YAML = "name: projects\nfields:\n  - {name: title, type: single-line-text}\n"


def test_ref_relative_include(tmp_path):
    write(tmp_path / "app.yaml", "name: app\ntables:\n  - $ref: tables/projects.yaml\n")
    write(tmp_path / "tables" / "projects.yaml", TABLE_YAML)
    cfg = sovrium.load_config(str(tmp_path / "app.yaml"))
    assert cfg["tables"] == [{"name": "projects",
                              "fields": [{"name": "title", "type": "single-line-text"}]}]


def test_ref_nested_is_relative_to_including_file(tmp_path):
    write(tmp_path / "app.yaml", "name: app\ntables:\n  - $ref: tables/projects.yaml\n")
    write(tmp_path / "tables" / "projects.yaml", "name: projects\nfields:\n  $ref: fields/p.yaml\n")
    write(tmp_path / "tables" / "fields" / "p.yaml", "- {name: title, type: single-line-text}\n")
    cfg = sovrium.load_config(str(tmp_path / "app.yaml"))
    assert cfg["tables"][0]["fields"] == [{"name": "title", "type": "single-line-text"}]


def test_ref_json_target(tmp_path):
    write(tmp_path / "app.yaml", "name: app\ntables:\n  - $ref: t.json\n")
    write(tmp_path / "t.json", json.dumps({"name": "t", "fields": [{"name": "a", "type": "integer"}]}))
    cfg = sovrium.load_config(str(tmp_path / "app.yaml"))
    assert cfg["tables"][0]["name"] == "t"


def test_ref_list_element_is_not_spliced(tmp_path):
    write(tmp_path / "app.yaml", "name: app\ntheme:\n  - 1\n  - $ref: list.yaml\n  - 4\n")
    write(tmp_path / "list.yaml", "- 2\n- 3\n")
    cfg = sovrium.load_config(str(tmp_path / "app.yaml"))
    assert cfg["theme"] == [1, [2, 3], 4]


def test_ref_scalar_target(tmp_path):
    write(tmp_path / "app.yaml", "name: app\ndescription:\n  $ref: desc.yaml\n")
    write(tmp_path / "desc.yaml", "Hello there\n")
    assert sovrium.load_config(str(tmp_path / "app.yaml"))["description"] == "Hello there"


def _load_errors(path):
    with pytest.raises(sovrium.ConfigError) as exc:
        sovrium.load_config(str(path))
    return exc.value.errors


def test_ref_outside_directory(tmp_path):
    root = tmp_path / "cfg"
    write(tmp_path / "outside.yaml", TABLE_YAML)
    write(root / "app.yaml", "name: app\ntables:\n  - $ref: ../outside.yaml\n")
    errors = _load_errors(root / "app.yaml")
    assert has_error(errors, ("tables[0]", "tables[0].$ref"),
                     "$ref '../outside.yaml' points outside the configuration directory"), errors


def test_ref_symlink_outside_directory(tmp_path):
    root = tmp_path / "cfg"
    write(tmp_path / "outside.yaml", TABLE_YAML)
    write(root / "app.yaml", "name: app\ntables:\n  - $ref: link.yaml\n")
    os.symlink(tmp_path / "outside.yaml", root / "link.yaml")
    errors = _load_errors(root / "app.yaml")
    assert has_error(errors, ("tables[0]", "tables[0].$ref"),
                     "$ref 'link.yaml' points outside the configuration directory"), errors


def test_ref_cycle(tmp_path):
    write(tmp_path / "app.yaml", "name: app\ntables:\n  - $ref: tables/tasks.yaml\n")
    write(tmp_path / "tables" / "tasks.yaml", "$ref: ../app.yaml\n")
    errors = _load_errors(tmp_path / "app.yaml")
    assert has_error(errors, None, "Circular $ref: app.yaml -> tables/tasks.yaml -> app.yaml"), errors


def test_ref_missing_target(tmp_path):
    write(tmp_path / "app.yaml", "name: app\ntables:\n  - $ref: nope.yaml\n")
    errors = _load_errors(tmp_path / "app.yaml")
    assert has_error(errors, ("tables[0]", "tables[0].$ref"),
                     re.compile(r"\$ref 'nope\.yaml' cannot be read: .+")), errors


@pytest.mark.parametrize("ref_text", [
    pytest.param("{$ref: t.yaml, name: extra}", id="extra-keys"),
    pytest.param("{$ref: /etc/passwd}", id="absolute-path"),
    pytest.param("{$ref: 'https://example.com/t.yaml'}", id="url"),
])
def test_ref_forms_rejected(tmp_path, ref_text):
    write(tmp_path / "t.yaml", TABLE_YAML)
    write(tmp_path / "app.yaml", f"name: app\ntables:\n  - {ref_text}\n")
    _load_errors(tmp_path / "app.yaml")


def test_ref_depth_is_limited(tmp_path):
    for i in range(40):
        write(tmp_path / f"d{i}.yaml", f"$ref: d{i + 1}.yaml\n")
    write(tmp_path / "d40.yaml", "x\n")
    write(tmp_path / "app.yaml", "name: app\ndescription: {$ref: d0.yaml}\n")
    _load_errors(tmp_path / "app.yaml")


# --------------------------------------------------------------------------- §1.3 env substitution


def test_env_substitution_in_allowed_places(tmp_path, make_app):
    cfg = basic()
    cfg["name"] = "${APP_NAME}"
    cfg["description"] = "Hello ${WHO}, ${MISSING:-fallback text}; ${EMPTY:-used} cost $${HOME}"
    cfg["settings"] = {"maxBodyBytes": "${MAX_BODY}", "batchLimit": "${BATCH:-50}",
                       "rateLimits": {"enabled": "${RL}"}}
    env = {"APP_NAME": "env-app", "WHO": "world", "EMPTY": "", "MAX_BODY": "2048", "RL": "false",
           "BATCH": ""}
    errors, _ = validate(cfg, env)
    assert errors == []
    app = make_app(cfg, env=env)
    assert app.config["name"] == "env-app"
    assert app.config["description"] == "Hello world, fallback text; used cost ${HOME}"
    assert app.config["settings"]["maxBodyBytes"] == 2048
    assert type(app.config["settings"]["maxBodyBytes"]) is int
    assert app.config["settings"]["batchLimit"] == 50
    assert app.config["settings"]["rateLimits"]["enabled"] is False


def test_env_secret_stays_string(make_app):
    cfg = basic()
    cfg["description"] = "${DESC}"
    cfg["version"] = "${VER}"
    for value in ["123456", "yes", "null", "[a,b]", "true"]:
        errors, _ = validate(cfg, {"DESC": value, "VER": value})
        assert errors == [], value
    app = make_app(cfg, env={"DESC": "123456", "VER": "null"})
    assert app.config["description"] == "123456"
    assert app.config["version"] == "null"


def test_env_substitution_from_file(tmp_path):
    path = write(tmp_path / "app.yaml", "name: file-app\ndescription: ${DESC}\nsettings:\n"
                                        "  maxBodyBytes: ${MAX_BODY}\n")
    raw = sovrium.load_config(str(path))
    assert raw["description"] == "${DESC}"  # load_config returns the unsubstituted document
    app = sovrium.App(str(path), db_path=str(tmp_path / "e.db"),
                      env={**TEST_ENV, "DESC": "from env", "MAX_BODY": "4096"})
    try:
        assert app.config["description"] == "from env"
        assert app.config["settings"]["maxBodyBytes"] == 4096
    finally:
        app.close()


DISALLOWED = "Environment substitution is not allowed here"


@pytest.mark.parametrize("mutate, path", [
    pytest.param(set_field(1, 0, description="${X}"), "tables[1].fields[0].description", id="field-description"),
    pytest.param(set_table(1, description="about ${X}"), "tables[1].description", id="table-description"),
    pytest.param(set_field(1, 0, name="${X}"), "tables[1].fields[0].name", id="field-name"),
    pytest.param(view(name="${X}"), "tables[1].views[0].name", id="view-name"),
    pytest.param(filter_leaf(field="status", operator="equals", value="${X}"),
                 "tables[1].views[0].filters.and[0].value", id="view-filter-value"),
    pytest.param(set_table(1, indexes=[{"name": "${X}", "fields": ["due"]}]),
                 "tables[1].indexes[0].name", id="index-name"),
    pytest.param(set_field(1, 7, formula="{estimate} & '${X}'"), "tables[1].fields[7].formula",
                 id="formula"),
])
def test_env_substitution_not_allowed(mutate, path):
    cfg = basic()
    mutate(cfg)
    errors, _ = validate(cfg, {"X": "value"})
    assert has_error(errors, path, DISALLOWED), errors


def test_env_substitution_not_allowed_in_permissions():
    cfg = with_auth()
    cfg["tables"][1]["permissions"] = {"read": "${X}"}
    errors, _ = validate(cfg, {"X": "all"})
    assert has_error(errors, "tables[1].permissions.read", DISALLOWED), errors


def test_escaped_placeholder_allowed_in_tables(make_app):
    cfg = basic()
    cfg["tables"][1]["fields"][0]["description"] = "costs $${PRICE}"
    errors, _ = validate(cfg)
    assert errors == []
    client = webtest.TestApp(make_app(cfg).wsgi)
    title = client.get("/api/tables/tasks").json["fields"][0]
    assert title["description"] == "costs ${PRICE}"


def test_placeholders_in_ignored_keys_are_not_read():
    cfg = basic()
    cfg["theme"] = {"color": "${NOT_SET_ANYWHERE}"}
    errors, warnings = validate(cfg)
    assert errors == []
    assert pairs(warnings) == [("", "ignored unsupported keys: theme")]


@pytest.mark.parametrize("mutate, env, path, message", [
    pytest.param(set_top(description="${NOPE}"), {}, "description",
                 "Environment variable 'NOPE' is not set", id="unset-top"),
    pytest.param(set_top(settings={"maxBodyBytes": "${NOPE}"}), {}, "settings.maxBodyBytes",
                 "Environment variable 'NOPE' is not set", id="unset-settings"),
    pytest.param(set_top(settings={"maxBodyBytes": "${MB}"}), {"MB": "abc"}, "settings.maxBodyBytes",
                 "Expected an integer", id="not-a-number"),
    pytest.param(set_top(settings={"maxBodyBytes": "${MB}"}), {"MB": "2048.5"}, "settings.maxBodyBytes",
                 "Expected an integer", id="not-an-integer"),
    pytest.param(set_top(settings={"maxBodyBytes": "${MB}0"}), {"MB": "2048"}, "settings.maxBodyBytes",
                 "Expected an integer", id="not-exactly-one-placeholder"),
    pytest.param(set_top(settings={"rateLimits": {"enabled": "${RL}"}}), {"RL": "yes"},
                 "settings.rateLimits.enabled", "Expected a boolean", id="not-a-boolean"),
    pytest.param(set_top(settings={"maxBodyBytes": "${MB}"}), {"MB": "10"}, "settings.maxBodyBytes",
                 "Must be between 1024 and 1073741824", id="substituted-out-of-range"),
])
def test_env_substitution_errors(mutate, env, path, message):
    cfg = basic()
    mutate(cfg)
    errors, _ = validate(cfg, env)
    assert has_error(errors, path, message), errors


# --------------------------------------------------------------------------- §2 top-level and ignored keys


def test_unknown_top_level_key():
    cfg = basic()
    cfg["tabels"] = []
    errors, _ = validate(cfg)
    assert pairs(errors) == [("tabels", "Unknown top-level key 'tabels'")]


def test_ignored_keys_single_warning_in_document_order(tmp_path, capsys):
    text = """\
name: ignore-app
pages: []
tables:
  - name: first
    webhooks: [x]
    fields:
      - {name: a, type: integer}
  - name: second
    fields:
      - {name: b, type: integer, searchWeight: 3}
    views:
      - {id: v, name: V, query: x, materialized: true}
theme: {dark: true}
"""
    path = write(tmp_path / "app.yaml", text)
    expected = ("ignored unsupported keys: pages, tables[0].webhooks, tables[1].fields[0].searchWeight, "
                "tables[1].views[0].query, tables[1].views[0].materialized, theme")
    errors, warnings = sovrium.validate_config(sovrium.load_config(str(path)), env=dict(TEST_ENV))
    assert errors == []
    assert pairs(warnings) == [("", expected)]
    assert sovrium.main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {expected}\n" in err
    assert "ok: ignore-app — 2 tables" in err


def test_every_accepted_and_ignored_top_level_key():
    keys = ["badge", "theme", "languages", "components", "pages", "forms", "palette", "llms",
            "scripts", "systemSources", "connections", "env", "actions", "automations", "agents",
            "buckets"]
    cfg = {"name": "x", **{k: {"anything": [1, 2]} for k in keys}}
    errors, warnings = validate(cfg)
    assert errors == []
    assert pairs(warnings) == [("", "ignored unsupported keys: " + ", ".join(keys))]


@pytest.mark.parametrize("mutate, path, message", [
    pytest.param(set_field(1, 10, uniqe=True), "tables[1].fields[10].uniqe",
                 "Unknown key 'uniqe' (did you mean 'unique'?)", id="uniqe"),
    pytest.param(set_field(1, 0, requried=True), "tables[1].fields[0].requried",
                 "Unknown key 'requried' (did you mean 'required'?)", id="requried"),
    pytest.param(set_field(1, 0, maxLenght=80), "tables[1].fields[0].maxLenght",
                 "Unknown key 'maxLenght' (did you mean 'maxLength'?)", id="maxLenght"),
    pytest.param(set_field(1, 0, Required=True), "tables[1].fields[0].Required",
                 "Unknown key 'Required' (did you mean 'required'?)", id="case-sensitive"),
    pytest.param(add(name="qty", type="integer", mix=3), f"{NEW}.mix",
                 "Unknown key 'mix' (did you mean 'max'?)", id="tie-alphabetical-first"),
    pytest.param(set_table(1, veiws=[]), "tables[1].veiws",
                 "Unknown key 'veiws' (did you mean 'views'?)", id="table-veiws"),
    pytest.param(view(isDefualt=True), "tables[1].views[0].isDefualt",
                 "Unknown key 'isDefualt' (did you mean 'isDefault'?)", id="view-isDefualt"),
    pytest.param(set_top(settings={"batchLimt": 5}), "settings.batchLimt",
                 "Unknown key 'batchLimt' (did you mean 'batchLimit'?)", id="settings-batchLimt"),
])
def test_typo_detection(mutate, path, message):
    cfg = basic()
    mutate(cfg)
    errors, _ = validate(cfg)
    assert has_error(errors, path, message), errors


# --------------------------------------------------------------------------- §14 messages (no auth)


def _str(n):
    return "a" * n


ERROR_CASES = [
    # top level
    pytest.param(del_top("name"), missing("", "name"), "Missing required key 'name'", id="name-missing"),
    pytest.param(set_top(name=5), "name", "Expected a string", id="name-not-string"),
    pytest.param(set_top(name=""), "name", "Must not be empty", id="name-empty"),
    pytest.param(set_top(name=_str(215)), "name", "Must be at most 214 characters", id="name-too-long"),
    pytest.param(set_top(version=_str(51)), "version", "Must be at most 50 characters", id="version-too-long"),
    pytest.param(set_top(description=_str(2001)), "description", "Must be at most 2000 characters",
                 id="description-too-long"),
    pytest.param(set_top(tables={}), "tables", "Expected a list", id="tables-not-list"),
    pytest.param(set_top(settings=[]), "settings", "Expected a mapping", id="settings-not-mapping"),
    # tables
    pytest.param(set_table(1, name="Tasks"), "tables[1].name", INVALID_NAME.format("Tasks"), id="table-name-caps"),
    pytest.param(set_table(1, name="1tasks"), "tables[1].name", INVALID_NAME.format("1tasks"), id="table-name-digit"),
    pytest.param(set_table(1, name="t" * 64), "tables[1].name", INVALID_NAME.format("t" * 64), id="table-name-64"),
    pytest.param(set_table(1, name=3), "tables[1].name", "Expected a string", id="table-name-not-string"),
    pytest.param(set_table(1, name="projects"), ("tables[1].name", "tables[1]"),
                 "Duplicate table name 'projects'", id="table-name-duplicate"),
    pytest.param(set_table(1, id=1), ("tables[1].id", "tables[1]"), "Duplicate table id 1", id="table-id-duplicate"),
    pytest.param(set_table(1, id="two"), "tables[1].id", "Expected an integer", id="table-id-string"),
    pytest.param(set_table(1, id=True), "tables[1].id", "Expected an integer", id="table-id-bool"),
    pytest.param(set_table(1, id=2.5), "tables[1].id", "Expected an integer", id="table-id-float"),
    pytest.param(set_table(1, fields=[]), "tables[1].fields", "Must not be empty", id="fields-empty"),
    pytest.param(set_table(1, fields={}), "tables[1].fields", "Expected a list", id="fields-not-list"),
    pytest.param(set_table(1, description=_str(1001)), "tables[1].description",
                 "Must be at most 1000 characters", id="table-description-too-long"),
    pytest.param(set_table(1, primaryField="nope"), "tables[1].primaryField", "Unknown field 'nope'",
                 id="primary-field-unknown"),
    # fields: common properties
    pytest.param(set_field(1, 0, name="Title"), "tables[1].fields[0].name", INVALID_NAME.format("Title"),
                 id="field-name-caps"),
    pytest.param(set_field(1, 0, name="my-title"), "tables[1].fields[0].name", INVALID_NAME.format("my-title"),
                 id="field-name-dash"),
    pytest.param(set_field(1, 0, name="id"), "tables[1].fields[0].name", "Field name 'id' is reserved",
                 id="field-name-id"),
    pytest.param(set_field(1, 0, name="fields"), "tables[1].fields[0].name", "Field name 'fields' is reserved",
                 id="field-name-fields"),
    pytest.param(add(name="title", type="integer"), (f"{NEW}.name", NEW), "Duplicate field name 'title'",
                 id="field-name-duplicate"),
    pytest.param(add(id=1, name="other", type="integer"), (f"{NEW}.id", NEW), "Duplicate field id 1",
                 id="field-id-duplicate"),
    pytest.param(add(id="x", name="other", type="integer"), f"{NEW}.id", "Expected an integer", id="field-id-string"),
    pytest.param(add(name="other"), missing(NEW, "type"), "Missing required key 'type'", id="field-type-missing"),
    pytest.param(add(type="integer"), missing(NEW, "name"), "Missing required key 'name'", id="field-name-missing"),
    pytest.param(add(name="other", type="integer", description=5), f"{NEW}.description", "Expected a string",
                 id="field-description-not-string"),
    pytest.param(add(name="other", type="integer", description=_str(1001)), f"{NEW}.description",
                 "Must be at most 1000 characters", id="field-description-too-long"),
    pytest.param(add(name="other", type="integer", required="yes"), f"{NEW}.required", "Expected a boolean",
                 id="required-not-boolean"),
    pytest.param(add(name="other", type="integer", indexed=1), f"{NEW}.indexed", "Expected a boolean",
                 id="indexed-not-boolean"),
    # types
    pytest.param(set_field(1, 2, type="numbr"), "tables[1].fields[2].type", "Unknown field type 'numbr'",
                 id="unknown-type"),
    *[pytest.param(add(name="smart", type=t), f"{NEW}.type", f"AI field types are not supported: '{t}'",
                   id=f"ai-type-{t}")
      for t in ["ai-categorize", "ai-extract", "ai-generate", "ai-sentiment", "ai-summary", "ai-tag",
                "ai-translate"]],
    *[pytest.param(add(name="who", type=t), (f"{NEW}.type", NEW), f"Field type '{t}' requires auth",
                   id=f"{t}-requires-auth")
      for t in ["user", "created-by", "updated-by", "deleted-by"]],
    *[pytest.param(add(name="other", type=t, unique=True, **opts), f"{NEW}.unique",
                   f"unique is not supported for field type '{t}'", id=f"unique-{t}")
      for t, opts in [("long-text", {}), ("rich-text", {}), ("code", {"language": "python"}),
                      ("rating", {}), ("checkbox", {}), ("multi-select", {"options": ["a"]}),
                      ("status", {"options": ["a"]}), ("time", {}), ("json", {}), ("autonumber", {}),
                      ("formula", {"formula": "1"}), ("color", {}), ("created-at", {})]],
    *[pytest.param(add(name="other", type=t, required=True, **opts), f"{NEW}.required",
                   f"required is not supported for field type '{t}'", id=f"required-{t}")
      for t, opts in [("checkbox", {}), ("formula", {"formula": "1"}), ("autonumber", {}),
                      ("created-at", {}), ("updated-at", {}),
                      ("count", {"relationshipField": "project"}),
                      ("button", {"label": "Go", "action": {"type": "url", "url": "https://example.com"}})]],
    *[pytest.param(add(name="other", type=t, default=d, **opts), f"{NEW}.default",
                   f"default is not supported for field type '{t}'", id=f"default-{t}")
      for t, d, opts in [("formula", 1, {"formula": "1"}), ("autonumber", 1, {}),
                         ("created-at", "now", {}),
                         ("relationship", 1, {"relatedTable": "projects"}),
                         ("single-attachment", {"url": "https://example.com/a.pdf", "filename": "a.pdf"}, {}),
                         ("multiple-attachments", [{"url": "https://example.com/a.pdf", "filename": "a.pdf"}], {}),
                         ("lookup", 1, {"relationshipField": "project", "relatedField": "name"}),
                         ("button", "x", {"label": "Go", "action": {"type": "url", "url": "https://example.com"}})]],
    pytest.param(add(name="qty", type="integer", default="x"), f"{NEW}.default",
                 "Invalid default: Field 'qty' must be an integer", id="default-integer-invalid"),
    pytest.param(add(name="qty", type="integer", min=0, default=-1), f"{NEW}.default",
                 "Invalid default: Field 'qty' must be at least 0", id="default-below-min"),
    pytest.param(set_field(1, 1, default="nope"), "tables[1].fields[1].default",
                 "Invalid default: Value 'nope' is not a valid option for field 'status'", id="default-not-option"),
    pytest.param(set_field(1, 3, default="tomorrow"), "tables[1].fields[3].default",
                 "Invalid default: Field 'due' must be a date in YYYY-MM-DD format", id="default-date-invalid"),
    pytest.param(set_field(1, 4, default="yes"), "tables[1].fields[4].default",
                 re.compile(r"Invalid default: Field 'done' must be a boolean|Expected a boolean"),
                 id="default-checkbox-invalid"),
    pytest.param(add(name="short", type="single-line-text", maxLength=5, default="abcdef"), f"{NEW}.default",
                 "Invalid default: Field 'short' must be at most 5 characters", id="default-too-long"),
    pytest.param(add(name="hue", type="color", default="red"), f"{NEW}.default",
                 "Invalid default: Field 'hue' must be a color in #RRGGBB format", id="default-color"),
    # type options
    pytest.param(add(name="s", type="single-line-text", maxLength=0), f"{NEW}.maxLength",
                 "Must be between 1 and 10000", id="maxlength-zero"),
    pytest.param(add(name="s", type="single-line-text", maxLength=10001), f"{NEW}.maxLength",
                 "Must be between 1 and 10000", id="maxlength-too-big"),
    pytest.param(add(name="s", type="long-text", maxLength=1000001), f"{NEW}.maxLength",
                 "Must be between 1 and 1000000", id="long-text-maxlength"),
    pytest.param(add(name="s", type="single-line-text", maxLength="80"), f"{NEW}.maxLength",
                 "Expected an integer", id="maxlength-string"),
    pytest.param(add(name="c", type="currency"), missing(NEW, "currency"), "Missing required key 'currency'",
                 id="currency-missing"),
    pytest.param(add(name="c", type="code"), missing(NEW, "language"), "Missing required key 'language'",
                 id="code-language-missing"),
    pytest.param(add(name="c", type="code", language="python", tabSize=9), f"{NEW}.tabSize",
                 "Must be between 1 and 8", id="code-tabsize"),
    pytest.param(add(name="d", type="decimal", precision=11), f"{NEW}.precision", "Must be between 0 and 10",
                 id="decimal-precision"),
    pytest.param(add(name="d", type="decimal", min="1"), f"{NEW}.min", "Expected a number", id="min-string"),
    pytest.param(add(name="r", type="rating", max=11), f"{NEW}.max", "Must be between 1 and 10", id="rating-max"),
    pytest.param(add(name="n", type="autonumber", digits=11), f"{NEW}.digits", "Must be between 1 and 10",
                 id="autonumber-digits"),
    pytest.param(add(name="s", type="single-select"), missing(NEW, "options"), "Missing required key 'options'",
                 id="options-missing"),
    pytest.param(add(name="s", type="single-select", options=[]), f"{NEW}.options", "Must not be empty",
                 id="options-empty"),
    pytest.param(add(name="s", type="single-select", options="a,b"), f"{NEW}.options", "Expected a list",
                 id="options-not-list"),
    pytest.param(add(name="s", type="single-select", options=["a", "b", "a"]),
                 (f"{NEW}.options[2]", f"{NEW}.options[2].value", f"{NEW}.options"),
                 "Duplicate option value 'a'", id="option-duplicate"),
    pytest.param(add(name="s", type="single-select", options=["a", {"value": "a", "label": "A"}]),
                 (f"{NEW}.options[1]", f"{NEW}.options[1].value", f"{NEW}.options"),
                 "Duplicate option value 'a'", id="option-duplicate-object"),
    pytest.param(add(name="s", type="single-select", options=["a", ""]),
                 (f"{NEW}.options[1]", f"{NEW}.options[1].value"), "Must not be empty", id="option-empty"),
    pytest.param(add(name="s", type="single-select", options=["a", _str(256)]),
                 (f"{NEW}.options[1]", f"{NEW}.options[1].value"), "Must be at most 255 characters",
                 id="option-too-long"),
    pytest.param(add(name="s", type="multi-select", options=["a", "b", "c"], maxSelections=4),
                 f"{NEW}.maxSelections", "Must be between 1 and 3", id="max-selections"),
    pytest.param(add(name="t", type="datetime", timeZone="Mars/Olympus"), f"{NEW}.timeZone",
                 "Unknown time zone 'Mars/Olympus'", id="unknown-time-zone"),
    pytest.param(add(name="b", type="barcode", format="QR"), f"{NEW}.format",
                 "Expected one of: CODE-128, CODE-39, EAN-13, EAN-8, UPC-A, UPC-E", id="barcode-format"),
    pytest.param(add(name="a", type="array", itemType="float"), f"{NEW}.itemType",
                 "Expected one of: text, number, integer, boolean", id="array-item-type"),
    pytest.param(add(name="d", type="duration", displayFormat="hh"), f"{NEW}.displayFormat",
                 "Expected one of: h:mm, h:mm:ss, decimal", id="duration-display-format"),
    pytest.param(add(name="c", type="currency", currency="EUR", symbolPosition="left"),
                 f"{NEW}.symbolPosition", "Expected one of: before, after", id="currency-symbol-position"),
    pytest.param(add(name="f", type="formula", formula="1", resultType="string"), f"{NEW}.resultType",
                 "Expected one of: text, number, integer, boolean, date, datetime", id="formula-result-type"),
    pytest.param(add(name="b", type="button", action={"type": "url", "url": "https://example.com"}),
                 missing(NEW, "label"), "Missing required key 'label'", id="button-label-missing"),
    # relationships §6.1
    pytest.param(add(name="link", type="relationship"), missing(NEW, "relatedTable"),
                 "Missing required key 'relatedTable'", id="relationship-related-table-missing"),
    pytest.param(add(name="link", type="relationship", relatedTable="nope"), f"{NEW}.relatedTable",
                 "Unknown table 'nope'", id="relationship-unknown-table"),
    pytest.param(add(name="link", type="relationship", relatedTable="projects", relationType="one-to-one"),
                 f"{NEW}.relationType", "Expected one of: many-to-one, many-to-many, one-to-many",
                 id="relationship-type"),
    pytest.param(add(name="link", type="relationship", relatedTable="projects", onDelete="nullify"),
                 f"{NEW}.onDelete", "Expected one of: set-null, restrict, cascade", id="on-delete-value"),
    pytest.param(set_field(0, 2, relatedField="title"), "tables[0].fields[2].relatedField",
                 "Field 'title' of table 'tasks' is not a relationship to 'projects'",
                 id="related-field-not-relationship"),
    pytest.param(add(name="back", type="relationship", relatedTable="projects", relatedField="name"),
                 f"{NEW}.relatedField", "Field 'name' of table 'projects' is not a relationship to 'tasks'",
                 id="inverse-of-text-field"),
    pytest.param(del_field_key(0, 2, "relatedField"),
                 ("tables[0].fields[2]", "tables[0].fields[2].relatedField", "tables[0].fields[2].relationType"),
                 "one-to-many requires relatedField", id="one-to-many-without-related-field"),
    pytest.param(set_field(0, 2, relationType="many-to-many"),
                 ("tables[0].fields[2]", "tables[0].fields[2].relationType", "tables[0].fields[2].relatedField"),
                 "relationType does not match the related field", id="relation-type-mismatch"),
    pytest.param(set_field(0, 2, onDelete="cascade"), "tables[0].fields[2].onDelete",
                 "onDelete is only allowed on owning relationship fields", id="on-delete-on-inverse"),
    pytest.param(add(name="n", type="count", relationshipField="project"), f"{NEW}.relationshipField",
                 "Field 'project' is not a to-many relationship", id="count-many-to-one"),
    pytest.param(add(name="n", type="count", relationshipField="nope"), f"{NEW}.relationshipField",
                 "Unknown field 'nope'", id="count-unknown-field"),
    pytest.param(add(name="n", type="count"), missing(NEW, "relationshipField"),
                 "Missing required key 'relationshipField'", id="count-missing-relationship"),
    pytest.param(add(name="l", type="lookup", relationshipField="project", relatedField="zzz"),
                 f"{NEW}.relatedField", "Unknown field 'zzz'", id="lookup-unknown-related-field"),
    pytest.param(add(name="l", type="lookup", relationshipField="nope", relatedField="name"),
                 f"{NEW}.relationshipField", "Unknown field 'nope'", id="lookup-unknown-relationship"),
    pytest.param(add(name="r", type="rollup", relationshipField="project", relatedField="budget"),
                 missing(NEW, "aggregation"), "Missing required key 'aggregation'", id="rollup-aggregation-missing"),
    pytest.param(add(name="r", type="rollup", relationshipField="project", relatedField="budget",
                     aggregation="median"), f"{NEW}.aggregation", re.compile(r"Expected one of: sum, avg.*countAll.*"),
                 id="rollup-aggregation-unknown"),
    # formulas §5.7
    pytest.param(add(name="f", type="formula"), missing(NEW, "formula"), "Missing required key 'formula'",
                 id="formula-missing"),
    pytest.param(add(name="f", type="formula", formula="1 + " + "1" * 1997), f"{NEW}.formula",
                 "Must be at most 2000 characters", id="formula-too-long"),
    pytest.param(add(name="f", type="formula", formula="1 + * 2"), f"{NEW}.formula",
                 "Formula syntax error at position 4: unexpected token", id="formula-unexpected-token"),
    pytest.param(add(name="f", type="formula", formula="{estimate} 2"), f"{NEW}.formula",
                 "Formula syntax error at position 11: unexpected token", id="formula-two-operands"),
    pytest.param(add(name="f", type="formula", formula="1 + @"), f"{NEW}.formula",
                 "Formula syntax error at position 4: unexpected token", id="formula-bad-character"),
    pytest.param(add(name="f", type="formula", formula="({estimate} + 1"), f"{NEW}.formula",
                 "Formula syntax error at position 15: unexpected token", id="formula-unclosed-paren-eof"),
    pytest.param(add(name="f", type="formula", formula="'abc"), f"{NEW}.formula",
                 "Formula syntax error at position 0: unterminated string", id="formula-unterminated-string"),
    pytest.param(add(name="f", type="formula", formula="1 & 'abc"), f"{NEW}.formula",
                 "Formula syntax error at position 4: unterminated string", id="formula-unterminated-string-later"),
    pytest.param(add(name="f", type="formula", formula="'a\\qb'"), f"{NEW}.formula",
                 "Formula syntax error at position 2: unexpected token", id="formula-bad-escape"),
    pytest.param(add(name="f", type="formula", formula="FOO(1)"), f"{NEW}.formula",
                 "Unknown function 'FOO'", id="formula-unknown-function"),
    pytest.param(add(name="f", type="formula", formula="LEFT('a')"), f"{NEW}.formula",
                 "Function 'LEFT' expects 2 arguments", id="formula-arity-left"),
    pytest.param(add(name="f", type="formula", formula="MID('abc', 1)"), f"{NEW}.formula",
                 "Function 'MID' expects 3 arguments", id="formula-arity-mid"),
    pytest.param(add(name="f", type="formula", formula="{nope} + 1"), f"{NEW}.formula",
                 "Unknown field 'nope'", id="formula-unknown-field"),
    pytest.param(add(name="f", type="formula", formula="LEN({tags})"), f"{NEW}.formula",
                 "Field 'tags' cannot be used in a formula", id="formula-multi-select"),
    pytest.param(add(name="gone", type="deleted-at"), None, None, id="deleted-at-field-is-valid"),
    pytest.param(both(add(name="gone", type="deleted-at"),
                      add(name="f", type="formula", formula="{gone} = BLANK()")),
                 "tables[1].fields[12].formula", "Field 'gone' cannot be used in a formula",
                 id="formula-deleted-at"),
    pytest.param(add(name="f", type="formula", formula="{title} + 1"), f"{NEW}.formula",
                 "Type mismatch: '+' expects number, got text", id="formula-plus-text"),
    pytest.param(add(name="f", type="formula", formula="{done} * 2"), f"{NEW}.formula",
                 "Type mismatch: '*' expects number, got boolean", id="formula-times-boolean"),
    pytest.param(add(name="f", type="formula", formula="IF({estimate}, 1, 2)"), f"{NEW}.formula",
                 "Type mismatch: 'IF' expects boolean, got number", id="formula-if-number"),
    pytest.param(add(name="f", type="formula", formula="NOT({title})"), f"{NEW}.formula",
                 "Type mismatch: 'NOT' expects boolean, got text", id="formula-not-text"),
    pytest.param(add(name="f", type="formula", formula="DATE_ADD({due}, 1, 'hours')"), f"{NEW}.formula",
                 "Expected one of: days, weeks", id="formula-date-unit"),
    pytest.param(add(name="f", type="formula", formula="DATETIME_DIFF({createdAt}, {updatedAt}, 'years')"), f"{NEW}.formula",
                 "Expected one of: seconds, minutes, hours, days, weeks", id="formula-diff-unit"),
    pytest.param(add(name="f", type="formula",
                     formula="IF({id} > 0, {createdAt}, {updatedAt}) & upper({title}) & true"),
                 None, None, id="formula-pseudo-fields-case-insensitive-valid"),
    pytest.param(add(name="f", type="formula", formula="{f} + 1"), (NEW, f"{NEW}.formula"),
                 "Circular computed field reference: tasks.f -> tasks.f", id="formula-self-reference"),
    # views §8
    pytest.param(lambda c: c["tables"][1]["views"].append({"id": "open", "name": "Again"}),
                 ("tables[1].views[1].id", "tables[1].views[1]"), "Duplicate view id 'open'", id="view-id-duplicate"),
    pytest.param(lambda c: c["tables"][1]["views"].append({"id": 2, "name": "Second", "isDefault": True}),
                 ("tables[1].views[1].isDefault", "tables[1].views[1]"), "Only one view can be the default",
                 id="two-default-views"),
    pytest.param(lambda c: c["tables"][1]["views"].append({"id": 2}), missing("tables[1].views[1]", "name"),
                 "Missing required key 'name'", id="view-name-missing"),
    pytest.param(view(name=_str(101)), "tables[1].views[0].name", "Must be at most 100 characters",
                 id="view-name-too-long"),
    pytest.param(filter_leaf(field="priority"), "tables[1].views[0].filters.and[0].field",
                 "Unknown field 'priority'", id="view-filter-unknown-field"),
    pytest.param(filter_leaf(operator="zzz"), "tables[1].views[0].filters.and[0].operator",
                 "Unknown operator 'zzz'", id="view-filter-unknown-operator"),
    pytest.param(filter_leaf(operator="contains", value="x"), "tables[1].views[0].filters.and[0].operator",
                 "Operator 'contains' is not supported for field 'done'", id="view-filter-operator-type"),
    pytest.param(filter_leaf(field="estimate", operator="isTrue"), "tables[1].views[0].filters.and[0].operator",
                 "Operator 'isTrue' is not supported for field 'estimate'", id="view-filter-istrue-number"),
    pytest.param(view(sorts=[{"field": "priority"}]), "tables[1].views[0].sorts[0].field",
                 "Unknown field 'priority'", id="view-sort-unknown-field"),
    pytest.param(view(sorts=[{"field": "tags"}]), "tables[1].views[0].sorts[0].field",
                 "Field 'tags' cannot be sorted", id="view-sort-multi-select"),
    pytest.param(view(sorts=[{"field": "due", "direction": "up"}]), "tables[1].views[0].sorts[0].direction",
                 "Expected one of: asc, desc", id="view-sort-direction"),
    pytest.param(view(groupBy="tags"), ("tables[1].views[0].groupBy", "tables[1].views[0].groupBy.field"),
                 "Field 'tags' cannot be grouped", id="view-group-multi-select"),
    pytest.param(view(groupBy={"field": "tags"}), ("tables[1].views[0].groupBy.field", "tables[1].views[0].groupBy"),
                 "Field 'tags' cannot be grouped", id="view-group-object-multi-select"),
    pytest.param(view(groupBy="nope"), ("tables[1].views[0].groupBy", "tables[1].views[0].groupBy.field"),
                 "Unknown field 'nope'", id="view-group-unknown"),
    pytest.param(view(fields=["title", "zzz"]), "tables[1].views[0].fields[1]", "Unknown field 'zzz'",
                 id="view-fields-unknown"),
    # indexes §9
    pytest.param(set_table(1, indexes=[{"fields": ["nope"]}]), "tables[1].indexes[0].fields[0]",
                 "Unknown field 'nope'", id="index-unknown-field"),
    pytest.param(set_table(1, indexes=[{"name": "by_due", "fields": []}]), "tables[1].indexes[0].fields",
                 "Must not be empty", id="index-no-fields"),
    pytest.param(set_table(1, indexes=[{"name": "By Due", "fields": ["due"]}]), "tables[1].indexes[0].name",
                 INVALID_NAME.format("By Due"), id="index-bad-name"),
    pytest.param(set_table(1, indexes=[{"name": "by_due", "fields": ["due"]},
                                       {"name": "by_due", "fields": ["due", "status"]}]),
                 ("tables[1].indexes[1].name", "tables[1].indexes[1]"), "Duplicate index name 'by_due'",
                 id="index-duplicate-name"),
    pytest.param(set_table(1, indexes=[{"fields": ["due"]}, {"fields": ["due"]}]), None, None,
                 id="index-default-names-do-not-collide"),
    pytest.param(set_table(1, unique=[{"fields": ["title", "nope"]}]), "tables[1].unique[0].fields[1]",
                 "Unknown field 'nope'", id="table-unique-unknown-field"),
    # settings §12, analytics §11
    pytest.param(set_top(settings={"maxPageSize": 10001}), "settings.maxPageSize", "Must be between 1 and 10000",
                 id="max-page-size"),
    pytest.param(set_top(settings={"defaultPageSize": 0}), "settings.defaultPageSize", "Must be between 1 and 1000",
                 id="default-page-size-zero"),
    pytest.param(set_top(settings={"maxPageSize": 50, "defaultPageSize": 100}), "settings.defaultPageSize",
                 "Must be between 1 and 50", id="default-page-size-above-max"),
    pytest.param(set_top(settings={"batchLimit": 0}), "settings.batchLimit", "Must be between 1 and 10000",
                 id="batch-limit"),
    pytest.param(set_top(settings={"maxBodyBytes": 1023}), "settings.maxBodyBytes",
                 "Must be between 1024 and 1073741824", id="max-body-bytes"),
    pytest.param(set_top(settings={"queryTimeoutMs": 99}), "settings.queryTimeoutMs",
                 "Must be between 100 and 600000", id="query-timeout"),
    pytest.param(set_top(settings={"batchLimit": "10"}), "settings.batchLimit", "Expected an integer",
                 id="batch-limit-string"),
    pytest.param(set_top(settings={"rateLimits": {"foo": {"limit": 1, "window": 1}}}), "settings.rateLimits.foo",
                 "Unknown rate limit rule 'foo'", id="rate-limit-unknown-rule"),
    pytest.param(set_top(settings={"rateLimits": {"signIn": {"limit": 5, "window": 0}}}),
                 "settings.rateLimits.signIn.window", "Must be between 1 and 86400", id="rate-limit-window"),
    pytest.param(set_top(settings={"rateLimits": {"api": {"limit": 1000001, "window": 60}}}),
                 "settings.rateLimits.api.limit", "Must be between 0 and 1000000", id="rate-limit-limit"),
    pytest.param(set_top(analytics={"retentionDays": 0}), "analytics.retentionDays", "Must be between 1 and 3650",
                 id="analytics-retention"),
    pytest.param(set_top(analytics={"sessionTimeoutMinutes": 241}), "analytics.sessionTimeoutMinutes",
                 "Must be between 1 and 240", id="analytics-session-timeout"),
    pytest.param(set_top(analytics={"enabled": "yes"}), "analytics.enabled", "Expected a boolean",
                 id="analytics-enabled-string"),
]


@pytest.mark.parametrize("mutate, path, message", ERROR_CASES)
def test_validation_error(mutate, path, message):
    cfg = basic()
    mutate(cfg)
    errors, _ = validate(cfg)
    if message is None:
        assert errors == []
    else:
        assert has_error(errors, path, message), errors


def test_all_errors_are_collected():
    cfg = basic()
    cfg["tables"][1]["fields"][2]["type"] = "numbr"
    cfg["tables"][0]["name"] = "Projects"
    cfg["settings"] = {"batchLimit": 0}
    errors, _ = validate(cfg)
    assert has_error(errors, "tables[1].fields[2].type", "Unknown field type 'numbr'")
    assert has_error(errors, "tables[0].name", INVALID_NAME.format("Projects"))
    assert has_error(errors, "settings.batchLimit", "Must be between 1 and 10000")


def test_table_name_of_63_characters_is_valid():
    cfg = basic()
    cfg["tables"].append({"name": "t" * 63, "fields": [{"name": "f" * 63, "type": "integer"}]})
    assert validate(cfg)[0] == []


def test_circular_computed_fields_within_table():
    cfg = basic()
    add(name="a", type="formula", formula="{b} + 1")(cfg)
    add(name="b", type="formula", formula="{a} + 1")(cfg)
    errors, _ = validate(cfg)
    messages = {e["message"] for e in errors}
    assert messages & {"Circular computed field reference: tasks.a -> tasks.b -> tasks.a",
                       "Circular computed field reference: tasks.b -> tasks.a -> tasks.b"}, errors


def test_circular_computed_fields_across_tables():
    cfg = basic()
    # tasks.remaining -> tasks.proj_total -> projects.open_estimate -> tasks.remaining
    add(name="proj_total", type="lookup", relationshipField="project", relatedField="open_estimate")(cfg)
    cfg["tables"][1]["fields"][7]["formula"] = "IF({done}, 0, {proj_total})"
    errors, _ = validate(cfg)
    cycles = [e["message"] for e in errors if e["message"].startswith("Circular computed field reference: ")]
    assert cycles, errors
    chain = cycles[0][len("Circular computed field reference: "):].split(" -> ")
    assert chain[0] == chain[-1]
    assert set(chain) == {"tasks.remaining", "tasks.proj_total", "projects.open_estimate"}


def test_computed_nesting_limit():
    cfg = basic()
    add(name="f1", type="formula", formula="{estimate} + 1")(cfg)
    for i in range(2, 7):
        add(name=f"f{i}", type="formula", formula=f"{{f{i - 1}}} + 1")(cfg)
    errors, _ = validate(cfg)
    # f1 is fields[11], so f6 (depth 6) is fields[16]; f5 (depth 5) is allowed
    assert has_error(errors, ("tables[1].fields[16]", "tables[1].fields[16].formula"),
                     "Computed field 'f6' is nested more than 5 levels deep"), errors
    assert not any("'f5'" in e["message"] for e in errors), errors


# --------------------------------------------------------------------------- §7 permissions (auth)


def perms(**kv):
    def mutate(c):
        c["tables"][1]["permissions"] = kv
    return mutate


def rls(**kv):
    def mutate(c):
        c["tables"][1]["rowLevelPermissions"] = kv
    return mutate


def auth(**kv):
    def mutate(c):
        c["auth"].update(kv)
    return mutate


OWNER = add(name="owner", type="user")  # NEW in auth configs
LEAF = {"field": "owner", "operator": "eq", "value": "$currentUser.id"}

AUTH_CASES = [
    pytest.param(perms(read=["editor"]), "tables[1].permissions.read[0]", "Unknown role 'editor'",
                 id="unknown-role"),
    pytest.param(both(auth(roles=["editor"]), perms(read=["editor"], update="authenticated", delete=[])),
                 None, None, id="custom-role-ok"),
    pytest.param(perms(read=["member", "group:staff"]), "tables[1].permissions.read[1]",
                 "Group permissions are not supported", id="group-rejected"),
    pytest.param(perms(override={"delete": ["boss"]}), "tables[1].permissions.override.delete[0]",
                 "Unknown role 'boss'", id="override-unknown-role"),
    pytest.param(perms(inherit="nope"), "tables[1].permissions.inherit", "Unknown table 'nope'",
                 id="inherit-unknown-table"),
    pytest.param(perms(fields=[{"field": "nope", "read": ["admin"]}]), "tables[1].permissions.fields[0].field",
                 "Unknown field 'nope'", id="field-permission-unknown"),
    pytest.param(perms(fields=[{"field": "notes", "read": ["admin"]}, {"field": "notes", "write": ["admin"]}]),
                 "tables[1].permissions.fields[1].field", "Duplicate field permission for 'notes'",
                 id="field-permission-duplicate"),
    pytest.param(perms(fields=[{"field": "remaining", "write": ["admin"]}]),
                 "tables[1].permissions.fields[0].write", "write is not applicable to a read-only field",
                 id="field-permission-write-formula"),
    pytest.param(perms(fields=[{"field": "ref", "write": ["admin"]}]),
                 "tables[1].permissions.fields[0].write", "write is not applicable to a read-only field",
                 id="field-permission-write-autonumber"),
    pytest.param(perms(fields=[{"field": "notes", "read": ["ghost"]}]),
                 "tables[1].permissions.fields[0].read[0]", "Unknown role 'ghost'", id="field-permission-role"),
    pytest.param(auth(roles=["editor", "editor"]), ("auth.roles[1]", "auth.roles[1].name"),
                 "Duplicate role 'editor'", id="role-duplicate"),
    pytest.param(auth(roles=["Editor"]), ("auth.roles[0]", "auth.roles[0].name"), None, id="role-bad-name"),
    pytest.param(auth(defaultRole="boss"), "auth.defaultRole", "Unknown role 'boss'", id="default-role-unknown"),
    pytest.param(auth(strategies=["emailAndPassword", {"type": "emailAndPassword"}]),
                 ("auth.strategies[1]", "auth.strategies[1].type"), "Duplicate strategy 'emailAndPassword'",
                 id="strategy-duplicate"),
    pytest.param(auth(strategies=[]), "auth.strategies", "Must not be empty", id="strategies-empty"),
    pytest.param(lambda c: c["auth"].pop("strategies"), missing("auth", "strategies"),
                 "Missing required key 'strategies'", id="strategies-missing"),
    pytest.param(auth(strategies=[{"type": "emailAndPassword", "minPasswordLength": 5}]),
                 "auth.strategies[0].minPasswordLength", "Must be between 6 and 128", id="min-password-length"),
    pytest.param(auth(strategies=[{"type": "magicLink", "expirationMinutes": 1441}]),
                 "auth.strategies[0].expirationMinutes", "Must be between 1 and 1440", id="magic-link-expiration"),
    pytest.param(auth(strategies=[{"type": "emailOtp", "length": 3}]),
                 "auth.strategies[0].length", "Must be between 4 and 10", id="otp-length"),
    pytest.param(auth(strategies=["magicLink"], twoFactor=True), "auth.twoFactor",
                 "twoFactor requires the emailAndPassword strategy", id="two-factor-without-password"),
    pytest.param(auth(scopeTables=["tasks"]), ("auth.scopeTables", "auth"), None, id="scope-tables-rejected"),
    pytest.param(auth(allowSignUp=True, disableSignUp=True), ("auth", "auth.allowSignUp", "auth.disableSignUp"),
                 None, id="sign-up-aliases-inconsistent"),
    pytest.param(lambda c: c["tables"][1]["views"][0].update(permissions={"public": True}),
                 ("tables[1].views[0].permissions.public", "tables[1].views[0].permissions"), None,
                 id="view-permissions-public-rejected"),
    pytest.param(lambda c: c["tables"][1]["views"][0].update(permissions={"read": ["nobody"]}),
                 "tables[1].views[0].permissions.read[0]", "Unknown role 'nobody'", id="view-permission-role"),
    # row-level §7.5
    pytest.param(both(OWNER, rls(read=LEAF)), None, None, id="rls-valid"),
    pytest.param(rls(read={"field": "nope", "operator": "eq", "value": 1}),
                 "tables[1].rowLevelPermissions.read.field", "Unknown field 'nope'", id="rls-unknown-field"),
    pytest.param(rls(read={"field": "remaining", "operator": "eq", "value": 1}),
                 "tables[1].rowLevelPermissions.read.field",
                 "Field 'remaining' cannot be used in a row-level rule", id="rls-formula-field"),
    pytest.param(rls(read={"field": "task_count", "operator": "eq", "value": 1}),
                 "tables[1].rowLevelPermissions.read.field", "Unknown field 'task_count'",
                 id="rls-field-of-other-table"),
    pytest.param(both(OWNER, rls(read={**LEAF, "operator": "gt"})), "tables[1].rowLevelPermissions.read.operator",
                 "Unknown operator 'gt'", id="rls-unknown-operator"),
    pytest.param(both(OWNER, rls(read={**LEAF, "value": "$currentUser.name"})),
                 "tables[1].rowLevelPermissions.read.value",
                 "Unknown current-user reference '$currentUser.name'", id="rls-unknown-current-user"),
    pytest.param(both(OWNER, rls(update={"when": {"logic": "or", "conditions": [
        LEAF, {"field": "nope", "operator": "eq", "value": 1}]}})),
        "tables[1].rowLevelPermissions.update.when.conditions[1].field", "Unknown field 'nope'",
        id="rls-nested-unknown-field"),
    pytest.param(both(OWNER, rls(write={"logic": "xor", "conditions": [LEAF]})),
                 "tables[1].rowLevelPermissions.write.logic", "Expected one of: and, or", id="rls-logic"),
    pytest.param(both(OWNER, rls(delete={"logic": "and", "conditions": []})),
                 "tables[1].rowLevelPermissions.delete.conditions", "Must not be empty", id="rls-empty-group"),
    pytest.param(rls(read={"field": "createdBy", "operator": "eq", "value": "$currentUser.id"},
                     delete={"field": "id", "operator": "notIn", "value": [1, 2]}), None, None,
                 id="rls-pseudo-field-valid"),
    # people types are fine with auth
    pytest.param(OWNER, None, None, id="user-field-with-auth"),
    pytest.param(add(name="owner", type="user", default="abc"), f"{NEW}.default",
                 "default is not supported for field type 'user'", id="default-user"),
    pytest.param(add(name="owners", type="user", allowMultiple=True, unique=True), f"{NEW}.unique",
                 "unique is not supported for field type 'user'", id="unique-multiple-user"),
]


@pytest.mark.parametrize("mutate, path, message", AUTH_CASES)
def test_validation_error_with_auth(mutate, path, message):
    cfg = with_auth()
    mutate(cfg)
    errors, _ = validate(cfg)
    if message is None and path is None:
        assert errors == []
    elif message is None:
        assert any(e["path"] in path for e in errors), errors
    else:
        assert has_error(errors, path, message), errors


def test_permission_inheritance_cycle():
    cfg = with_auth()
    cfg["tables"][0]["permissions"] = {"inherit": "tasks"}
    cfg["tables"][1]["permissions"] = {"inherit": "projects"}
    errors, _ = validate(cfg)
    messages = {e["message"] for e in errors}
    assert messages & {"Circular permission inheritance: projects -> tasks -> projects",
                       "Circular permission inheritance: tasks -> projects -> tasks"}, errors


def test_permissions_are_ignored_but_still_validated_without_auth():
    # Permissions apply only in auth mode; the grammar still names known roles only.
    cfg = basic()
    cfg["tables"][1]["permissions"] = {"read": "all", "create": ["member"]}
    assert validate(cfg)[0] == []


# --------------------------------------------------------------------------- warnings


def test_formula_over_hidden_field_warns():
    cfg = with_auth()
    cfg["tables"][1]["permissions"] = {"fields": [{"field": "estimate", "read": ["admin"]}]}
    errors, warnings = validate(cfg)
    assert errors == []
    assert "Formula 'remaining' is hidden from callers who cannot read 'estimate'" in \
        [w["message"] for w in warnings]


def test_view_filter_on_missing_option_warns():
    cfg = basic()
    cfg["tables"][1]["views"][0]["filters"]["and"].append(
        {"field": "status", "operator": "equals", "value": "urgent"})
    errors, warnings = validate(cfg)
    assert errors == []
    assert "Value 'urgent' is not an option of field 'status'; the filter matches nothing" in \
        [w["message"] for w in warnings]


# --------------------------------------------------------------------------- §1.5 / §4 normalization


NORMAL_CONFIG = {
    "name": "normal-app",
    "tables": [{
        "name": "things",
        "fields": [
            {"name": "title", "type": "single-line-text"},
            {"name": "amount", "type": "number"},
            {"name": "flag", "type": "boolean"},
            {"name": "files", "type": "attachment"},
            {"name": "when", "type": "date", "includeTime": True, "timezone": "Europe/Paris"},
            {"name": "day", "type": "date"},
            {"name": "stage", "type": "single-select",
             "options": ["todo", {"value": "done", "label": "Done", "color": "#00FF00"}]},
            {"name": "friends", "type": "relationship", "relatedTable": "things", "allowMultiple": True},
            {"name": "parent", "type": "relationship", "relatedTable": "things"},
            {"name": "double", "type": "formula", "formula": "{amount} * 2"},
            {"name": "stars", "type": "rating"},
            {"name": "price", "type": "currency", "currency": "EUR"},
            {"name": "code", "type": "barcode"},
            {"name": "list", "type": "array"},
            {"name": "seq", "type": "autonumber"},
            {"name": "body", "type": "long-text"},
        ],
        "views": [{"id": "by_stage", "name": "By stage", "groupBy": "stage"}],
        "unique": [{"fields": ["title", "day"]}],
    }],
}
COMMON_KEYS = ["id", "name", "type", "description", "required", "unique", "indexed", "readOnly", "default"]


@pytest.fixture
def normal(make_app):
    app = make_app(NORMAL_CONFIG)
    meta = webtest.TestApp(app.wsgi).get("/api/tables/things").json
    return app, {f["name"]: f for f in meta["fields"]}, meta


@pytest.mark.parametrize("name, expected", [
    pytest.param("amount", {"type": "decimal", "precision": None, "min": None, "max": None}, id="number-alias"),
    pytest.param("flag", {"type": "checkbox", "default": False}, id="boolean-alias"),
    pytest.param("files", {"type": "multiple-attachments"}, id="attachment-alias"),
    pytest.param("when", {"type": "datetime", "timeZone": "Europe/Paris"}, id="include-time-and-timezone"),
    pytest.param("stage", {"type": "single-select", "options": [
        {"value": "todo", "label": "todo", "color": None},
        {"value": "done", "label": "Done", "color": "#00FF00"}]}, id="select-options"),
    pytest.param("friends", {"type": "relationship", "relationType": "many-to-many"}, id="allow-multiple"),
    pytest.param("parent", {"relationType": "many-to-one", "onDelete": "set-null", "relatedField": None},
                 id="relationship-defaults"),
    pytest.param("title", {"maxLength": 255, "required": False, "unique": False, "indexed": False,
                           "readOnly": False, "default": None, "description": None}, id="text-defaults"),
    pytest.param("body", {"maxLength": 100000}, id="long-text-default"),
    pytest.param("double", {"readOnly": True, "formula": "{amount} * 2"},
                 id="formula-read-only"),
    pytest.param("stars", {"max": 5}, id="rating-default"),
    pytest.param("price", {"currency": "EUR", "precision": 2}, id="currency-defaults"),
    pytest.param("code", {"format": "CODE-128"}, id="barcode-default"),
    pytest.param("list", {"itemType": "text", "maxItems": 1000}, id="array-defaults"),
    pytest.param("seq", {"readOnly": True, "startFrom": 1}, id="autonumber-defaults"),
])
def test_normalized_field_definitions(normal, name, expected):
    _, fields, _ = normal
    field = fields[name]
    assert {k: field.get(k, "<absent>") for k in expected} == expected


def test_normalized_fields_common_keys_first_and_ids_assigned(normal):
    _, fields, meta = normal
    for field in meta["fields"]:
        assert list(field)[:9] == COMMON_KEYS, field
    assert [f["id"] for f in meta["fields"]] == list(range(1, 17))
    assert "timezone" not in fields["when"]
    assert "includeTime" not in fields["when"]
    assert "allowMultiple" not in fields["friends"]


def test_normalized_group_by(normal):
    _, _, meta = normal
    assert meta["views"][0]["groupBy"] == {"field": "stage", "direction": "asc"}


def test_normalized_table_unique_becomes_index(normal):
    app, _, _ = normal
    indexes = app.config["tables"][0]["indexes"]
    assert any(ix["fields"] == ["title", "day"] and ix["unique"] is True for ix in indexes), indexes


def test_normalized_config_is_read_only_or_a_copy(normal):
    app, _, _ = normal
    try:
        app.config["name"] = "changed"
    except TypeError:
        return
    assert app.config["name"] == "normal-app"


@pytest.mark.parametrize("indexes, expected", [
    pytest.param([{"fields": ["due", "status"]}], ["due_status"], id="joined-names"),
    pytest.param([{"name": "due_status", "fields": ["due"]}, {"fields": ["due", "status"]}],
                 ["due_status", "due_status_2"], id="taken-gets-suffix"),
    pytest.param([{"fields": ["due", "status"]}, {"fields": ["status", "due"]}, {"fields": ["due", "status"]}],
                 ["due_status", "status_due", "due_status_2"], id="same-fields-twice"),
    pytest.param([{"fields": ["a" * 40, "b" * 40]}], ["a" * 40 + "_" + "b" * 22], id="cut-to-63"),
    pytest.param([{"fields": ["a" * 40, "b" * 40]}, {"fields": ["a" * 40, "b" * 40, "due"]}],
                 ["a" * 40 + "_" + "b" * 22, "a" * 40 + "_" + "b" * 20 + "_2"], id="cut-then-suffix"),
])
def test_default_index_names(make_app, indexes, expected):
    cfg = basic()
    cfg["tables"][1]["fields"] += [{"name": "a" * 40, "type": "integer"}, {"name": "b" * 40, "type": "integer"}]
    cfg["tables"][1]["indexes"] = indexes
    app = make_app(cfg)
    names = [ix["name"] for ix in app.config["tables"][1]["indexes"]]
    assert [n for n in names if n in set(expected)] == expected, names


def test_normalized_auth_and_analytics(make_app):
    cfg = basic()
    cfg["auth"] = {"strategies": ["emailPassword", "magicLink"], "allowSignUp": False}
    cfg["analytics"] = True
    app = make_app(cfg)
    strategies = app.config["auth"]["strategies"]
    assert {k: strategies[0].get(k) for k in
            ["type", "minPasswordLength", "maxPasswordLength", "requireEmailVerification", "autoSignIn"]} == \
        {"type": "emailAndPassword", "minPasswordLength": 8, "maxPasswordLength": 128,
         "requireEmailVerification": False, "autoSignIn": True}
    assert {k: strategies[1].get(k) for k in ["type", "expirationMinutes"]} == \
        {"type": "magicLink", "expirationMinutes": 15}
    assert app.config["auth"]["disableSignUp"] is True
    assert app.config["auth"]["defaultRole"] == "member"
    assert app.config["analytics"]["enabled"] is True


def test_normalized_analytics_session_timeout_alias(make_app):
    cfg = basic()
    cfg["analytics"] = {"sessionTimeout": 45}
    app = make_app(cfg)
    assert app.config["analytics"]["enabled"] is True
    assert app.config["analytics"]["sessionTimeoutMinutes"] == 45


# --------------------------------------------------------------------------- CLI validate (OPERATIONS.md §2)


CLI_BAD = {"name": "cli-app", "tables": [{"name": "items", "fields": [{"name": "title", "type": "numbr"}]}]}
CLI_GOOD = {"name": "cli-app", "pages": [],
            "tables": [{"name": "items", "fields": [{"name": "title", "type": "single-line-text"}]},
                       {"name": "more", "fields": [{"name": "x", "type": "integer"}]}]}


def cli(capsys, *argv):
    try:
        code = sovrium.main(list(argv))
    except SystemExit as exc:  # main() should return the code; a SystemExit still gives it to users
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_validate_ok(tmp_path, capsys):
    path = write(tmp_path / "app.json", json.dumps(CLI_GOOD))
    code, out, err = cli(capsys, "validate", str(path))
    assert code == 0
    assert out == ""
    lines = err.splitlines()
    assert "warning: ignored unsupported keys: pages" in lines
    assert "ok: cli-app — 2 tables" in lines


def test_cli_validate_errors(tmp_path, capsys):
    path = write(tmp_path / "app.json", json.dumps(CLI_BAD))
    code, out, err = cli(capsys, "validate", str(path))
    assert code == 1
    assert "error: tables[0].fields[0].type: Unknown field type 'numbr'" in err.splitlines()
    assert "ok:" not in err


def test_cli_validate_yaml_file(tmp_path, capsys):
    path = write(tmp_path / "app.yaml", "name: cli-app\ntables:\n  - name: items\n    fields:\n"
                                        "      - {name: title, type: single-line-text}\n")
    code, _, err = cli(capsys, "validate", str(path))
    assert code == 0
    assert "ok: cli-app — 1 tables" in err.splitlines()


def test_cli_validate_json_ok(tmp_path, capsys):
    path = write(tmp_path / "app.json", json.dumps(CLI_GOOD))
    code, out, _ = cli(capsys, "validate", "--json", str(path))
    assert code == 0
    doc = json.loads(out)
    assert doc["valid"] is True
    assert doc["errors"] == []
    assert [(w["path"], w["message"]) for w in doc["warnings"]] == [("", "ignored unsupported keys: pages")]


def test_cli_validate_json_errors(tmp_path, capsys):
    path = write(tmp_path / "app.json", json.dumps(CLI_BAD))
    code, out, _ = cli(capsys, "validate", "--json", str(path))
    assert code == 1
    doc = json.loads(out)
    assert set(doc) == {"valid", "errors", "warnings"}
    assert doc["valid"] is False
    assert doc["errors"] == [{"path": "tables[0].fields[0].type", "message": "Unknown field type 'numbr'"}]
    assert doc["warnings"] == []


def test_cli_validate_json_option_after_path(tmp_path, capsys):
    path = write(tmp_path / "app.json", json.dumps(CLI_BAD))
    code, out, _ = cli(capsys, "validate", str(path), "--json")
    assert code == 1
    assert json.loads(out)["valid"] is False


def test_cli_validate_env_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SOVRIUM_TEST_UNSET_VAR", raising=False)
    cfg = {**CLI_GOOD, "description": "${SOVRIUM_TEST_UNSET_VAR}"}
    path = write(tmp_path / "app.json", json.dumps(cfg))
    code, _, err = cli(capsys, "validate", str(path))
    assert code == 1
    assert "error: description: Environment variable 'SOVRIUM_TEST_UNSET_VAR' is not set" in err.splitlines()


def test_cli_validate_missing_file(tmp_path, capsys):
    code, _, err = cli(capsys, "validate", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert err.startswith("error: ")


@pytest.mark.parametrize("argv", [
    pytest.param(["validate", "--bogus", "app.json"], id="unknown-option"),
    pytest.param(["validate"], id="missing-argument"),
    pytest.param(["frobnicate"], id="unknown-command"),
])
def test_cli_misuse_exits_2(tmp_path, capsys, monkeypatch, argv):
    write(tmp_path / "app.json", json.dumps(CLI_GOOD))
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, *argv)
    assert code == 2
    assert "error: " in err


def test_cli_validate_db_missing_exits_3(tmp_path, capsys):
    path = write(tmp_path / "app.json", json.dumps(CLI_GOOD))
    db = tmp_path / "missing.db"
    code, _, err = cli(capsys, "validate", "--db", str(db), str(path))
    assert code == 3
    assert f"error: database not found: {db}" in err.splitlines()
    assert not db.exists()


def test_load_config_returns_unsubstituted_resolved_dict(tmp_path):
    write(tmp_path / "app.yaml", "name: app\ndescription: ${X}\ntables:\n  - $ref: t.yaml\n")
    write(tmp_path / "t.yaml", TABLE_YAML)
    cfg = sovrium.load_config(str(tmp_path / "app.yaml"))
    assert cfg["description"] == "${X}"
    assert cfg["tables"][0]["name"] == "projects"
    assert validate(cfg, {"X": "hi"})[0] == []
