"""drnet: dynamic resolution inside one module (DRNet, "Dynamic Resolution Network").

A tiny predictor (an MLP on the input resized to ``predictor_size``²) picks, per
call, one of the candidate resolutions; the backbone, lowered once per
resolution with one shared copy of each weight (:mod:`optc.variants`), runs on
the input resized to it. The choice is a ``cf.switch`` on the predictor's argmax
extracted from a tensor (IREE 3.13 rejects a tensor-valued ``scf.index_switch``;
nested ``scf.if``s copied the result out of every level), so the module's public
function keeps the model's signature and an app that embeds the ``.vmfb`` gets
the behaviour with no host logic. Reading the choice back costs one hand-off
between the runtime's threads per call: see the cpu target's driver choice.

Resizing is bilinear with antialiasing (PyTorch's ``interpolate``), written as
two contractions with fixed matrices: out = Rₕ · x · Rᵥᵀ over the last two dims.

The predictor is trained on ``--calib``: a sample's label is the resolution
minimizing (1 − the model's probability there of the label, or of its
full-resolution prediction without labels) + cost, and cost is ``cost`` × the resolution's MACs / the full MACs
(or one cost per resolution). A batch runs at the largest resolution any of its
images asks for (the variants are compiled at the model's batch size).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from optc.api import LayerChange, Method, MethodContext, MethodResult, option
from optc.builder import tensor_type_text as _t  # short: the dispatcher text below uses it on every line
from optc.errors import InputError, MethodError, OptionError
from optc.hookspecs import hookimpl
from optc.program import Program


@dataclass
class DrnetOptions:
    resolutions: tuple[int, ...] = option((), "candidate square input sizes in pixels, e.g. 32,24,16 (at least two, the model's own size among them)")
    cost: tuple[float, ...] = option((0.05,), "one weight (× each resolution's MACs / the full MACs) or one cost per resolution (in the order given), traded against the expected error 1 − p(label) at that resolution")
    max_loss: float = option(0.005, "top-1 (or agreement, without labels) the choices may lose on --calib: the predictor's scores are shifted toward larger resolutions until they lose no more")
    predictor_size: int = option(16, "side of the downsampled image the predictor sees")
    hidden: int = option(32, "hidden units of the predictor MLP")
    epochs: int = option(300, "full-batch Adam steps training the predictor")
    seed: int = option(0, "seed of the predictor's training")

    def validate(self) -> None:
        if len(set(self.resolutions)) < 2:
            raise ValueError(f"resolutions={','.join(map(str, self.resolutions)) or '(none)'}: give at least two distinct sizes, e.g. resolutions=32,24,16")
        if any(r <= 0 for r in self.resolutions):
            raise ValueError("resolutions must be positive integers")
        if len(self.cost) not in (1, len(self.resolutions)) or any(c < 0 for c in self.cost):
            raise ValueError(f"cost: one non-negative weight or one per resolution ({len(self.resolutions)}), got {len(self.cost)}")
        if not 0 <= self.max_loss <= 1:
            raise ValueError(f"max_loss={self.max_loss}: a fraction in [0, 1], e.g. 0.005 for half a point")
        if self.predictor_size <= 0 or self.hidden <= 0 or self.epochs <= 0:
            raise ValueError("predictor_size, hidden and epochs must be positive")


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32: PyTorch's antialiased bilinear resize along one axis, as a matrix."""
    import torch

    if n_in == n_out:
        return np.eye(n_in, dtype=np.float32)
    eye = torch.eye(n_in, dtype=torch.float32).reshape(n_in, 1, 1, n_in)
    rows = torch.nn.functional.interpolate(eye, size=(1, n_out), mode="bilinear", antialias=True, align_corners=False)
    return np.ascontiguousarray(rows.reshape(n_in, n_out).T.numpy())


def resize(x: Any, size: int) -> Any:
    """Torch (…, H, W) -> (…, size, size) with :func:`resize_matrix` (the module's resize, on the host)."""
    import torch

    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    rh = torch.from_numpy(resize_matrix(x.shape[-2], size))
    rw = torch.from_numpy(resize_matrix(x.shape[-1], size))
    return torch.einsum("ih,...hw,jw->...ij", rh, x, rw)


def resize_macs(shape: Sequence[int], size: int) -> int:
    """MACs of resizing one (…, H, W) image (batch dim excluded) to size²."""
    prefix = int(np.prod(shape[1:-2])) if len(shape) > 3 else 1
    h, w = shape[-2], shape[-1]
    return 0 if (h, w) == (size, size) else prefix * (size * h * w + size * size * w)


@dataclass
class Predictor:
    """The trained MLP: (N, F) features -> (N, K) scores over resolutions (ascending)."""

    w1: np.ndarray  # (F, hidden): F = the features of the image resized to size²
    b1: np.ndarray
    w2: np.ndarray  # (hidden, K)
    b2: np.ndarray
    _folded: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # image shape, size -> on_image

    def on_image(self, image: Sequence[int], size: int) -> np.ndarray:
        """``w1`` with the resize to size² folded in: (…·H·W) × hidden for an image
        of shape ``image`` (…, H, W), so the module runs one matmul on the flattened
        image instead of the two resize contractions first (fewer dispatches)."""
        key = (tuple(image), size)
        if key not in self._folded:
            *pre, h, w = image
            rh, rw = resize_matrix(h, size).astype(np.float64), resize_matrix(w, size).astype(np.float64)
            w1 = self.w1.astype(np.float64).reshape(int(np.prod(pre)), size, size, -1)
            self._folded[key] = np.einsum("ih,jw,pijk->phwk", rh, rw, w1).reshape(-1, w1.shape[-1]).astype(np.float32)
        return self._folded[key]

    def macs(self, image: Sequence[int], size: int) -> int:
        """MACs per image, as the module runs it."""
        return self.on_image(image, size).size + self.w2.size

    def choose(self, x: Any, size: int) -> Any:
        """Torch (N, …, H, W) -> the batch's resolution index (the largest any image asks for)."""
        import torch

        f = x.reshape(x.shape[0], -1)
        h = torch.relu(f @ torch.from_numpy(self.on_image(x.shape[1:], size)) + torch.from_numpy(self.b1))
        scores = h @ torch.from_numpy(self.w2) + torch.from_numpy(self.b2)
        return int(scores.argmax(dim=1).max())


def train_predictor(features: np.ndarray, labels: np.ndarray, classes: int, hidden: int, epochs: int, seed: int) -> Predictor:
    """Full-batch Adam on cross-entropy, one thread, seeded: the same data give the same predictor."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(features.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
        x, y = torch.from_numpy(features), torch.from_numpy(labels.astype(np.int64))
        for _ in range(epochs):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    p = lambda t: np.ascontiguousarray(t.detach().numpy().astype(np.float32))  # noqa: E731
    return Predictor(p(net[0].weight.T), p(net[0].bias), p(net[2].weight.T), p(net[2].bias))


def shift_toward_larger(predictor: Predictor, features: np.ndarray, correct: np.ndarray, max_loss: float) -> Predictor:
    """The predictor with score k raised by k·b for the smallest b ≥ 0 (on a grid)
    whose choices on ``features`` keep top-1 within ``max_loss`` of always
    choosing the full resolution (``correct``: (M, K), resolutions ascending)."""
    h = np.maximum(features @ predictor.w1 + predictor.b1, 0)
    scores = h @ predictor.w2 + predictor.b2
    ramp = np.arange(correct.shape[1], dtype=np.float32)
    full = correct[:, -1].mean()
    spread = float(scores.max() - scores.min()) or 1.0
    for b in np.linspace(0, spread, 201, dtype=np.float32):
        choice = (scores + b * ramp).argmax(axis=1)
        if correct[np.arange(len(choice)), choice].mean() >= full - max_loss:
            return dataclasses.replace(predictor, b2=(predictor.b2 + b * ramp).astype(np.float32))
    return dataclasses.replace(predictor, b2=(predictor.b2 + (spread + 1) * ramp).astype(np.float32))  # always full


class DrnetReference:
    """The compressed reference of a drnet module, on the host: the predictor,
    then the original model at the chosen resolution. Records its choices."""

    def __init__(self, backbone: Any, predictor: Predictor, predictor_size: int, resolutions: Sequence[int]):
        self.backbone, self.predictor, self.size, self.resolutions = backbone, predictor, predictor_size, list(resolutions)
        self.choices: list[int] = []

    def __call__(self, x: Any) -> Any:
        k = self.predictor.choose(x, self.size)
        self.choices.append(k)
        return self.backbone(resize(x, self.resolutions[k]))


class Drnet(Method):
    name = "drnet"
    summary = "dynamic resolution: a trained predictor picks the input resolution per call inside the module (needs --calib)"
    Options = DrnetOptions
    needs_calibration = True

    def apply(self, program: Program, options: DrnetOptions, ctx: MethodContext) -> MethodResult:
        import torch

        from optc.variants import lower_at_shapes
        from optc.verify import with_weights

        if ctx.model is None or ctx.calibration is None:
            raise MethodError("drnet needs the loaded model and --calib data")
        example = program.example_inputs
        if len(example) != 1:
            raise InputError(f"drnet: the model takes {len(example)} inputs; drnet handles models with one image input")
        shape = tuple(example[0].shape)
        if len(shape) < 3 or shape[-1] != shape[-2] or not np.issubdtype(example[0].dtype, np.floating):
            raise InputError(f"drnet: the input is {example[0].dtype} {shape}; drnet needs a float image input (N, …, H, W) with H == W")
        if program.structures or any(layer.rewritten for layer in program.layers()):
            raise OptionError("drnet must come first in --plugins (it re-lowers the model; later methods compress every variant)")
        full = shape[-1]
        resolutions = sorted(set(options.resolutions))
        if full not in resolutions or resolutions[-1] != full:
            raise OptionError(f"drnet.resolutions={','.join(map(str, options.resolutions))}: the largest must be the model's own size {full}")
        backbone = backbone_module(ctx.model)
        ctx.progress("drnet: lowering the backbone at " + ", ".join(f"{r}x{r}" for r in resolutions))
        try:
            programs = lower_at_shapes(dataclasses.replace(ctx.model, module=backbone), [shape[:-2] + (r, r) for r in resolutions])
        except Exception as e:  # noqa: BLE001 - any lowering failure means the same thing here
            raise InputError(
                f"drnet: the backbone cannot take {resolutions[0]}x{resolutions[0]} .. {full}x{full} inputs ({str(e).splitlines()[0][:160]}); "
                "a flatten into a fixed-size linear layer fixes the input size: use a model with global pooling"
            ) from None
        macs = [p.contraction_macs() // shape[0] for p in programs]  # per image

        samples = ctx.calibration.samples
        x = torch.from_numpy(samples.inputs[0])
        ctx.progress("drnet: the model's predictions at each resolution")
        probs = np.stack([_probabilities(backbone, resize(x, r)) for r in resolutions], axis=1)  # (M, K, classes)
        preds = probs.argmax(axis=2)
        target = samples.labels if samples.labels is not None else preds[:, -1]
        # expected error (1 - the target's probability), not 0/1: a sample the model
        # barely gets right at a low resolution goes higher (calib is often training data)
        wrong = 1.0 - probs[np.arange(len(target)), :, target]
        costs = np.array([options.cost[0] * m / macs[-1] for m in macs] if len(options.cost) == 1
                         else [options.cost[list(options.resolutions).index(r)] for r in resolutions])
        labels = np.argmin(wrong + costs[None, :], axis=1)  # ties -> the smaller resolution
        features = resize(x, options.predictor_size).reshape(len(x), -1).numpy().astype(np.float32)
        ctx.progress("drnet: training the predictor")
        predictor = train_predictor(features, labels, len(resolutions), options.hidden, options.epochs, options.seed)
        predictor = shift_toward_larger(predictor, features, preds == target[:, None], options.max_loss)

        names = build_module(program, programs, resolutions, predictor, options.predictor_size)

        predictor_macs = predictor.macs(shape[1:], options.predictor_size)
        per_res = {r: macs[i] + resize_macs(shape, r) for i, r in enumerate(resolutions)}
        calib_choice = np.array([predictor.choose(x[i:i + 1], options.predictor_size) for i in range(len(x))])
        details = {
            "resolutions": resolutions,
            "macs_per_image": {str(r): per_res[r] for r in resolutions},
            "predictor_macs": predictor_macs,
            "calib_label_shares": _shares(labels, resolutions),
            "calib_choice_shares": _shares(calib_choice, resolutions),
            "calib_macs_saving": 1 - float((predictor_macs + np.mean([per_res[resolutions[k]] for k in calib_choice])) / macs[-1]),
        }
        change = LayerChange("<input>", f"dynamic resolution over {', '.join(f'{r}x{r}' for r in resolutions)} (predictor {predictor_macs} MACs)", details)

        def reference_model(weights: dict[str, np.ndarray]) -> DrnetReference:
            return DrnetReference(with_weights(backbone, weights), predictor, options.predictor_size, resolutions)

        def evaluate(eval_samples: Any) -> dict[str, Any]:
            ref = reference_model({})
            for chunk, real in eval_samples.batches(shape[0]):
                with torch.no_grad():
                    ref(torch.from_numpy(chunk[0]))
            chosen = np.array(ref.choices)
            # the variants as compiled: methods after drnet (bcr …) compressed each of them
            final = {r: program.function(n).contraction_macs() // shape[0] + resize_macs(shape, r) for n, r in zip(names, resolutions)}
            avg = predictor_macs + float(np.mean([final[resolutions[k]] for k in chosen]))
            return {
                "resolution_shares": _shares(chosen, resolutions),
                "macs_per_image": avg,
                "variant_macs_per_image": {str(r): final[r] for r in resolutions},
                "full_resolution_macs_per_image": macs[-1],
                "macs_saving": 1 - avg / macs[-1],
                "note": f"shares per call of batch {shape[0]} on the host re-implementation (the artifact makes the same choices)",
            }

        return MethodResult(self.name, [change], {}, reference_model=reference_model, evaluate=evaluate)


def build_module(program: Program, variants: Sequence[Program], resolutions: Sequence[int], predictor: Predictor, predictor_size: int) -> list[str]:
    """Turn ``program`` into the dynamic module: ``variants`` (the backbone at each
    of ``resolutions``, ascending) merged with shared weights and made private, and
    a public function of ``program``'s name and signature that runs ``predictor`` and
    switches among them. Returns the variants' function names."""
    from optc.variants import merge_variants, variant_name

    names = [variant_name(p) for p in variants]
    merged = merge_variants(variants, names)
    _make_private(merged, names)
    shape = tuple(program.example_inputs[0].shape)
    _append_dispatcher(merged, program.func_name, shape, resolutions, names, variants[-1], predictor, predictor_size)
    program.module, program.params, program.origin = merged.module, merged.params, merged.origin
    program.layer_shapes = dict(merged.layer_shapes)
    return names


def backbone_module(model: Any) -> Any:
    """``model``'s module, runnable at other input sizes: an export archive's
    module checks inputs against the exported shapes, so that check is turned off."""
    import torch

    module = model.module
    if getattr(model, "exported", None) is not None and isinstance(module, torch.fx.GraphModule):
        module = model.exported.module(check_guards=False)
        module.validate_inputs = False
    return module


def _probabilities(module: Any, x: Any) -> np.ndarray:
    """Softmax of ``module``'s logits, one sample at a time (exported graphs fix the batch size)."""
    import torch

    with torch.no_grad():
        return np.concatenate([torch.softmax(module(x[i:i + 1]).reshape(1, -1), dim=1).numpy() for i in range(len(x))])


def _shares(indices: np.ndarray, resolutions: Sequence[int]) -> dict[str, float]:
    return {str(r): float(np.mean(indices == k)) if len(indices) else 0.0 for k, r in enumerate(resolutions)}


def _make_private(program: Program, names: Sequence[str]) -> None:
    from torch_mlir import ir

    for op in program.module.body.operations:
        if op.operation.name == "func.func" and ir.StringAttr(op.attributes["sym_name"]).value in names:
            with program.context:
                op.attributes["sym_visibility"] = ir.StringAttr.get("private")


# ------------------------------------------------------------------ the dispatcher, as MLIR text


def _dense(a: np.ndarray) -> str:
    a = np.asarray(a, np.float32)
    body = np.array2string(a, separator=", ", threshold=np.inf, max_line_width=np.inf, formatter={"float_kind": lambda v: f"{v:.9e}"})
    return f"arith.constant dense<{body}> : {_t(a.shape)}"


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.n = 0

    def __call__(self, line: str) -> str:
        self.n += 1
        name = f"%v{self.n}"
        self.lines.append(f"{name} = {line}")
        return name

    def raw(self, line: str) -> None:
        self.lines.append(line)

    def filled(self, shape: Sequence[int], value: str = "0.0", elem: str = "f32") -> str:
        init = self(f"arith.constant {value} : {elem}")
        empty = self(f"tensor.empty() : {_t(shape, elem)}")
        return self(f"linalg.fill ins({init} : {elem}) outs({empty} : {_t(shape, elem)}) -> {_t(shape, elem)}")

    def resize(self, x: str, shape: Sequence[int], size: int) -> tuple[str, tuple[int, ...]]:
        """Two contractions: t[…, i, w] = Σh Rh[i, h]·x[…, h, w]; y[…, i, j] = Σw t[…, i, w]·Rw[j, w]."""
        h, w = shape[-2], shape[-1]
        if (h, w) == (size, size):
            return x, tuple(shape)
        rank = len(shape)
        pre = [f"d{i}" for i in range(rank - 2)]
        dims = ", ".join(pre + ["d_i", "d_j", "d_r"])
        mid = tuple(shape[:-2]) + (size, w)
        out = tuple(shape[:-2]) + (size, size)
        body = "^bb0(%a: f32, %b: f32, %c: f32):\n  %m = arith.mulf %a, %b : f32\n  %s = arith.addf %c, %m : f32\n  linalg.yield %s : f32\n}"
        iters = ", ".join(['"parallel"'] * rank + ['"reduction"'])
        rh = self(_dense(resize_matrix(h, size)))
        t0 = self.filled(mid)
        # over (…, i, j=w, r=h)
        maps = [", ".join(pre + ["d_r", "d_j"]), "d_i, d_r", ", ".join(pre + ["d_i", "d_j"])]
        amap = lambda m: f"affine_map<({dims}) -> ({m})>"  # noqa: E731
        t = self(f"linalg.generic {{indexing_maps = [{', '.join(amap(m) for m in maps)}], iterator_types = [{iters}]}} "
                 f"ins({x}, {rh} : {_t(shape)}, {_t((size, h))}) outs({t0} : {_t(mid)}) {{\n{body} -> {_t(mid)}")
        rw = self(_dense(resize_matrix(w, size)))
        y0 = self.filled(out)
        # over (…, i, j, r=w)
        maps = [", ".join(pre + ["d_i", "d_r"]), "d_j, d_r", ", ".join(pre + ["d_i", "d_j"])]
        y = self(f"linalg.generic {{indexing_maps = [{', '.join(amap(m) for m in maps)}], iterator_types = [{iters}]}} "
                 f"ins({t}, {rw} : {_t(mid)}, {_t((size, w))}) outs({y0} : {_t(out)}) {{\n{body} -> {_t(out)}")
        return y, out

    def dense_layer(self, x: str, n: int, w: np.ndarray, b: np.ndarray, relu: bool) -> str:
        """x (n, F) · w (F, O) + b, then ReLU when ``relu``."""
        o = w.shape[1]
        wc, bc = self(_dense(w)), self(_dense(b))
        mm = self(f"linalg.matmul ins({x}, {wc} : {_t((n, w.shape[0]))}, {_t(w.shape)}) outs({self.filled((n, o))} : {_t((n, o))}) -> {_t((n, o))}")
        act = "  %z = arith.constant 0.0 : f32\n  %r = arith.maximumf %s, %z : f32\n  linalg.yield %r : f32" if relu else "  linalg.yield %s : f32"
        m2, m1 = "affine_map<(d0, d1) -> (d0, d1)>", "affine_map<(d0, d1) -> (d1)>"
        return self(f"linalg.generic {{indexing_maps = [{m2}, {m1}, {m2}], iterator_types = [\"parallel\", \"parallel\"]}} "
                    f"ins({mm}, {bc} : {_t((n, o))}, {_t((o,))}) outs({self.filled((n, o))} : {_t((n, o))}) {{\n"
                    f"^bb0(%a: f32, %b: f32, %c: f32):\n  %s = arith.addf %a, %b : f32\n{act}\n}} -> {_t((n, o))}")


def _append_dispatcher(merged: Program, name: str, shape: tuple[int, ...], resolutions: Sequence[int], variants: Sequence[str],
                       full: Program, predictor: Predictor, predictor_size: int) -> None:
    """Add the public function ``name``: predictor -> index -> cf.switch to the variants."""
    from torch_mlir import ir

    ftype = full.function_type
    results = [str(t) for t in ftype.results]
    result_sig = ", ".join(results)
    n = shape[0]
    g = _Text()
    flat = int(np.prod(shape[1:]))
    groups = "[[0], [" + ", ".join(str(i) for i in range(1, len(shape))) + "]]"
    f = g(f"tensor.collapse_shape %x {groups} : {_t(shape)} into {_t((n, flat))}")
    hdn = g.dense_layer(f, n, predictor.on_image(shape[1:], predictor_size), predictor.b1, relu=True)
    scores = g.dense_layer(hdn, n, predictor.w2, predictor.b2, relu=False)
    k = len(resolutions)
    best0 = g.filled((n,), "0xFF800000")  # -inf: the first maximum wins, as numpy/torch argmax
    idx0 = g.filled((n,), "0", "i64")
    am = g(f"linalg.generic {{indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d0)>, affine_map<(d0, d1) -> (d0)>], "
           f"iterator_types = [\"parallel\", \"reduction\"]}} ins({scores} : {_t((n, k))}) outs({best0}, {idx0} : {_t((n,))}, {_t((n,), 'i64')}) {{\n"
           "^bb0(%s: f32, %best: f32, %idx: i64):\n  %j = linalg.index 1 : index\n  %ji = arith.index_cast %j : index to i64\n"
           "  %gt = arith.cmpf ogt, %s, %best : f32\n  %nb = arith.select %gt, %s, %best : f32\n  %ni = arith.select %gt, %ji, %idx : i64\n"
           f"  linalg.yield %nb, %ni : f32, i64\n}} -> ({_t((n,))}, {_t((n,), 'i64')})")
    g.lines[-1] = g.lines[-1].replace(f"{am} =", f"{am}:2 =")
    mx0 = g.filled((), "0", "i64")
    mx = g(f"linalg.generic {{indexing_maps = [affine_map<(d0) -> (d0)>, affine_map<(d0) -> ()>], iterator_types = [\"reduction\"]}} "
           f"ins({am}#1 : {_t((n,), 'i64')}) outs({mx0} : {_t((), 'i64')}) {{\n^bb0(%a: i64, %b: i64):\n  %m = arith.maxsi %a, %b : i64\n"
           f"  linalg.yield %m : i64\n}} -> {_t((), 'i64')}")
    choice = g(f"tensor.extract {mx}[] : {_t((), 'i64')}")

    # a cf.switch to one block per resolution that resizes, calls its variant and
    # returns: nested scf.ifs would copy the result out of every level they pass
    choice32 = g(f"arith.trunci {choice} : i64 to i32")
    cases = ", ".join(f"{i}: ^res{i}" for i in range(k - 1))
    g.raw(f"cf.switch {choice32} : i32, [default: ^res{k - 1}, {cases}]")
    for i in range(k):
        g.raw(f"^res{i}:")
        xr, rshape = g.resize("%x", shape, resolutions[i])
        call = g(f"func.call @{variants[i]}({xr}) : ({_t(rshape)}) -> ({result_sig})")
        if len(results) > 1:
            g.lines[-1] = g.lines[-1].replace(f"{call} =", f"{call}:{len(results)} =")
        g.raw(f"return {_yield(call, len(results))} : {result_sig}")
    decls = "\n".join(f"func.func private @{v}({_t(shape[:-2] + (r, r))}) -> ({result_sig})" for v, r in zip(variants, resolutions))
    text = f"{decls}\nfunc.func @{name}(%x: {_t(shape)}) -> ({result_sig}) {{\n" + "\n".join(g.lines) + "\n}"
    parsed = ir.Module.parse(text, context=merged.context)
    func = next(op.operation for op in parsed.body.operations if ir.StringAttr(op.attributes["sym_name"]).value == name)
    merged.module.body.append(func)
    merged.func_name = name


def _yield(value: str, count: int) -> str:
    return value if count == 1 else ", ".join(f"{value}#{i}" for i in range(count))


@hookimpl
def optc_register_methods(register):
    register(Drnet())
