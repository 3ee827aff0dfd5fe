from faas import docgen
from faas.config import Settings


def test_reference_docs_are_current() -> None:
    assert docgen.main(["check"]) == 0, "run: python -m faas.docgen"


def test_configuration_lists_every_setting() -> None:
    text = docgen.configuration()
    for name in Settings.model_fields:
        assert f"`FAAS_{name.upper()}`" in text
