"""Regenerate the Python modules of the .proto files in this folder (needs grpcio-tools).

    python -m fedpeft.protos.generate

The generated `*_pb2.py` modules are committed so that installing fedpeft needs no
compiler; tests/test_protos.py fails when they fall behind their .proto sources. Each
file is compiled under the import path `fedpeft/protos/<name>.proto`, so its name in
protobuf's global descriptor pool cannot clash with another package's.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto here into `out_dir`; returns the generated module paths."""
    from grpc_tools import protoc

    sources = sorted(HERE.glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-Ifedpeft/protos={HERE}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", *(f"fedpeft/protos/{s.name}" for s in sources)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {[s.name for s in sources]}")
        generated = []
        for path in sorted((Path(tmp) / "fedpeft" / "protos").iterdir()):
            if path.name.endswith("_pb2_grpc.py") and "service " not in _source_of(path).read_text():
                continue  # no service in that .proto: nothing to stub
            target = out_dir / path.name
            shutil.copyfile(path, target)
            generated.append(target)
        return generated


def _source_of(generated: Path) -> Path:
    return HERE / (generated.name.split("_pb2")[0] + ".proto")


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(path)
