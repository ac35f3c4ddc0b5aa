"""Network assembly (``models/build.py``): a NervusNet from a schema and plain choices, without
Lightning, the same network NervusModule trains."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from nervus_lightning.data.schema import DataSchema, LabelSpec
from nervus_lightning.errors import NervusInputError
from nervus_lightning.models.build import build_ensemble, build_net
from nervus_lightning.models.ensemble import EnsembleNet
from nervus_lightning.models.net import NervusNet

SMALL_CNN = {"_target_": "nervus_lightning.models.extractors.SmallCNN", "widths": [4, 8]}


def _schema(views: list[str] | None = None) -> DataSchema:
    labels = [
        LabelSpec("label_cls", "classification", classes=["0", "1", "2"]),
        LabelSpec("label_other", "classification", classes=["no", "yes"]),
    ]
    image = {"views": views, "view_columns": [f"imgpath_{v}" for v in views]} if views else {}
    return DataSchema(
        labels=labels,
        input_columns=["input_age", "input_size"],
        input_mean=[60.0, 2.0],
        input_std=[10.0, 1.0],
        image_column=None if views else "imgpath",
        **image,
    )


def test_a_net_is_built_and_run_without_lightning():
    """Importing the package and building a network loads neither Lightning nor its
    data module (the module-level import of the package used to)."""
    code = textwrap.dedent(
        """
        import sys
        import torch
        from nervus_lightning.data.schema import DataSchema, LabelSpec
        from nervus_lightning.models.build import build_net

        schema = DataSchema(
            labels=[LabelSpec("label_a", "classification", classes=["0", "1"])],
            input_columns=["input_x"], input_mean=[0.0], input_std=[1.0], image_column="imgpath",
        )
        extractor = {"_target_": "nervus_lightning.models.extractors.SmallCNN", "widths": [4]}
        net = build_net(schema, [2], extractor=extractor, in_channels=1, image_size=16)
        out = net(image=torch.zeros(3, 1, 16, 16), tabular=torch.zeros(3, 1))
        assert [tuple(o.shape) for o in out] == [(3, 2)], out
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "lightning")
        assert not loaded, loaded
        print(type(net).__name__)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "NervusNet"


def test_build_net_assembles_extractor_tabular_mixer_and_heads():
    net = build_net(
        _schema(), [3, 1], extractor=SMALL_CNN, tabular="mlp", in_channels=1, image_size=16
    )
    assert isinstance(net, NervusNet)
    assert net.mixer is not None and net.tabular_extractor is not None
    out = net(image=torch.rand(4, 1, 16, 16), tabular=torch.rand(4, 2))
    assert [tuple(o.shape) for o in out] == [(4, 3), (4, 1)]


def test_one_extractor_per_view_unless_shared():
    schema = _schema(views=["frontal", "lateral"])
    shared = build_net(schema, [3, 2], extractor=SMALL_CNN, in_channels=1, image_size=16)
    per_view = build_net(
        schema, [3, 2], extractor={**SMALL_CNN, "shared": False}, in_channels=1, image_size=16
    )
    first, second = shared.image_extractors()
    assert first is second
    first, second = per_view.image_extractors()
    assert first is not second
    out = per_view(image=torch.rand(2, 2, 1, 16, 16), tabular=torch.rand(2, 2))
    assert [tuple(o.shape) for o in out] == [(2, 3), (2, 2)]


def test_an_ensemble_combines_independent_members():
    def mean(outputs: list[torch.Tensor], j: int) -> torch.Tensor:
        return torch.stack(outputs).mean(0)

    options = {"extractor": SMALL_CNN, "in_channels": 1, "image_size": 16}
    assert isinstance(build_ensemble(1, _schema(), [3, 2], mean, **options), NervusNet)
    ensemble = build_ensemble(3, _schema(), [3, 2], mean, **options)
    assert isinstance(ensemble, EnsembleNet)
    members = list(ensemble.members)
    assert len(members) == 3
    first, second = (next(m.parameters()) for m in members[:2])
    assert not torch.equal(first, second)  # independently initialised


def test_images_without_an_extractor_are_a_user_error():
    with pytest.raises(NervusInputError, match="model.extractor is 'none'"):
        build_net(_schema(), [3, 2], extractor="none", in_channels=1, image_size=16)


def test_the_module_trains_the_network_build_net_assembles():
    from nervus_lightning.module import NervusModule

    options = {"extractor": SMALL_CNN, "tabular": "mlp", "in_channels": 1, "image_size": 16}
    torch.manual_seed(0)
    module = NervusModule(
        _schema(), evaluation={"positive_class": {"label_other": "yes"}}, **options
    )
    torch.manual_seed(0)
    net = build_net(_schema(), [3, 2], **options)
    assert str(module.net) == str(net)
    for (name, a), (_, b) in zip(
        module.net.state_dict().items(), net.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
