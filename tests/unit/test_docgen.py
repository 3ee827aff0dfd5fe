import re

from faas import docgen
from faas.config import Settings


def test_reference_docs_are_current() -> None:
    assert docgen.main(["check"]) == 0, "run: python -m faas.docgen"


def test_configuration_lists_every_setting() -> None:
    text = docgen.configuration()
    for name in Settings.model_fields:
        assert f"`FAAS_{name.upper()}`" in text


def test_cli_reference_is_plain_markdown() -> None:
    text = docgen.cli()
    # Help texts as written: quotes and comparisons, not HTML entities.
    assert re.findall(r"&(?:#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);", text) == []
    assert "Show a function's spec and state as JSON." in text
    assert "[x>=0]" in text
