#!/usr/bin/env python
"""Re-render every model card's Markdown (``NAME.card.md``) from its JSON (``NAME.card.json``) and recipe, so
that a change in how cards are written reaches the shipped models without retraining them.

    python scripts/render_cards.py
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from faithverify.train.recipes import Recipe
from faithverify.train.run import ModelCard, render_card

MODELS = Path(__file__).resolve().parents[1] / "models"


def main() -> None:
    for path in sorted(MODELS.glob("*/*.card.json")):
        card = ModelCard.read(path)
        known = {f.name for f in fields(Recipe)}
        if set(card.recipe) - known:
            print(f"skipped {path.parent.name}/{card.file}: written by an older faithverify (retrain it)")
            continue
        recipe = Recipe(**{**card.recipe, "eval_eps": tuple(card.recipe.get("eval_eps", ()))})
        path.with_name(path.name.replace(".card.json", ".card.md")).write_text(render_card(card, recipe))
        print(f"rendered {path.parent.name}/{card.file}")


if __name__ == "__main__":
    main()
