"""On PYTHONPATH with FEDPEFT_TEST_BLOCK_TORCH set, makes torch, transformers and peft
unimportable in the processes it names: "ray-workers" (a simulation's client workers, Ray's
default_worker.py; the simulation's own process, the server, keeps them) or "all".

Any import of them raises ModuleNotFoundError, and nothing is left in sys.modules (so
libraries that look there, such as datasets' pickler, see no torch loaded). The tests use
it to prove that device clients and nodes never need PyTorch: an import of it in a
blocked process fails the client's reply."""

import importlib.abc
import importlib.util
import os
import sys

_BLOCKED = ("torch", "transformers", "peft")
_WHERE = os.environ.get("FEDPEFT_TEST_BLOCK_TORCH")


class _Refuse(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name.split(".")[0] in _BLOCKED else None

    def create_module(self, spec):
        raise ModuleNotFoundError(f"{spec.name} is blocked in this process (FEDPEFT_TEST_BLOCK_TORCH={_WHERE})",
                                  name=spec.name)

    def exec_module(self, module):  # never reached: create_module refuses
        raise ModuleNotFoundError(module.__name__)


if _WHERE == "all" or (_WHERE == "ray-workers" and sys.argv and sys.argv[0].endswith("default_worker.py")):
    sys.meta_path.insert(0, _Refuse())
