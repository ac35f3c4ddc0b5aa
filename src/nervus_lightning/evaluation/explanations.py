"""The report's explanations: Grad-CAM galleries and the attribution chart of each label.

When a run folder holds explanations (``explain/``, written by ``python -m
nervus_lightning.explain`` or ``explain.after_training``), :func:`explanations` reads its
``cases.csv`` (one overlay per explained case and view) and ``attribution.csv`` (how much each
input moved the output) and turns them into a small gallery per label (true/false positives,
correct/wrong, highest/lowest output) and a bar chart added to the label's figures.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nervus_lightning.evaluation import plots
from nervus_lightning.evaluation.report_page import data_uri
from nervus_lightning.evaluation.sections import LabelSection, safe_name

_GALLERY_SIZE = 4


def explanations(
    explain_dir: Path, sections: list[LabelSection], out_dir: Path
) -> dict[str, list[dict]]:
    """Per label, the gallery rows of its Grad-CAM overlays (from ``cases.csv``); the chart of
    ``attribution.csv`` is added to the label's figures. Nothing when the files are absent."""
    attribution_path = explain_dir / "attribution.csv"
    if attribution_path.is_file():
        attribution = pd.read_csv(attribution_path, dtype={"label": str, "input": str})
        for section in sections:
            rows = attribution[attribution["label"] == section.name]
            if rows.empty:
                continue
            png = plots.save_figure(
                _attribution_chart(rows),
                out_dir / "figures" / safe_name(section.name) / "attribution.png",
            )
            n = int(rows["cases"].iloc[0])
            section.figures.append(
                (
                    f"How much each input moved the explained output (mean |Integrated Gradients| "
                    f"over {n} case(s), baseline a black image and the training mean of each "
                    "input; an image (or view) is the sum over its pixels).",
                    png,
                )
            )
    cases_path = explain_dir / "cases.csv"
    if not cases_path.is_file():
        return {}
    text = {c: str for c in ("uniqID", "split", "label", "explained", "truth")}
    cases = pd.read_csv(cases_path, dtype=text, keep_default_na=False, na_values={"truth": [""]})
    # One overlay column per view (``overlay_<view>``), or ``overlay`` for a single image.
    views = [c.removeprefix("overlay_") for c in cases.columns if c.startswith("overlay_")]
    columns = [f"overlay_{v}" for v in views] or ["overlay"]
    if not set(columns) <= set(cases.columns):
        return {}
    overlays = cases[columns].fillna("").astype(str)
    galleries = {}
    for section in sections:
        rows = cases[(cases["label"] == section.name) & (overlays != "").any(axis=1)]
        groups = _gallery_groups(rows, section.info.get("classes"), section.info.get("positive"))
        galleries[section.name] = [
            {
                "title": title,
                "cases": [
                    {
                        "views": [
                            {
                                "name": view,
                                "src": data_uri(explain_dir / overlays.at[index, column])
                                if overlays.at[index, column]
                                else None,
                            }
                            for view, column in zip(views or [None], columns, strict=True)
                        ],
                        "caption": f"{row.uniqID} ({row.split}): {row.explained} "
                        f"{row.score:.3g}" + ("" if pd.isna(row.truth) else f", true {row.truth}"),
                    }
                    for index, row in chosen.head(_GALLERY_SIZE).iterrows()
                ],
            }
            for title, chosen in groups
            if not chosen.empty
        ]
    return galleries


def _gallery_groups(
    rows: pd.DataFrame, classes: list[str] | None, positive: str | None
) -> list[tuple[str, pd.DataFrame]]:
    """(title, cases most confident first) of a label's explained cases."""
    by_score = rows.sort_values("score", ascending=False, kind="stable")
    known = by_score[by_score["truth"].notna()]
    if positive is not None:
        said = known["explained"] == positive
        truly = known["truth"] == positive
        return [
            ("True positives", known[said & truly]),
            ("False positives", known[said & ~truly]),
            ("False negatives", known[~said & truly]),
        ]
    if classes:
        right = known["explained"] == known["truth"]
        return [("Correct", known[right]), ("Wrong", known[~right])]
    return [("Highest output", by_score), ("Lowest output", by_score.iloc[::-1])]


def _attribution_chart(rows: pd.DataFrame):
    rows = rows.iloc[::-1]  # largest at the top
    fig = plots.new_figure(5.0, 0.45 * len(rows) + 1.2)
    ax = fig.add_subplot()
    ax.barh(rows["input"], rows["mean_abs_attribution"], color="#4a6fa5")
    for y, (value, share) in enumerate(
        zip(rows["mean_abs_attribution"], rows["share"], strict=True)
    ):
        ax.text(value, y, f" {share:.0%}", va="center", fontsize=8)
    ax.set_xlabel("mean |attribution| (output units)")
    ax.margins(x=0.15)
    return fig
