"""Measure each built-in model once and store its descriptor in its .safetensors (tensors unchanged).

Run after adding or retraining a built-in file: `python tools/store_descriptors.py`. Files that
`save_model` writes (training, `upscale import`) store theirs already.
"""

from __future__ import annotations

from upscaler.models.weights import builtin_models, load_model, save_model


def main() -> None:
    for name, path in sorted(builtin_models().items()):
        loaded = load_model(str(path))
        save_model(loaded.module, loaded.card, path)  # no descriptor given: measured afresh from the layers
        print(f"{name}: {load_model(str(path)).descriptor.stored()}")


if __name__ == "__main__":
    main()
