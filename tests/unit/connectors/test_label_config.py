"""Label configs: the one labelloop creates, and reading classes from any project's config."""

from __future__ import annotations

import pytest

from connectors._label_config import choices_config, read_choices
from connectors.errors import ConnectorRejected


def test_a_created_config_reads_back_the_same_classes_even_with_xml_characters() -> None:
    classes = ["pos", 'say "hi"', "a & b", "<tag>", "it's"]
    control = read_choices(choices_config(classes), project_id="1")
    assert control.classes == tuple(classes)
    assert (control.from_name, control.to_name, control.data_key) == ("label", "text", "text")
    assert 'choice="single-radio"' in choices_config(classes)


def test_the_text_key_becomes_the_variable() -> None:
    assert read_choices(choices_config(["a"], text_key="body"), project_id="1").data_key == "body"


@pytest.mark.parametrize("classes", [[], ["a", "a"], ["a", ""]])
def test_bad_class_lists_are_refused(classes: list[str]) -> None:
    with pytest.raises(ValueError, match="distinct"):
        choices_config(classes)


def test_custom_names_order_and_aliases_are_respected() -> None:
    config = (
        '<View><Header value="Pick"/><HyperText name="doc" value="$html"/>'
        '<Choices name="topic" toName="doc"><Choice value="Zeta" alias="z"/><Choice value="Alpha"/></Choices>'
        '<Choices name="second" toName="doc"><Choice value="ignored"/></Choices></View>'
    )
    control = read_choices(config, project_id="7", control_name="topic")
    assert (control.from_name, control.to_name, control.classes, control.data_key) == (
        "topic",
        "doc",
        ("z", "Alpha"),
        "html",
    )
    assert read_choices(config, project_id="7", control_name="second").classes == ("ignored",)


def test_a_choice_s_value_written_through_the_api_names_its_aliased_class() -> None:
    """The UI writes a Choice's alias; an API client wrote the value ("Human"), which showed as an
    unknown choice with advice to add it to the config."""
    config = ('<View><Text name="t" value="$text"/><Choices name="c" toName="t">'
              '<Choice value="Human" alias="HUM"/><Choice value="Number" alias="NUM"/><Choice value="LOC"/>'
              '<Choice value="DESC" alias="DESC"/></Choices></View>')
    control = read_choices(config, project_id="3")
    assert control.classes == ("HUM", "NUM", "LOC", "DESC")
    assert [control.class_of(c) for c in ("Human", "HUM", "Number", "LOC", "DESC", "Other")] == [
        "HUM", "HUM", "NUM", "LOC", "DESC", "Other"]


def test_several_choices_tags_need_a_name_instead_of_binding_the_first() -> None:
    # a yes/no question before the topic became the classes, silently
    config = ('<View><Text name="text" value="$text"/>'
              '<Choices name="relevant" toName="text"><Choice value="yes"/><Choice value="no"/></Choices>'
              '<View visibleWhen="choice-selected" whenTagName="relevant" whenChoiceValue="yes">'
              '<Choices name="label" toName="text"><Choice value="HUM"/><Choice value="LOC"/></Choices></View></View>')
    refusal = r"2 <Choices> tags \('relevant', 'label'\); set label_studio\.choices_name"
    with pytest.raises(ConnectorRejected, match=refusal):
        read_choices(config, project_id="4")
    assert read_choices(config, project_id="4", control_name="label").classes == ("HUM", "LOC")
    with pytest.raises(ConnectorRejected, match=r"no <Choices name='topic'> .*its <Choices> are 'relevant', 'label'"):
        read_choices(config, project_id="4", control_name="topic")


def test_several_choices_per_task_and_one_class_name_twice_are_refused() -> None:
    multiple = ('<View><Text name="t" value="$text"/><Choices name="c" toName="t" choice="multiple">'
                '<Choice value="HUM"/><Choice value="NUM"/></Choices></View>')
    with pytest.raises(ConnectorRejected, match=r'allows several choices per task \(choice="multiple"\)'):
        read_choices(multiple, project_id="5")
    twice = ('<View><Text name="t" value="$text"/><Choices name="c" toName="t">'
             '<Choice value="Human" alias="HUM"/><Choice value="HUM"/><Choice value="NUM"/></Choices></View>')
    with pytest.raises(ConnectorRejected, match=r"gives these class names twice .*: HUM"):
        read_choices(twice, project_id="5")


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ('<View><Text name="t" value="$text"/></View>', "no <Choices>"),
        ('<View><Choices name="c" toName="t"></Choices></View>', "no usable"),
        ("<View><Choices", "not valid XML"),
    ],
)
def test_configs_labelloop_cannot_use_are_rejected(config: str, words: str) -> None:
    with pytest.raises(ConnectorRejected, match=words):
        read_choices(config, project_id="3")
