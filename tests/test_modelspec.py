"""Model specs: every form loads, every failure is a ModelSpecError naming the spec."""

from pathlib import Path
import textwrap

import pytest
import torch

from npu_compress import models
from npu_compress.errors import ModelSpecError
from npu_compress.modelspec import LoadedModel, load_model, parse_input_shape

FACTORY_FILE = """
    import torch
    from torch import nn

    def make():
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, 5))
    make.input_shape = (1, 3, 16, 16)
    make.num_classes = 5

    def no_shape():
        return nn.Linear(4, 2)

    class Net(nn.Module):
        input_shape = (2, 6)
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)
        def forward(self, x):
            return self.fc(x)

    def not_a_module():
        return 42

    def needs_args(width):
        return nn.Linear(width, 2)

    def bad_shape():
        return nn.Linear(4, 2)
    bad_shape.input_shape = (1, -3)

    NOT_CALLABLE = 3
"""


@pytest.fixture
def factory_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_models.py"
    path.write_text(textwrap.dedent(FACTORY_FILE))
    return path


@pytest.fixture
def pt2_file(tmp_path: Path) -> Path:
    net = models.create("digits-cnn").eval()
    path = tmp_path / "digits.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(2, 1, 8, 8),)), path)
    return path


def test_zoo_name_and_shape_override():
    loaded = load_model("resnet20")
    assert isinstance(loaded, LoadedModel)
    assert (loaded.input_shape, loaded.num_classes, loaded.spec) == ((1, 3, 32, 32), 10,
                                                                     "resnet20")
    assert loaded.module(loaded.example_input()).shape == (1, 10)
    assert load_model("resnet20", input_shape=(4, 3, 32, 32)).input_shape == (4, 3, 32, 32)


def test_file_factory_with_shape_attribute(factory_file):
    loaded = load_model(f"{factory_file}:make")
    assert loaded.input_shape == (1, 3, 16, 16)
    assert loaded.num_classes == 5
    assert loaded.module(torch.randn(loaded.input_shape)).shape == (1, 5)


def test_file_class_factory_uses_class_attribute(factory_file):
    loaded = load_model(f"{factory_file}:Net")
    assert loaded.input_shape == (2, 6)
    assert loaded.num_classes is None
    assert loaded.module(torch.randn(2, 6)).shape == (2, 3)


def test_file_factory_without_shape_needs_input_shape(factory_file):
    spec = f"{factory_file}:no_shape"
    with pytest.raises(ModelSpecError, match="--input-shape 1,3,32,32") as info:
        load_model(spec)
    assert spec in str(info.value)
    assert load_model(spec, input_shape=(3, 4)).input_shape == (3, 4)


def test_module_factory(factory_file, monkeypatch):
    monkeypatch.syspath_prepend(str(factory_file.parent))
    loaded = load_model("my_models:make")
    assert loaded.input_shape == (1, 3, 16, 16)
    assert isinstance(loaded.module, torch.nn.Sequential)


def test_package_module_factory_from_this_package():
    loaded = load_model("npu_compress.models.resnet_cifar:resnet20", input_shape=(1, 3, 32, 32))
    assert sum(p.numel() for p in loaded.module.parameters()) == sum(
        p.numel() for p in models.create("resnet20").parameters())


def test_pt2_file(pt2_file):
    loaded = load_model(str(pt2_file))
    assert loaded.input_shape == (2, 1, 8, 8)  # from the exported example input
    assert loaded.num_classes == 10  # from the (B, 10) output
    loaded.module.eval()  # allowed again; the graph keeps its exported (eval) behaviour
    x = torch.randn(2, 1, 8, 8)
    program = torch.export.load(pt2_file)
    torch.testing.assert_close(loaded.module(x), program.module()(x))
    torch.export.export(loaded.module, (x,))  # re-traceable for the pruning graph


def test_pt2_rejects_other_input_shape(pt2_file):
    with pytest.raises(ModelSpecError, match=r"\(2, 1, 8, 8\)"):
        load_model(str(pt2_file), input_shape=(1, 1, 8, 8))


@pytest.mark.parametrize("attr, message", [
    ("not_a_module", "returned int"),
    ("needs_args", "no arguments failed"),
    ("NOT_CALLABLE", "not callable"),
    ("missing", "no attribute 'missing'.*make"),
    ("bad_shape", "positive integers"),
])
def test_file_factory_errors(factory_file, attr, message):
    spec = f"{factory_file}:{attr}"
    with pytest.raises(ModelSpecError, match=message) as info:
        load_model(spec)
    assert spec in str(info.value)


def test_error_cases_name_the_spec(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(b"not a zip archive")
    cases = {
        "resnet18": "valid forms: a zoo name .*resnet20",
        str(tmp_path / "absent.py") + ":f": "does not exist",
        "no_such_module_xyz:f": "cannot import module 'no_such_module_xyz'",
        "json:not_there": "no attribute",
        "math:pi": "not callable",
        f"{broken}:f": "SyntaxError",
        str(tmp_path / "absent.pt2"): "does not exist",
        str(corrupt): "not a readable torch.export archive",
        ":f": "expected",
    }
    for spec, message in cases.items():
        with pytest.raises(ModelSpecError, match=message) as info:
            load_model(spec)
        assert repr(spec) in str(info.value), spec


def test_parse_input_shape():
    assert parse_input_shape("1,3,32,32") == (1, 3, 32, 32)
    assert parse_input_shape(" 2, 8 ") == (2, 8)
    for bad in ("", "1,,3", "1,3.5", "1,-3,32,32", "0,3", "a,b", "1 3 32 32"):
        with pytest.raises(ModelSpecError, match="bad input shape"):
            parse_input_shape(bad)


def test_bad_input_shape_argument():
    with pytest.raises(ModelSpecError, match="'resnet20'.*positive integers"):
        load_model("resnet20", input_shape=(1, 0, 32, 32))
