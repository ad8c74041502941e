"""The examples in the docstrings of the public layers and model builder run as written."""

import doctest
import inspect

import pytest

from tf_supermask.layers import MaskedConv2D, MaskedDense
from tf_supermask.models import build_model

PUBLIC = [MaskedDense, MaskedConv2D, build_model]


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda obj: obj.__name__)
def test_docstring_examples_run(obj):
    tests = doctest.DocTestFinder(recurse=False).find(obj, obj.__name__, globs={})
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0, f"{obj.__name__}'s docstring has no example"
    assert results.failed == 0, f"{results.failed} example(s) of {obj.__name__} failed (above)"


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda obj: obj.__name__)
def test_docstrings_have_the_keras_sections(obj):
    doc = obj.__doc__
    for section in ("Args:", "Input shape:", "Output shape:", "Example:"):
        assert section in doc, f"{obj.__name__} lacks {section!r}"


@pytest.mark.parametrize("layer", [MaskedDense, MaskedConv2D], ids=lambda obj: obj.__name__)
def test_layer_docstrings_name_every_constructor_argument(layer):
    names = [name for cls in (layer, *layer.__mro__[1:2])
             for name in inspect.signature(cls.__init__).parameters
             if name not in ("self", "kwargs")]
    missing = [name for name in names if f"      {name}: " not in layer.__doc__]
    assert not missing, f"{layer.__name__}'s Args do not name {missing}"
