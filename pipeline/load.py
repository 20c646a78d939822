"""Load a model: a ``torch.export`` archive, a ``pkg.module:factory`` reference,
or (only with ``trust=True``) a pickled ``nn.Module``.

Unpickling runs arbitrary code, so nothing here unpickles unless the user asked
for it: a ``torch.export`` archive is checked for pickled payloads before
``torch.export.load`` sees it.
"""

from __future__ import annotations

import importlib
import io
import json
import re
import sys
import zipfile
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from optc.errors import InputError, LoadError, first_line

if TYPE_CHECKING:
    import torch

_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_DTYPES = ("float32", "float16", "int64", "int32", "bool")
_DIM_RE = re.compile(r"^-?[0-9]{1,12}$")
MAX_INPUT_ELEMENTS = 2**31  # 8 GiB of float32: beyond that an example input is a typo


@dataclass
class Model:
    """A PyTorch model ready to lower: an eager module and its example inputs."""

    module: "torch.nn.Module"
    example_inputs: tuple["torch.Tensor", ...]
    source: str
    exported: Any = None  # torch.export.ExportedProgram, when loaded from an archive

    def export(self) -> Any:
        """The model as a ``torch.export.ExportedProgram`` (exported once)."""
        if self.exported is None:
            import torch

            try:
                self.exported = torch.export.export(self.module, self.example_inputs)
            except Exception as e:  # torch raises many types here
                raise LoadError(f"torch.export failed for {self.source}: {first_line(e)}") from None
        return self.exported


def parse_input_shape(spec: str) -> tuple[tuple[int, ...], str]:
    """``"1x3x32x32"`` or ``"2x16:int64"`` -> (shape, dtype name)."""
    shape_s, _, dtype = spec.partition(":")
    dtype = dtype or "float32"
    if dtype not in _DTYPES:
        raise InputError(f"--input-shape {spec!r}: dtype must be one of {', '.join(_DTYPES)}")
    dims = shape_s.lower().split("x")
    if not all(_DIM_RE.match(d) for d in dims):  # ASCII digits only: int() also takes "１６", "1_6", " 16"
        raise InputError(f"--input-shape {spec!r}: expected dimensions like 1x3x32x32[:dtype]")
    shape = tuple(int(d) for d in dims)
    if any(d <= 0 for d in shape):
        raise InputError(f"--input-shape {spec!r}: every dimension must be a positive integer")
    if prod(shape) > MAX_INPUT_ELEMENTS:
        raise InputError(f"--input-shape {spec!r}: {prod(shape):,} elements is too large (at most {MAX_INPUT_ELEMENTS:,} per input)")
    return shape, dtype


def make_inputs(specs: Sequence[str], seed: int = 0) -> tuple["torch.Tensor", ...]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for spec in specs:
        shape, dtype = parse_input_shape(spec)
        if dtype.startswith("float"):
            out.append(torch.randn(shape, generator=gen).to(getattr(torch, dtype)))
        elif dtype == "bool":
            out.append(torch.randint(0, 2, shape, generator=gen).bool())
        else:
            out.append(torch.randint(0, 8, shape, generator=gen).to(getattr(torch, dtype)))
    return tuple(out)


def load_model(spec: str, *, trust: bool = False, input_shapes: Sequence[str] = ()) -> Model:
    """Load ``spec`` (a path or a ``pkg.module:factory`` reference)."""
    path = Path(spec)
    if not path.exists() and _FACTORY_RE.match(spec):
        return _load_factory(spec, input_shapes)
    if not path.exists():
        raise LoadError(f"model file not found: {spec}")
    if path.is_dir():
        raise LoadError(f"{spec} is a directory; expected a .pt2 archive or a pkg.module:factory reference")
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as e:
        raise LoadError(f"cannot read {spec}: {e.strerror}") from None
    with open(path, "rb") as f:
        head = f.read(30)
        first_name = f.read(int.from_bytes(head[26:28], "little")) if head[:4] == b"PK\x03\x04" else b""
    if head[:4] == b"PK\x03\x04" and not is_zip:
        raise LoadError(f"{spec} is a corrupt or truncated archive (no zip directory)")
    if not is_zip:
        if head[:1] == b"\x80":  # legacy (non-zip) torch.save / pickle
            return _load_pickle(path, trust, input_shapes)
        raise LoadError(
            f"{spec} is not a model optc can read (expected a torch.export archive .pt2/.pt, "
            "a pickled nn.Module with --trust, or a pkg.module:factory reference)"
        )
    try:
        names = zipfile.ZipFile(path).namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise LoadError(f"{spec} is a corrupt or truncated archive: {e}") from None
    if first_name and first_name.decode(errors="replace") not in names:
        # The outer zip's directory is missing and zipfile found a zip stored inside
        # it (torch.export stores sample inputs as an uncompressed zip).
        raise LoadError(f"{spec} is a corrupt or truncated archive (its zip directory does not match its entries)")
    if any(n.endswith("/archive_format") for n in names):
        return _load_export_archive(path, names, trust, input_shapes)
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        raise LoadError(
            f"{spec} is a TorchScript archive, which optc does not read; "
            "save the model with torch.export.save instead"
        )
    if any(n.endswith("data.pkl") for n in names):
        return _load_pickle(path, trust, input_shapes)
    raise LoadError(f"{spec} is a zip file but not a torch.export archive or a torch.save file")


def _load_export_archive(path: Path, names: list[str], trust: bool, input_shapes: Sequence[str]) -> Model:
    import torch

    if not trust:
        pickled = _pickled_payloads(path, names)
        if pickled:
            raise LoadError(
                f"{path} holds pickled objects ({', '.join(pickled[:3])}); unpickling runs code, "
                "so optc loads it only with --trust"
            )
    try:
        ep = torch.export.load(str(path))
    except Exception as e:
        raise LoadError(f"{path} is a corrupt or truncated torch.export archive: {first_line(e)}") from None
    archived = tuple((ep.example_inputs or ((), {}))[0])
    inputs = make_inputs(input_shapes) if input_shapes else archived
    if not inputs:
        raise LoadError(f"{path} carries no example inputs; pass --input-shape (e.g. 1x3x32x32)")
    same = len(inputs) == len(archived) and all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(inputs, archived))
    # at other shapes the export is redone from the graph (one that fixes its shapes fails there, in one line)
    return Model(module=_unguarded_module(ep), example_inputs=inputs, source=str(path), exported=ep if same else None)


def _unguarded_module(ep: Any) -> "torch.nn.Module":
    """The archive's graph as an eager module without the checks ``ep.module()`` puts
    around it (a guard call in the graph, or with ``check_guards=False`` a pre-hook)
    that its inputs have the export's shapes, so that the model can be re-exported at
    another batch (``--batch``); a graph that fixes its batch still fails there."""
    import torch

    guarded = ep.module(check_guards=False)
    return torch.fx.GraphModule(guarded, guarded.graph)  # a copy keeps the graph and weights, not the hooks


def _pickled_payloads(path: Path, names: list[str]) -> list[str]:
    """Entries that ``torch.export.load`` would unpickle with arbitrary code execution."""
    import torch

    found: list[str] = []
    try:
        with zipfile.ZipFile(path) as zf:
            for n in names:
                if n.endswith(("model_weights_config.json", "model_constants_config.json")):
                    config = json.loads(zf.read(n)).get("config", {})
                    for key, meta in config.items():
                        if meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(
                            ("weight_", "tensor_", "constant_")
                        ):
                            found.append(key)
                elif "/sample_inputs/" in n:
                    try:
                        torch.load(io.BytesIO(zf.read(n)), weights_only=True)
                    except Exception:
                        found.append(n.split("/", 1)[-1])
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        raise LoadError(f"{path} is a corrupt or truncated torch.export archive: {e}") from None
    return found


def _load_pickle(path: Path, trust: bool, input_shapes: Sequence[str]) -> Model:
    import torch

    if not trust:
        raise LoadError(
            f"{path} is a pickled module; unpickling runs code from the file, so optc loads it only "
            "with --trust (or save it with torch.export.save)"
        )
    try:
        obj = torch.load(str(path), weights_only=False)
    except Exception as e:
        raise LoadError(f"cannot unpickle {path}: {first_line(e)}") from None
    if not isinstance(obj, torch.nn.Module):
        raise LoadError(f"{path} holds a {type(obj).__name__}, not an nn.Module (a state_dict needs its model class)")
    if not input_shapes:
        raise LoadError(f"{path} is a pickled module without example inputs; pass --input-shape (e.g. 1x3x32x32)")
    return Model(module=obj.eval(), example_inputs=make_inputs(input_shapes), source=str(path))


def _load_factory(spec: str, input_shapes: Sequence[str]) -> Model:
    import torch

    mod_name, _, attr = spec.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # like `python -m`: the working directory is importable
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise LoadError(f"cannot import {mod_name!r} for {spec}: {e}") from None
    except Exception as e:  # the module's own code failed while importing
        raise LoadError(f"importing {mod_name!r} for {spec} raised {type(e).__name__}: {first_line(e)}") from None
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise LoadError(f"{mod_name} has no attribute {attr!r}")
    try:
        made = factory() if callable(factory) and not isinstance(factory, torch.nn.Module) else factory
    except Exception as e:  # the user's code: any error is theirs to fix
        raise LoadError(f"{spec} raised {type(e).__name__}: {first_line(e)}") from None
    inputs: tuple = ()
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module):
        made, inputs = made[0], tuple(made[1])
    if not isinstance(made, torch.nn.Module):
        raise LoadError(f"{spec} returned a {type(made).__name__}; expected an nn.Module or (module, example_inputs)")
    if input_shapes:
        inputs = make_inputs(input_shapes)
    if not inputs:
        raise LoadError(f"{spec} gives no example inputs; pass --input-shape (e.g. 1x3x32x32)")
    return Model(module=made.eval(), example_inputs=inputs, source=spec)
