"""Prompt sets are data: the shipped default, user YAML/JSON files, and errors that name the file."""

from __future__ import annotations

import json

import pytest

from vlmkd.caption import load_prompt_set
from vlmkd.caption.prompts import shipped_prompt_sets
from vlmkd.errors import InputError


def test_default_set_is_general_plus_four_targeted_prompts():
    prompts = load_prompt_set()
    assert prompts.ids == ("G", "T1", "T2", "T3", "T4")
    assert "default" in shipped_prompt_sets()
    assert load_prompt_set("default") == prompts
    labelled = [p for p in prompts.prompts if "{label}" in p.template]
    assert [p.id for p in labelled] == ["T2", "T3", "T4"]
    assert "golden retriever" in prompts.prompts[2].render("golden retriever")


def test_record_fingerprint_changes_with_any_template(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("prompts:\n  - {id: G, template: Describe it.}\n")
    b = tmp_path / "b.yaml"
    b.write_text("prompts:\n  - {id: G, template: Describe it!}\n")
    assert load_prompt_set(a).record()["fingerprint"] != load_prompt_set(b).record()["fingerprint"]
    assert load_prompt_set(a).record()["prompts"] == [{"id": "G", "template": "Describe it."}]


def test_user_yaml_and_json_files_are_accepted(tmp_path):
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("name: mine\nprompts:\n  - id: shape\n    template: 'Shape of the {label}?'\n")
    json_file = tmp_path / "mine.json"
    json_file.write_text(json.dumps({"prompts": [{"id": "shape", "template": "Shape of the {label}?"}]}))
    from_yaml, from_json = load_prompt_set(yaml_file), load_prompt_set(json_file)
    assert from_yaml.name == "mine" and from_json.name == "mine"  # JSON: named after the file
    assert from_yaml.prompts == from_json.prompts
    assert from_yaml.prompts[0].render("cat") == "Shape of the cat?"


def test_literal_braces_survive_rendering(tmp_path):
    file = tmp_path / "p.yaml"
    file.write_text("prompts:\n  - id: j\n    template: 'Answer as {{\"label\": ...}} for the {label}.'\n")
    assert load_prompt_set(file).prompts[0].render("dog") == 'Answer as {"label": ...} for the dog.'


BAD_FILES = [
    ("prompts: [", ":1:11: not valid YAML \\(expected the node content"),
    ("prompts:\n- {id: G, template: Describe the {label}.}\n", ":2:34: not valid YAML"),
    ("- just a string\n", "prompt 1: expected a mapping"),
    ("prompts: []\n", "'prompts' must be a non-empty list"),
    ("prompts:\n  - {id: G}\n", "'template' must be a non-empty string"),
    ("prompts:\n  - {template: hi}\n", "'id' must be"),
    ("prompts:\n  - {id: 'a b', template: hi}\n", "'id' must be"),
    ("prompts:\n  - {id: G, template: a}\n  - {id: G, template: b}\n", "duplicate prompt id 'G'"),
    ("prompts:\n  - {id: G, template: 'the {class}'}\n", "unknown placeholders \\['class'\\]"),
    ("prompts:\n  - {id: G, template: 'the {label'}\n", "bad template"),
    ("prompts:\n  - {id: G, template: 'the {label:d}'}\n", "plain {label}"),
    ("prompts:\n  - {id: G, template: 'the {label!z}'}\n", "plain {label}"),
    ("prompts:\n  - {id: G, template: 'the {label:>{width}}'}\n", "plain {label}"),
    ("prompts:\n  - {id: G, template: hi, colour: red}\n", "unknown keys \\['colour'\\]"),
    ("promts:\n  - {id: G, template: hi}\n", "unknown keys \\['promts'\\]"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_malformed_files_are_refused_naming_the_file(tmp_path, text, message):
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    with pytest.raises(InputError, match=message) as caught:
        load_prompt_set(file)
    assert str(file) in str(caught.value)


def test_missing_file_lists_the_shipped_sets(tmp_path):
    with pytest.raises(InputError, match="prompt file not found.*default"):
        load_prompt_set(tmp_path / "nope.yaml")


def test_json_syntax_errors_name_the_line_on_one_line(tmp_path):
    file = tmp_path / "p.json"
    file.write_text('{"prompts": [\n  {"id": "G",}\n]}')
    with pytest.raises(InputError, match=r"p\.json:2:14: not valid JSON") as caught:
        load_prompt_set(file)
    assert "\n" not in str(caught.value)
