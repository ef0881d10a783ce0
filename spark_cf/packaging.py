"""Build the library as one zip for ``spark-submit --py-files`` (see README, "On a cluster").

python -m spark_cf.packaging dist/spark_cf.zip
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path


def build_zip(destination: str | Path) -> Path:
    """Zip every module of the ``spark_cf`` package (sorted, so the zip is reproducible)."""
    package = Path(__file__).resolve().parent
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(package.rglob("*.py")):
            info = zipfile.ZipInfo(
                str(Path("spark_cf") / path.relative_to(package)), date_time=(2020, 1, 1, 0, 0, 0)
            )
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    tmp.replace(destination)
    return destination


if __name__ == "__main__":
    out = build_zip(sys.argv[1] if len(sys.argv) > 1 else "dist/spark_cf.zip")
    print(out)
