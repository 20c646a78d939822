"""Classify images with an optc artifact, using only the IREE runtime and numpy.

    python classify.py [--device local-task|local-sync|vulkan] [--repeat N] MODEL.vmfb IMAGES.npy

IMAGES.npy holds float32 images, batch first: shape (N, *one input without its batch
dimension), e.g. (N, 8, 8) for the digits CNN. Prints "<index> <label>" per image.
The input and output shapes and the class labels come from the module's reflection
metadata (the ``optc`` JSON on its function ``main``), so this file knows nothing
about the model. ``--repeat N`` then times N calls on the first batch (upload, call,
download) and prints the latency to stderr.

Bad input (a missing or corrupt .vmfb, images of the wrong shape, a module that is
not a one-input classifier from optc) prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import iree.runtime as rt
import numpy as np


DYNAMIC_BATCH = 32  # images per call for an artifact that takes any batch size

# optc's targets and the IREE device their artifacts run on, for artifacts whose
# metadata does not name one (optc.device: a cpu artifact's driver, local-sync
# for small models, local-task for others).
DEVICE_OF_TARGET = {"cpu": "local-task", "vulkan": "vulkan"}


class AppError(Exception):
    """Bad input: reported as one line, exit status 2."""


class Classifier:
    """One artifact loaded on one IREE device, called through the runtime's
    VM-level API (the same calls an app makes in C)."""

    def __init__(self, vmfb: Path, device: str | None = None):
        self.path = vmfb
        if not vmfb.is_file():
            raise AppError(f"{vmfb}: no such module file")
        self.instance = rt.VmInstance()
        try:
            module = rt.VmModule.copy_buffer(self.instance, vmfb.read_bytes())
        except (ValueError, RuntimeError) as e:
            raise AppError(f"{vmfb}: not an IREE module (.vmfb): {_first_line(e)}") from None
        self.main = module.lookup_function("main")
        if self.main is None:
            raise AppError(f"{vmfb}: the module has no function main")
        if "optc" not in self.main.reflection:
            raise AppError(f"{vmfb}: no optc metadata on main; compile the model with optc")
        self.info = json.loads(self.main.reflection["optc"])
        inputs, outputs = self.info["inputs"], self.info["outputs"]
        if len(inputs) != 1 or inputs[0]["dtype"] != "float32":
            raise AppError(f"{vmfb}: main takes {_fmt(inputs)}; this app classifies with one float32 input")
        if len(outputs) != 1 or len(outputs[0]["shape"]) != 2 or outputs[0]["dtype"] != "float32":
            raise AppError(f"{vmfb}: main returns {_fmt(outputs)}; this app needs one float32 batch x classes output")
        self.input_shape = tuple(inputs[0]["shape"])
        self.output_shape = tuple(outputs[0]["shape"])
        self.labels = self.info.get("labels") or [str(c) for c in range(self.output_shape[1])]
        target = self.info["target"]["name"]
        named = self.main.reflection.get("optc.device") or DEVICE_OF_TARGET.get(target, target)
        self.device_name = device or named
        try:
            self.device = rt.get_device(self.device_name)
        except (ValueError, RuntimeError) as e:
            raise AppError(f"--device {self.device_name}: {_first_line(e)}") from None
        # A module for the artifact's device hooks the artifact's HAL calls to it.
        hal = rt.create_hal_module(self.instance, self.device)
        try:
            self.context = rt.VmContext(self.instance, modules=[hal, module])
        except RuntimeError:
            raise AppError(
                f"{vmfb}: compiled for optc target {target!r}; it does not run on --device {self.device_name} "
                f"(use --device {named})"
            ) from None
        self.staging = None

    def batch(self, images: int) -> int:
        """Images per call: the artifact's batch, or for a dynamic-batch artifact
        (``optc compile --dynamic-batch``, batch ``null`` in its metadata) up to 32."""
        return self.input_shape[0] or min(images, DYNAMIC_BATCH)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (the artifact's input shape; any batch size for a dynamic one) and return its logits."""
        view = self.device.allocator.allocate_buffer_copy(
            memory_type=rt.MemoryType.DEVICE_LOCAL,
            allowed_usage=rt.BufferUsage.DEFAULT,
            device=self.device,
            buffer=np.ascontiguousarray(batch, dtype=np.float32),
            element_type=rt.HalElementType.FLOAT_32,
        )
        args, results = rt.VmVariantList(1), rt.VmVariantList(1)
        args.push_ref(view)
        self.context.invoke(self.main, args, results)
        return self._download(results.get_as_object(0, rt.HalBufferView))

    def _download(self, view: rt.HalBufferView) -> np.ndarray:
        """Copy the result into a host-visible staging buffer on the device's queue and
        read it through a mapping: works on every driver, including Vulkan devices whose
        results cannot be imported as host memory (lavapipe)."""
        source = view.get_buffer()
        if self.staging is None or self.staging.byte_length() < source.byte_length():
            self.staging = self.device.allocator.allocate_buffer(
                memory_type=int(rt.MemoryType.HOST_LOCAL) | int(rt.MemoryType.DEVICE_VISIBLE),
                allowed_usage=int(rt.BufferUsage.TRANSFER) | int(rt.BufferUsage.MAPPING_SCOPED),
                allocation_size=source.byte_length(),
            )
            self.semaphore, self.timepoint = self.device.create_semaphore(0), 0
        self.device.queue_copy(source, self.staging, [(self.semaphore, self.timepoint)], [(self.semaphore, self.timepoint + 1)])
        self.timepoint += 1
        self.semaphore.wait(self.timepoint)
        return np.array(self.staging.map().asarray(list(view.shape), np.dtype(np.float32)))

    def classify(self, images: np.ndarray, source: str = "the images") -> list[str]:
        """A label per image, in batches of ``batch`` images; for a fixed-batch artifact
        the last one is padded with copies of its final image."""
        want = self.input_shape[1:]
        if images.ndim != len(self.input_shape) or images.shape[1:] != want or len(images) == 0:
            raise AppError(
                f"{source} holds an array of {_dims(images.shape)} but {self.path} takes images of {_dims(want)} "
                f"(N x {_dims(want)} float32; is it an artifact of another model?)"
            )
        labels = []
        batch = self.batch(len(images))
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            real = len(chunk)
            if real < batch and self.input_shape[0]:  # a dynamic batch runs the last chunk as it is
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
            labels += [self.labels[i] for i in self.logits(chunk)[:real].argmax(axis=1)]
        return labels


def _dims(shape) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def _fmt(signature: list[dict]) -> str:
    return ", ".join(f"{_dims(s['shape'])} {s['dtype']}" for s in signature) or "nothing"


def _first_line(e: BaseException) -> str:
    return (str(e).strip() or type(e).__name__).splitlines()[0]


def read_images(path: Path) -> np.ndarray:
    if not path.is_file():
        raise AppError(f"{path}: no such file")
    try:
        images = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise AppError(f"{path}: not a .npy array file ({_first_line(e)})") from None
    if not isinstance(images, np.ndarray) or images.dtype != np.float32:
        raise AppError(f"{path}: the images must be a float32 .npy (np.save(path, x.astype(np.float32)))")
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with an optc artifact (IREE runtime + numpy only).")
    parser.add_argument("module", type=Path, help="the artifact (.vmfb) compiled by optc")
    parser.add_argument("images", type=Path, help="float32 .npy of images, batch first")
    parser.add_argument("--device", help="IREE device: local-task or local-sync (CPU artifacts), vulkan (vulkan artifacts); default: the one the artifact's metadata names")
    parser.add_argument("--repeat", type=int, default=0, help="then time this many calls on the first batch")
    args = parser.parse_args(argv)
    try:
        if args.repeat < 0:
            raise AppError(f"--repeat {args.repeat}: must be >= 0")
        images = read_images(args.images)
        app = Classifier(args.module, args.device)
        for i, label in enumerate(app.classify(images, str(args.images))):
            print(i, label)
        if args.repeat:
            n = app.batch(len(images))
            batch = images[:n]
            batch = np.concatenate([batch, np.repeat(batch[-1:], n - len(batch), axis=0)])
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                app.logits(batch)
                times.append((time.perf_counter() - start) * 1e3)
            med = float(np.median(times))
            print(
                f"latency: {args.repeat} calls of batch {n} on {app.device_name}: median {med:.4f} ms, "
                f"mean {np.mean(times):.4f} ms, min {min(times):.4f} ms; {med / n:.4f} ms per image (median)",
                file=sys.stderr,
            )
    except AppError as e:
        print(f"classify: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
