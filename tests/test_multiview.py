"""Several images per case: ``imgpath_<view>`` columns from the CSV to the checkpoint, predict,
preview and the missing-view embedding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, compose_config
from PIL import Image

from nervus_lightning.cli.train import train_settings
from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.data.demo import write_multiview_demo
from nervus_lightning.data.preview import write_preview
from nervus_lightning.data.schema import DataSchema, NervusInputError, find_views, load_table
from nervus_lightning.models.net import NervusNet
from nervus_lightning.module import NervusModule
from nervus_lightning.tasks import ClassificationTask
from nervus_lightning.workflows.export import export_model
from nervus_lightning.workflows.predict import predict
from nervus_lightning.workflows.train import train

SIZE = 16


@pytest.fixture(scope="module")
def complete_csv(tmp_path_factory) -> Path:
    return write_multiview_demo(tmp_path_factory.mktemp("mv"), n=40, seed=1)


@pytest.fixture(scope="module")
def gappy_csv(tmp_path_factory) -> Path:
    """Ten of forty cases lack their lateral view."""
    return write_multiview_demo(
        tmp_path_factory.mktemp("mvgap"), n=40, seed=2, missing_fraction=0.25
    )


def _module(schema: DataSchema, shared: bool = True, **kwargs) -> NervusModule:
    torch.manual_seed(0)
    extractor = {"name": "resnet18", "shared": shared}
    return NervusModule(schema, extractor=extractor, image_size=SIZE, **kwargs)


def _tiny_module(schema: DataSchema) -> NervusModule:
    """A small convolutional extractor, so that unit tests run in well under a second."""
    torch.manual_seed(0)
    extractor = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.AdaptiveAvgPool2d(1)
    )
    return NervusModule(schema, extractor=extractor, image_size=SIZE)


# -- the CSV contract --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "columns, views",
    [
        (["uniqID", "imgpath"], []),
        (["uniqID", "imgpath_frontal", "input_a", "imgpath_lateral"], ["frontal", "lateral"]),
        (["imgpath_lateral", "imgpath", "uniqID"], ["image", "lateral"]),
        (["imgpath_pa"], ["pa"]),
    ],
)
def test_views_are_read_from_the_columns_in_order(columns, views):
    assert find_views(columns, Path("x.csv")) == views


@pytest.mark.parametrize(
    "columns, match",
    [
        (["imgpath", "imgpath_image"], r"'imgpath' and 'imgpath_image' would both be the view"),
        (["imgpath_"], r"\['imgpath_'\] do not name a view"),
        (["imgpath_front view"], r"do not name a view.*letters, digits and '-'"),
    ],
)
def test_view_columns_that_cannot_be_views_are_refused(columns, match):
    with pytest.raises(NervusInputError, match=match):
        find_views(columns, Path("x.csv"))


def test_schema_records_views_and_survives_json(complete_csv):
    _, schema = load_table(complete_csv, task=ClassificationTask)
    assert schema.views == ["frontal", "lateral"]
    assert schema.view_columns == ["imgpath_frontal", "imgpath_lateral"]
    assert schema.image_column is None and schema.multiview and schema.has_images
    assert schema.image_columns == schema.view_columns and schema.missing_views == "refuse"
    again = DataSchema.from_dict(json.loads(json.dumps(schema.to_dict())))
    assert again == schema
    # A schema written before views existed reads as single-view.
    old = {k: v for k, v in schema.to_dict().items() if k not in ("views", "view_columns")}
    old.pop("missing_views")
    old["image_column"] = "imgpath"
    legacy = DataSchema.from_dict(old)
    assert not legacy.multiview and legacy.image_columns == ["imgpath"]


def test_missing_view_is_refused_with_column_and_lines(gappy_csv):
    frame = pd.read_csv(gappy_csv)
    lines = [i + 2 for i in np.flatnonzero(frame["imgpath_lateral"].isna())]
    with pytest.raises(NervusInputError) as err:
        NervusDataModule(gappy_csv, image_size=SIZE)
    message = str(err.value)
    assert "'imgpath_lateral'" in message and "10 missing value(s)" in message
    assert f"lines {', '.join(map(str, lines[:5]))} and 5 more" in message
    assert "data.missing_views=allow" in message


def test_case_without_any_view_or_tabular_input_is_refused(gappy_csv, tmp_path):
    frame = pd.read_csv(gappy_csv)
    frame["imgpath_frontal"] = frame["imgpath_frontal"].where(frame["imgpath_lateral"].notna())
    frame["imgpath_frontal"] = str(gappy_csv.parent) + "/" + frame["imgpath_frontal"]
    frame["imgpath_lateral"] = str(gappy_csv.parent) + "/" + frame["imgpath_lateral"]
    csv = tmp_path / "none.csv"
    frame.to_csv(csv, index=False)
    with pytest.raises(NervusInputError, match=r"10 case\(s\) have no image in any view column"):
        NervusDataModule(csv, image_size=SIZE, missing_views="allow", use_tabular=False)
    # With tabular inputs those cases still have something to predict from.
    NervusDataModule(csv, image_size=SIZE, missing_views="allow")


def test_bad_missing_views_option_is_refused(complete_csv):
    with pytest.raises(NervusInputError, match=r"data.missing_views must be one of"):
        NervusDataModule(complete_csv, image_size=SIZE, missing_views="skip")


def test_unreadable_view_file_is_named_with_its_column(complete_csv, tmp_path):
    frame = pd.read_csv(complete_csv)
    frame["imgpath_frontal"] = str(complete_csv.parent) + "/" + frame["imgpath_frontal"]
    frame["imgpath_lateral"] = str(complete_csv.parent) + "/" + frame["imgpath_lateral"]
    frame.loc[3, "imgpath_lateral"] = str(tmp_path / "gone.png")
    csv = tmp_path / "bad.csv"
    frame.to_csv(csv, index=False)
    with pytest.raises(NervusInputError, match=r"column 'imgpath_lateral'.*\n  CSV line 5: "):
        NervusDataModule(csv, image_size=SIZE)


# -- batches and the network -------------------------------------------------------------------
def test_batches_stack_views_in_schema_order(gappy_csv):
    dm = NervusDataModule(gappy_csv, image_size=SIZE, missing_views="allow", batch_size=40)
    batch = next(iter(dm.eval_dataloader(None)))
    assert batch["image"].shape == (40, 2, 1, SIZE, SIZE)
    present = pd.read_csv(gappy_csv)["imgpath_lateral"].notna().to_numpy()
    np.testing.assert_array_equal(batch["view_mask"][:, 1].numpy(), present)
    assert batch["view_mask"][:, 0].all()
    assert (batch["image"][~batch["view_mask"]] == 0).all()
    # The lateral view is the frontal file's neighbour, mirrored: not the frontal image again.
    assert not torch.equal(batch["image"][0, 0], batch["image"][0, 1])


def test_refuse_mode_batches_carry_no_mask(complete_csv):
    dm = NervusDataModule(complete_csv, image_size=SIZE, batch_size=8)
    batch = next(iter(dm.eval_dataloader("train")))
    assert batch["image"].shape == (8, 2, 1, SIZE, SIZE) and "view_mask" not in batch


def test_shared_extractor_has_one_set_of_weights_per_view_otherwise(complete_csv):
    dm = NervusDataModule(complete_csv, image_size=SIZE)
    shared, separate = _module(dm.schema, True), _module(dm.schema, False)
    one = sum(p.numel() for p in shared.net.image_extractor.parameters())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(separate) - count(shared) == one  # two views: one more extractor
    assert shared.net.view_extractors is None and len(separate.net.view_extractors) == 2
    assert separate.net.image_extractor is None
    a, b = separate.net.view_extractors
    assert a is not b and all(
        p.data_ptr() != q.data_ptr() for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


def test_mixer_gets_one_block_per_view_then_tabular(complete_csv):
    dm = NervusDataModule(complete_csv, image_size=SIZE, batch_size=4)
    module = _tiny_module(dm.schema).eval()
    net = module.net
    assert net.modalities() == ["image/frontal", "image/lateral", "tabular"]
    assert net.block_sizes() == [4, 4, net.tabular_extractor.out_features]
    assert net.mixer.net[0].in_features == sum(net.block_sizes())
    batch = next(iter(dm.eval_dataloader("train")))
    with torch.no_grad():
        blocks = net.view_features(batch["image"])
        assert len(blocks) == 2 and all(b.shape == (4, 4) for b in blocks)
        # One view run live with the other fixed gives the same outputs as the whole net.
        alone = net.image_extractor(batch["image"][:, 1]).flatten(1)
        torch.testing.assert_close(alone, blocks[1])
        fused = net.fuse([blocks[0], alone, net.tabular_features(batch["tabular"])])
        for got, want in zip(fused, module(batch), strict=True):
            torch.testing.assert_close(got, want)


def test_image_only_views_are_mixed_and_single_view_nets_are_unchanged(complete_csv):
    dm = NervusDataModule(complete_csv, image_size=SIZE, use_tabular=False)
    assert _module(dm.schema).net.mixer is not None  # two views are two blocks
    extractor = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIZE * SIZE, 5))
    extractor.out_features = 5
    net = NervusNet([2], image_extractor=extractor)
    assert net.mixer is None and set(net.state_dict()) == {
        "image_extractor.1.weight",
        "image_extractor.1.bias",
        "heads.0.weight",
        "heads.0.bias",
    }
    assert net(torch.rand(3, 1, SIZE, SIZE))[0].shape == (3, 2)


def test_missing_view_uses_the_learned_embedding(gappy_csv):
    dm = NervusDataModule(gappy_csv, image_size=SIZE, missing_views="allow", batch_size=8)
    module = _tiny_module(dm.schema)
    embedding = module.net.missing_view_features
    assert len(embedding) == 2 and embedding[1].shape == (4,)
    module.eval()
    image = torch.rand(2, 2, 1, SIZE, SIZE)
    other = image.clone()
    other[:, 1] = torch.rand(2, 1, SIZE, SIZE)
    tabular = torch.tensor([[60.0], [70.0]])
    mask = torch.tensor([[True, False], [True, False]])
    with torch.no_grad():
        a = module.net(image, tabular, view_mask=mask)[0]
        b = module.net(other, tabular, view_mask=mask)[0]
        c = module.net(other, tabular, view_mask=torch.ones(2, 2, dtype=torch.bool))[0]
        torch.testing.assert_close(a, b)  # the absent view's pixels do not matter...
        assert not torch.allclose(b, c)  # ...but they do when the view is present
        torch.testing.assert_close(
            module.net.view_features(other, mask)[1], embedding[1].expand(2, -1)
        )
    # The embedding is learned: cases without the view send it a gradient, others do not.
    module.train()
    module.net(image, tabular, view_mask=mask)[0].sum().backward()
    assert embedding[1].grad is not None and embedding[1].grad.abs().sum() > 0
    assert embedding[0].grad is None or embedding[0].grad.abs().sum() == 0


# -- end to end --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_gappy(gappy_csv, tmp_path_factory):
    """A fused (two views + tabular) model trained with missing views allowed."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    cfg = compose_config(
        [f"data.csv={gappy_csv}", *FAST, "data.missing_views=allow", "evaluation.n_bootstrap=0"]
    )
    train(train_settings(cfg), run)
    return run, json.loads((run / "summary.json").read_text())["best_checkpoint"]


def test_train_then_predict_from_the_checkpoint_gives_the_same_probabilities(
    trained_gappy, gappy_csv, tmp_path
):
    run, ckpt = trained_gappy
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    schema = saved["hyper_parameters"]["schema"]
    assert schema["views"] == ["frontal", "lateral"] and schema["missing_views"] == "allow"
    assert json.loads((run / "schema.json").read_text())["views"] == ["frontal", "lateral"]
    assert any(k.startswith("net.missing_view_features") for k in saved["state_dict"])

    predict(ckpt, gappy_csv, tmp_path / "pred", batch_size=7, num_workers=0, device="cpu")
    at_training = pd.read_csv(run / "predictions.csv")
    again = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    columns = [c for c in at_training.columns if c.startswith("prob_")]
    assert columns and list(again["uniqID"]) == list(at_training["uniqID"])
    np.testing.assert_allclose(again[columns], at_training[columns], atol=1e-6)


def test_onnx_export_of_a_two_view_model_matches_pytorch(trained_gappy, gappy_csv, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    _, ckpt = trained_gappy
    model_file, contract_file = export_model(ckpt, "onnx", out=tmp_path / "mv.onnx")
    contract = json.loads(contract_file.read_text())
    assert [v["view"] for v in contract["views"]] == ["frontal", "lateral"]
    image, _, mask = contract["inputs"]
    assert image["shape"] == ["batch", 2, 1, SIZE, SIZE] and mask["name"] == "view_mask"
    module = NervusModule.load_from_checkpoint(ckpt, map_location="cpu")
    dm = NervusDataModule(gappy_csv, schema=module.schema, image_size=SIZE, batch_size=16)
    loader = dm.predict_dataloader()
    expected = module.infer(loader, "cpu")[0]
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    got, masks = [], []
    for batch in loader:
        masks.append(batch["view_mask"])
        feeds = {
            "image": batch["image"].numpy(),
            "tabular": batch["tabular"].numpy(),
            "view_mask": batch["view_mask"].numpy(),
        }
        got.append(session.run(None, feeds)[0])
    assert not torch.cat(masks).all()  # absent laterals went through the graph
    np.testing.assert_allclose(np.concatenate(got), expected, atol=1e-4, rtol=0)


def test_predict_refuses_a_csv_without_a_trained_view(trained_gappy, gappy_csv, tmp_path):
    _, ckpt = trained_gappy
    frame = pd.read_csv(gappy_csv).drop(columns=["imgpath_lateral"])
    frame["imgpath_frontal"] = str(gappy_csv.parent) + "/" + frame["imgpath_frontal"]
    csv = tmp_path / "frontal_only.csv"
    frame.to_csv(csv, index=False)
    with pytest.raises(NervusInputError) as err:
        predict(ckpt, csv, tmp_path / "out", device="cpu")
    message = str(err.value)
    assert "trained on the views frontal (imgpath_frontal), lateral (imgpath_lateral)" in message
    assert "lacks the column(s) ['imgpath_lateral']" in message


def test_preview_writes_one_png_per_view(gappy_csv, tmp_path):
    dm = NervusDataModule(gappy_csv, image_size=SIZE, missing_views="allow")
    written = write_preview(dm, tmp_path, split="train", n=6)
    frame = dm.split_frame("train").head(6)
    expected = {
        f"{row.uniqID}__{view}.png"
        for row in frame.itertuples()
        for view, present in (("frontal", True), ("lateral", pd.notna(row.imgpath_lateral)))
        if present
    }
    assert {p.name for p in written[:-1]} == expected and written[-1].name == "sheet.png"
    # Each file is that view's network input, 0 -> black, 1 -> white.
    first = frame.uniqID.iloc[0]
    png = np.asarray(Image.open(tmp_path / f"{first}__frontal.png"))
    want = np.rint(dm.dataset("train")[0]["image"][0, 0].numpy() * 255)
    np.testing.assert_array_equal(png, want)
