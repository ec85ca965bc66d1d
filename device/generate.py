"""Generation and next-word suggestions on the device: ONNX Runtime's generation runtime
(onnxruntime-genai: KV cache, search, tokenizer; Android and iOS builds), no PyTorch.

A language-model export (export/genai.py) holds the runtime's model folder, whose LoRA
tensors are graph inputs defaulting to the plain base, and adapters as `.onnx_adapter`
files in the runtime's layout. `open_language_model` verifies the export as
device/predict.py does for classifiers and activates the adapter a device should use:
the export's (the release it was made from), a signed adapter export (`--adapter`), a
slot's release, or the device's own personal adapter, which the device trained in the
training graph's layout and which is converted here (device/genai_adapter.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime_genai as og
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tokenizers import Tokenizer

from fedpeft.core.errors import ConfigError, IntegrityError
from fedpeft.core.training.words import TOP_K, continues_word, fit_mask, starts_word
from fedpeft.core.trust.json_reader import JSONRefused, parse_json_object
from fedpeft.core.trust.signed_files import read_file

from .genai_adapter import by_key, genai_section, write_genai_adapter
from .onnx_adapter import read_onnx_adapter
from .personal_record import CheckedPersonal
from .predict import SlotRelease, adapter_file_for, open_export

ADAPTER_NAME = "active"
MAX_WORD_TOKENS = 12  # a suggested word is completed for at most this many tokens


class LanguageModel:
    """One onnxruntime-genai model folder and the adapters loaded onto it by name; every
    call says which adapter it runs with (None: the plain base)."""

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        try:
            config = parse_json_object(read_file(folder, "genai_config.json"), str(folder / "genai_config.json"))
            self.context_length = int(config["model"]["context_length"])
            self.eos_token_id = config["model"]["eos_token_id"]
        except (JSONRefused, KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{folder} is not a generation model folder: {exc}") from None
        try:
            self.model = og.Model(str(folder))
            self.tokenizer = og.Tokenizer(self.model)
            self.adapters = og.Adapters(self.model)
            self.vocabulary = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # noqa: BLE001 - onnxruntime-genai raises RuntimeError, tokenizers a bare Exception
            raise IntegrityError(f"{folder} does not load in onnxruntime-genai: {str(exc).splitlines()[0][-200:]}") from None
        self._word_masks: tuple[np.ndarray, np.ndarray] | None = None

    def load_adapter(self, path: Path, name: str, names: set[str] | None = None) -> None:
        """Load an `.onnx_adapter` as `name`, refused unless it holds exactly `names` (when
        given: a partial adapter would silently run the base's defaults for the rest) and
        runs: the runtime itself checks names and shapes only when it runs one."""
        if names is not None and set(read_onnx_adapter(path)) != names:
            raise IntegrityError(f"adapter {path} does not fit this export: its tensors are not the ones the "
                                 "export's adapter layout names")
        try:
            self.adapters.load(str(path), name)
            self.next_token_logits(self.encode(" "), name)
        except RuntimeError as exc:
            raise IntegrityError(f"adapter {path} does not load onto this model: "
                                 f"{str(exc).splitlines()[0][-200:]}") from None

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(np.asarray(ids, np.int32))

    def _generator(self, adapter: str | None, max_length: int, temperature: float = 0.0,
                   seed: int = 0) -> og.Generator:
        params = og.GeneratorParams(self.model)
        if temperature > 0:
            params.set_search_options(max_length=max_length, do_sample=True, temperature=temperature, top_k=50,
                                      random_seed=seed)
        else:
            params.set_search_options(max_length=max_length, do_sample=False)
        generator = og.Generator(self.model, params)
        if adapter is not None:
            try:
                generator.set_active_adapter(self.adapters, adapter)
            except RuntimeError as exc:
                raise IntegrityError(f"adapter {adapter!r} is not loaded: {exc}") from None
        return generator

    def generate(self, ids: Sequence[int], max_tokens: int, adapter: str | None, temperature: float = 0.0,
                 seed: int = 0) -> Iterator[int]:
        """The continuation of `ids`, token by token (greedy at temperature 0), up to
        `max_tokens` or the end-of-text token."""
        if not ids:
            raise ConfigError("the prompt is empty")
        max_length = min(len(ids) + max_tokens, self.context_length)
        if len(ids) >= max_length:
            raise ConfigError(f"the prompt has {len(ids)} tokens; this model's context holds {self.context_length}")
        generator = self._generator(adapter, max_length, temperature, seed)
        generator.append_tokens(list(ids))
        while not generator.is_done():
            generator.generate_next_token()
            yield int(generator.get_next_tokens()[0])

    def next_token_logits(self, ids: Sequence[int], adapter: str | None) -> np.ndarray:
        """Logits of the token after `ids`."""
        if not 0 < len(ids) < self.context_length:
            raise ConfigError(f"the text has {len(ids)} tokens; this model's context holds {self.context_length}")
        generator = self._generator(adapter, len(ids) + 1)
        generator.append_tokens(list(ids))
        return np.asarray(generator.get_logits(), np.float32).reshape(-1)

    def word_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts a word, continues a word) over the vocabulary, as core/training/words.py defines them."""
        if self._word_masks is None:
            decoded = self.vocabulary.decode_batch([[i] for i in range(self.vocabulary.get_vocab_size())])
            self._word_masks = (np.array([starts_word(d) for d in decoded]),
                                np.array([continues_word(d) for d in decoded]))
        return self._word_masks

    def next_words(self, text: str, adapter: str | None, k: int = TOP_K) -> list[str]:
        """The keyboard's suggestions after `text`: the k most likely tokens that start a word,
        each completed greedily while the most likely next token continues it (the procedure
        core/training/next_word.py scores)."""
        ids = self.encode(text.rstrip())[-(self.context_length - MAX_WORD_TOKENS - 1):]  # the latest context
        if not ids:
            raise ConfigError("the text is empty")
        starts, continues = self.word_masks()
        generator = self._generator(adapter, len(ids) + MAX_WORD_TOKENS + 1)
        generator.append_tokens(ids)
        logits = np.asarray(generator.get_logits(), np.float32).reshape(-1)
        logits = np.where(fit_mask(starts, len(logits)), logits, -np.inf)
        words = []
        for first in np.argsort(-logits, kind="stable")[:k]:
            if not np.isfinite(logits[first]):  # fewer than k tokens start a word
                break
            generator.rewind_to(len(ids))
            word = [int(first)]
            generator.append_tokens(word)
            while len(word) < MAX_WORD_TOKENS:
                best = int(np.asarray(generator.get_logits()).reshape(-1).argmax())
                if not fit_mask(continues, best + 1)[best]:
                    break
                word.append(best)
                generator.append_tokens([best])
            words.append(self.decode(word).strip())
        return words


class DeviceLanguageModel:
    """A verified language-model export with the adapter a device uses active."""

    def __init__(self, folder: Path, public_key: Ed25519PublicKey | None,
                 adapter: Path | SlotRelease | CheckedPersonal | None = None, with_adapter: bool = True,
                 base_id: str | None = None) -> None:
        folder = Path(folder)
        self.manifest = open_export(folder, public_key, base_id)
        if "genai" not in self.manifest:
            raise ConfigError(f"{folder} is not a language-model export (it has no generation model)")
        name, self.layout = genai_section(self.manifest, folder if public_key is not None else None)
        self.model = LanguageModel(folder / name)
        self.adapter: str | None = None
        self._scratch = tempfile.TemporaryDirectory(prefix="fedpeft-adapter-")  # a converted personal adapter
        if with_adapter:
            path, floor = adapter_file_for(folder, self.manifest, public_key, adapter)
            if isinstance(adapter, CheckedPersonal):
                path = self._converted(path)
            self.model.load_adapter(path, ADAPTER_NAME, {graph_name for graph_name, _ in self.layout.values()})
            self.adapter = ADAPTER_NAME
            if floor is not None:
                floor[0].record(floor[1])

    def _converted(self, personal: Path) -> Path:
        """A personal adapter (the training graph's names, PEFT layout) in the runtime's layout."""
        names = self.manifest.get("adapter_inputs")
        if not isinstance(names, dict):
            raise IntegrityError("the export names no training-graph inputs to read a personal adapter with")
        arrays = by_key(read_onnx_adapter(personal), names)
        path = Path(self._scratch.name) / "personal.onnx_adapter"
        write_genai_adapter(arrays, self.layout, path, 0)
        return path

    def generate(self, prompt: str, max_tokens: int, temperature: float = 0.0, seed: int = 0,
                 on_text: Callable[[str], None] | None = None) -> str:
        """The continuation of `prompt`; `on_text` receives it piece by piece as it is decoded."""
        stream = self.model.tokenizer.create_stream()
        pieces = []
        for token in self.model.generate(self.model.encode(prompt), max_tokens, self.adapter, temperature, seed):
            piece = stream.decode(token)
            pieces.append(piece)
            if on_text is not None and piece:
                on_text(piece)
        return "".join(pieces)

    def next_words(self, text: str) -> list[str]:
        return self.model.next_words(text, self.adapter)
