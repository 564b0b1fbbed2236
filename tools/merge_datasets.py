"""Merge several dataset.json files into one (e.g. catheter and guide-wire phantoms for one model).

Usage: ``python tools/merge_datasets.py OUT.json IN1.json IN2.json ...``. Every section (training,
unlabeled, test) is concatenated in argument order; paths become absolute, so OUT can live anywhere.
Labels must agree; a case name (the image's file name) found twice is refused by the dataset check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SECTIONS = ("training", "unlabeled", "test")


def merge(inputs: list[Path]) -> dict:
    """One dataset dict holding every case of ``inputs``, with absolute paths."""
    merged: dict = {
        "name": "+".join(p.parent.name for p in inputs),
        "description": "merged",
        **{s: [] for s in SECTIONS},
    }
    for path in inputs:
        data = json.loads(path.read_text())
        if merged.setdefault("labels", data["labels"]) != data["labels"]:
            raise SystemExit(f"error: {path} has labels {data['labels']}, not {merged['labels']}")
        merged.setdefault("modality", data.get("modality", {"0": ""}))
        for section in SECTIONS:
            for entry in data.get(section, []):
                entry = dict(entry)
                for key in ("image", "label"):
                    if key in entry:
                        entry[key] = str((path.parent / entry[key]).resolve())
                merged[section].append(entry)
    return merged


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    out, inputs = Path(argv[1]), [Path(a) for a in argv[2:]]
    merged = merge(inputs)
    out.write_text(json.dumps(merged, indent=1))
    print(f"wrote {out}: " + ", ".join(f"{len(merged[k])} {k}" for k in SECTIONS))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
