"""A small synthetic HaluEval-QA file for calibration tests."""

import json
from pathlib import Path


def write_qa(path: Path, n_items: int, hallucinated: str = "The city {i} burned.") -> Path:
    """`n_items` QA items whose right answer is "The river {i} flooded." and whose hallucinated
    answer is `hallucinated` (formatted with i); contexts vary in length."""
    path.write_text("\n".join(json.dumps({
        "knowledge": f"Item {i} is about the year {1900 + 7 * i} and the river {i}." + " More text." * (i % 5),
        "question": f"What happened in {1900 + 7 * i}?",
        "right_answer": f"The river {i} flooded.", "hallucinated_answer": hallucinated.format(i=i),
    }) for i in range(n_items)))
    return path
