"""LoRA adapters held on one base model, for the serve engine.

    adapters = AdapterSet(base_model, base_folder, max_adapters=8)
    adapter = adapters.check("tickets", "runs/lora")   # reads files only: refuses what cannot be served
    adapters.load(adapter, busy=set())                  # weights into the model's LoRA slots
    adapters.add(adapter)                               # now served under its name
    model = adapters.forward([adapter, None])           # one batch: row 0 on the adapter, row 1 on the base

An adapter is the `adapter/` folder a `tuneforge train` run wrote (PEFT format, with the
tokenizer and chat template it was trained with, and `tuneforge.json` naming its base).
It is refused, with a reason, when it cannot share a batch with the others: trained on
another base model, a full fine-tune (a model of its own), or a method that is not plain
LoRA on Linear layers (prefix/prompt tuning add virtual tokens; IA3, DoRA, trained biases
and modules_to_save change more than a low-rank term). QLoRA adapters are plain LoRA on the
same base and are served on its float weights.

Every adapter loaded is known (listed, servable, its tokenizer kept); at most
`max_adapters` of them hold weights, least recently used evicted first. A request for an
evicted adapter loads it again from its folder before its prefill. An adapter that rows of
the running batch use is never evicted, so while more distinct adapters are in flight than
the limit, more are held; the set shrinks back at the next idle moment.

The file-only checks (`check_adapter_files`, `adapter_tokenizer`) are module functions, so the
vLLM engine (`inference.vllm_engine`) refuses the same adapters with the same codes.

Each load gets a fresh key (`a0`, `a1`, ...), distinct from the served name, so an
adapter loaded again under the same name (an update) never clashes with the old weights
that requests already running still use; those are deleted when their last row leaves.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from tuneforge.errors import Problem, TuneforgeError
from tuneforge.inference.lora import LoraSlots, read_lora
from tuneforge.models import template
from tuneforge.models.resolve import resolve_model
from tuneforge.models.tuned import artifact_dir, base_of

@dataclass(eq=False)
class Adapter:
    name: str  # the served name
    folder: Path  # RUN/adapter
    tokenizer: Any  # for rendering prompts (the server's)
    decoder: Any  # a copy for the engine thread: a Rust tokenizer shared across threads can raise "Already borrowed"
    stop_ids: list[int]
    key: str  # this load's key in the LoRA slots
    method: str = "lora"
    retired: bool = field(default=False)  # unloaded or replaced: no new requests, weights go when idle


class AdapterSet:
    def __init__(self, base_model, base_folder: Path, max_adapters: int):
        self.base_model = base_model
        self.base_folder = Path(base_folder)
        self.max_adapters = max_adapters
        self.slots = LoraSlots(base_model)  # the LoRA terms of the held adapters, per row
        self.known: dict[str, Adapter] = {}  # served name -> current adapter
        self.held: OrderedDict[str, Adapter] = OrderedDict()  # key -> adapter, least recently used first
        self._keys = (f"a{i}" for i in itertools.count())

    # -- registry (no weights) --------------------------------------------------------

    def check(self, name: str, path: str | Path) -> Adapter:
        """Read a run folder and refuse what cannot share a batch on this base."""
        files = check_adapter_files(path, self.base_folder)
        tokenizer, stops = adapter_tokenizer(files.folder, self.base_model.get_input_embeddings().num_embeddings,
                                             self.base_model.generation_config.eos_token_id, str(path))
        return Adapter(name, files.folder, tokenizer, copy.deepcopy(tokenizer), stops, next(self._keys), files.method)

    def _check_shapes(self, folder: Path, where: str) -> None:
        """Every LoRA matrix must fit the base layer it names. Checked from the file's header
        before reading the weights, so a misfit is named (which tensor, which shape) rather
        than failing inside a matmul."""
        layers = dict(self.base_model.named_modules())
        with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
            for key in f.keys():
                name, _, part = key.partition(".lora_")
                if part not in ("A.weight", "B.weight"):
                    continue  # anything else is refused by read_lora
                layer = layers.get(name.removeprefix("base_model.model."))
                shape = f.get_slice(key).get_shape()
                fits = layer is not None and hasattr(layer, "in_features") and (
                    shape[1] == layer.in_features if part == "A.weight" else shape[0] == layer.out_features)
                if not fits:
                    raise TuneforgeError(Problem(
                        "base_mismatch", f"the adapter's {key} (shape {list(shape)}) does not fit this base model; "
                        "it was trained on another model", where))

    def add(self, adapter: Adapter) -> Adapter | None:
        """Serve `adapter` under its name; returns the adapter it replaces (now retired)."""
        old = self.known.get(adapter.name)
        if old is not None:
            old.retired = True
        self.known[adapter.name] = adapter
        return old

    def remove(self, name: str) -> Adapter:
        adapter = self.known.pop(name, None)
        if adapter is None:
            raise TuneforgeError(Problem("model_not_found", f"no adapter named '{name}' is loaded", name))
        adapter.retired = True
        return adapter

    # -- weights (the caller holds the engine's model lock) ----------------------------

    def load(self, adapter: Adapter, busy: set[str]) -> None:
        """Make `adapter`'s weights resident (most recently used), evicting idle ones past the limit."""
        if adapter.key in self.held:
            self.held.move_to_end(adapter.key)
            return
        try:
            self._check_shapes(adapter.folder, str(adapter.folder))
            config = _read_json(adapter.folder / "adapter_config.json", str(adapter.folder))
            weights, scales = read_lora(load_file(str(adapter.folder / "adapter_model.safetensors")), config)
            self.slots.add(adapter.key, weights, scales)
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:  # a file gone or changed
            raise TuneforgeError(Problem(
                "adapter_load_failed", f"cannot load the adapter's weights ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); was it trained on this base model?",
                str(adapter.folder))) from None
        self.held[adapter.key] = adapter
        self.shrink(busy | {adapter.key})

    def shrink(self, busy: set[str]) -> None:
        """Free the weights of retired adapters and of least recently used ones past the
        limit, except those `busy` (used by rows in flight)."""
        for key, adapter in list(self.held.items()):
            if adapter.retired and key not in busy:
                self._delete(key)
        for key in list(self.held):
            if len(self.held) <= self.max_adapters:
                break
            if key not in busy:
                self._delete(key)

    def _delete(self, key: str) -> None:
        del self.held[key]
        self.slots.remove(key)

    def forward(self, rows: list[Adapter | None]) -> Any:
        """The model to call for a batch whose rows use `rows` (None: the base model), routed
        so that each row gets its own adapter's LoRA terms (inference.lora)."""
        self.slots.route([None if a is None else a.key for a in rows])
        return self.base_model


# -- checks on an adapter's files (shared with inference.vllm_engine) -----------------------


@dataclass
class AdapterFiles:
    folder: Path  # RUN/adapter
    config: dict[str, Any]  # adapter_config.json
    method: str  # from tuneforge.json: lora, qlora, ...


def check_adapter_name(name: Any, base: str, where: str) -> None:
    if not isinstance(name, str) or not name.strip() or name == base:
        raise TuneforgeError(Problem("invalid_name", f"an adapter cannot be named {name!r} (empty, the base "
                                     "model's name or reserved); pick another name", where))


def check_adapter_files(path: str | Path, base_folder: Path) -> AdapterFiles:
    """Read a run folder's adapter files and refuse what cannot share a batch on the base in
    `base_folder`: a full model, a method other than plain LoRA, another base, no weights."""
    folder = artifact_dir(Path(path))
    where = str(path)
    if not (folder / "adapter_config.json").exists():
        raise TuneforgeError(Problem(
            "not_an_adapter", "this is a full model (a full fine-tune or a merged model), not an adapter on "
            "the served base; serve it on its own with `tuneforge serve --model " + str(folder) + "`", where))
    config = _read_json(folder / "adapter_config.json", where)
    marker = folder / "tuneforge.json"
    method = _read_json(marker, where).get("method", "lora") if marker.exists() else "lora"
    variants = _lora_variants(config)
    if config.get("peft_type") != "LORA" or variants:
        kind = f"LoRA with {', '.join(variants)}" if variants else f"{config.get('peft_type')}"
        raise TuneforgeError(Problem(
            "adapter_not_mixable", f"a '{method}' adapter ({kind}) cannot share a batch with other adapters "
            "(only plain LoRA and QLoRA adapters can); merge it with `tuneforge merge` and serve the merged "
            "model with --model, or train it with method lora", where))
    _check_base(base_of(folder), Path(base_folder), where)
    if not (folder / "adapter_model.safetensors").exists():
        raise TuneforgeError(Problem("not_an_adapter", "no adapter_model.safetensors next to adapter_config.json; "
                                     "pass a run folder written by `tuneforge train`", where))
    return AdapterFiles(folder, config, method)


def adapter_tokenizer(folder: Path, rows: int, eos: Any, where: str) -> tuple[Any, list[int]]:
    """The tokenizer an adapter was trained with (its chat template) and the ids that end its
    answers; refused when it has more tokens than the base embeds (`rows`). `eos`: the base's
    generation config eos_token_id."""
    from transformers import AutoTokenizer

    tokenizer = template.ensure_pad(AutoTokenizer.from_pretrained(str(folder)))
    if len(tokenizer) > rows:
        raise TuneforgeError(Problem(
            "tokenizer_mismatch", f"the adapter's tokenizer has {len(tokenizer)} tokens but the base model "
            f"embeds {rows}; it was trained with added tokens this engine cannot serve", where))
    return tokenizer, template.stop_ids(tokenizer, eos)


def _check_base(recorded: str, base_folder: Path, where: str) -> None:
    ours = base_folder.resolve()
    path = Path(recorded).expanduser()
    if path.exists():
        same = path.resolve() == ours
    else:  # trained elsewhere (another machine's cache): the model's folder name is what can be compared
        try:
            same = resolve_model(recorded).resolve() == ours
        except TuneforgeError:
            same = path.name == ours.name
    if not same:
        raise TuneforgeError(Problem(
            "base_mismatch", f"this adapter was trained on '{recorded}', but the server's base model is "
            f"'{base_folder}'; serve it with --model {recorded}, or train it on this base", where))


def _read_json(path: Path, where: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TuneforgeError(Problem("not_an_adapter", f"cannot read {path.name} ({exc})", where)) from None
    if not isinstance(data, dict):
        raise TuneforgeError(Problem("not_an_adapter", f"{path.name} is not a JSON object", where))
    return data


def _lora_variants(config: dict[str, Any]) -> list[str]:
    """What the adapter's config turns on beyond a plain low-rank term (DoRA, aLoRA, trained
    biases, modules_to_save, ...): the serve engine applies plain LoRA only."""
    from peft import LoraConfig

    found = []
    for f in dataclasses.fields(LoraConfig):
        value = config.get(f.name)
        if f.metadata.get("is_lora_variant") and value:
            found.append(f.name)
        elif f.name == "init_lora_weights" and isinstance(value, str) and value in f.metadata.get("lora_variants", ()):
            found.append(f"init_lora_weights={value}")
    # extras that add more than A and B matrices on Linear layers
    if config.get("bias", "none") != "none":
        found.append(f"bias={config['bias']}")
    for extra in ("lora_bias", "modules_to_save", "trainable_token_indices", "target_parameters", "fan_in_fan_out",
                  "layer_replication"):
        if config.get(extra) and extra not in found:
            found.append(extra)
    return found
