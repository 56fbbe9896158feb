"""Read and write Label Studio labeling configs (XML) for single-choice text classification."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from connectors.errors import ConnectorRejected

__all__ = ["ChoicesControl", "choices_config", "read_choices"]


@dataclass(frozen=True, slots=True)
class ChoicesControl:
    """The ``<Choices>`` tag labelloop reads and pre-annotates.

    ``from_name``/``to_name`` go into every prediction result; ``data_key`` is the task
    data field the object tag shows (``$text`` → ``"text"``), ``None`` if it is not a variable.
    """

    from_name: str
    to_name: str
    classes: tuple[str, ...]  # in the config's order; a Choice's alias wins over its value
    data_key: str | None
    required_keys: tuple[str, ...] = ()  # every task data field the config's object tags show ($subject → subject)
    aliased_values: tuple[tuple[str, str], ...] = ()  # (value, alias) of each <Choice> whose alias names the class

    def class_of(self, choice: str) -> str:
        """The class an answer's choice names: the UI writes a Choice's alias, an API client may write its value."""
        return next((alias for value, alias in self.aliased_values if value == choice), choice)


def choices_config(classes: Sequence[str], *, text_key: str = "text") -> str:
    """Build a ``<Text>`` + single-radio ``<Choices>`` config; values are XML-escaped.

    Raises:
        ValueError: no classes, an empty class name or a duplicate.
    """
    if not classes or any(not name for name in classes) or len(set(classes)) != len(classes):
        raise ValueError("classes must be a non-empty list of distinct, non-empty names")
    choices = "".join(f"<Choice value={quoteattr(name)}/>" for name in classes)
    return (
        f'<View><Text name="text" value={quoteattr("$" + text_key)}/>'
        '<Choices name="label" toName="text" choice="single-radio" showInline="true">'
        f"{choices}</Choices></View>"
    )


def read_choices(label_config: str, *, project_id: str, control_name: str | None = None) -> ChoicesControl:
    """Find the ``<Choices>`` tag that holds the classes, and the object tag it labels.

    With one ``<Choices>`` tag, that one; with several, the one named ``control_name`` (the first
    one used to be bound silently: a yes/no question before the topic became the classes, and an
    admin adding one later turned every topic label into an unknown choice).

    Raises:
        ConnectorRejected: the config is not XML; has no ``<Choices>``, several and no
            ``control_name``, or none of that name; the tag allows several choices per task, has
            no ``<Choice>``, or two that give one class name.
    """
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as e:
        raise ConnectorRejected(f"project {project_id}: its labeling config is not valid XML") from e
    controls = list(root.iter("Choices"))
    names = ", ".join(repr(c.get("name", "")) for c in controls)
    if not controls:
        raise ConnectorRejected(
            f"project {project_id}: its labeling config has no <Choices> tag, so labelloop cannot read "
            "labels; use a classification config or another project"
        )
    if control_name is not None:
        control = next((c for c in controls if c.get("name") == control_name), None)
        if control is None:
            raise ConnectorRejected(f"project {project_id}: its labeling config has no <Choices name="
                                    f"{control_name!r}> (label_studio.choices_name); its <Choices> are {names}")
    elif len(controls) > 1:
        raise ConnectorRejected(
            f"project {project_id}: its labeling config has {len(controls)} <Choices> tags ({names}); set "
            "label_studio.choices_name to the one that holds the classes"
        )
    else:
        control = controls[0]
    label = f"project {project_id}: <Choices name={control.get('name', '')!r}>"
    if control.get("choice", "single") == "multiple":
        raise ConnectorRejected(f'{label} allows several choices per task (choice="multiple"); labelloop learns '
                                'one class per item: make it choice="single" or "single-radio"')
    classes = tuple(choice.get("alias") or choice.get("value") or "" for choice in control.iter("Choice"))
    if not classes or any(not name for name in classes):
        raise ConnectorRejected(f"{label} has no usable <Choice> values")
    repeated = sorted({name for name in classes if classes.count(name) > 1})
    if repeated:
        raise ConnectorRejected(f"{label} gives these class names twice (a value and an alias?): "
                                f"{', '.join(repeated)}")
    to_name = control.get("toName", "")
    target = next((tag for tag in root.iter() if tag.get("name") == to_name and tag is not control), None)
    variable = target.get("value", "") if target is not None else ""
    data_key = variable[1:] if variable.startswith("$") and len(variable) > 1 else None
    aliased = tuple((value, alias) for choice in control.iter("Choice")
                    if (alias := choice.get("alias")) and (value := choice.get("value")) and value not in classes)
    return ChoicesControl(from_name=control.get("name", ""), to_name=to_name, classes=classes, data_key=data_key,
                          required_keys=_shown_keys(root), aliased_values=aliased)


# Tags whose $field Label Studio requires in every task ("'subject' key is expected in task data").
_OBJECT_TAGS = frozenset({"Text", "HyperText", "Paragraphs", "Table", "Image", "Audio", "AudioPlus", "Video",
                          "TimeSeries", "Pdf", "Markdown"})


def _shown_keys(root: ET.Element) -> tuple[str, ...]:
    """The task data fields the object tags show, sorted: ``$subject`` and ``$subject.line`` → ``subject``."""
    keys = {match.group(1) for tag in root.iter() if tag.tag in _OBJECT_TAGS
            if (match := _VARIABLE.match(tag.get("value", ""))) is not None}
    return tuple(sorted(keys))


_VARIABLE = re.compile(r"\$([A-Za-z_][\w-]*)")
