#!/usr/bin/env python
"""Re-render every model card's Markdown (``NAME.card.md``) from its JSON (``NAME.card.json``) and recipe, so
that a change in how cards are written reaches the shipped models without retraining them.

    python scripts/render_cards.py
"""

from __future__ import annotations

from pathlib import Path

from faithverify.train.run import ModelCard, recipe_of, render_card

MODELS = Path(__file__).resolve().parents[1] / "models"


def main() -> None:
    for path in sorted(MODELS.glob("*/*.card.json")):
        card = ModelCard.read(path)
        recipe = recipe_of(card)
        if recipe is None:
            print(f"skipped {path.parent.name}/{card.file}: written by an older faithverify (retrain it)")
            continue
        path.with_name(path.name.replace(".card.json", ".card.md")).write_text(render_card(card, recipe))
        print(f"rendered {path.parent.name}/{card.file}")


if __name__ == "__main__":
    main()
