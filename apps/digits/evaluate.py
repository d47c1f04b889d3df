"""Quality and speed check of the digits diffusion model.

    python apps/digits/evaluate.py [--weights apps/digits/weights.safetensors] [--per-digit 20]

* Accuracy: an RBF SVM trained on all of sklearn's digits labels generated samples (scaled to the
  dataset's 0..16 range); reported is the fraction labelled as the requested digit, per digit and
  overall. The SVM's own accuracy on a held-out quarter of the real digits is printed for scale.
* Determinism: the same seed gives identical tensors; a different seed does not.
* Speed: 16 images at 20 steps, and images/s at batch 1 versus batch 16.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from model import NUM_CLASSES, DigitUNet, load, parameter_count, sample
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC
from torch import Tensor


def train_classifier() -> tuple[SVC, float]:
    """An SVM fitted on all digits, and the held-out accuracy of that recipe on a 75/25 split."""
    digits = load_digits()
    x, y = digits.data, digits.target
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    held_out = float(SVC(gamma=0.001).fit(x_tr, y_tr).score(x_te, y_te))
    return SVC(gamma=0.001).fit(x, y), held_out


def classify(clf: SVC, images: Tensor) -> np.ndarray:
    """Labels for ``N x 8 x 8`` images in ``[0, 1]``."""
    return np.asarray(clf.predict(images.reshape(len(images), -1).numpy() * 16.0))


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def accuracy(
    model: DigitUNet, clf: SVC, per_digit: int, steps: int, guidance: float, seed: int
) -> dict[int, float]:
    digits = [d for d in range(NUM_CLASSES) for _ in range(per_digit)]
    labels = classify(clf, sample(model, digits, steps=steps, guidance=guidance, seed=seed))
    wanted = np.array(digits)
    return {d: float((labels[wanted == d] == d).mean()) for d in range(NUM_CLASSES)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights", type=Path, default=Path(__file__).with_name("weights.safetensors")
    )
    parser.add_argument("--per-digit", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load(str(args.weights), args.device)
    device = next(model.parameters()).device
    print(f"{args.weights}: {parameter_count(model):,} parameters on {device}")
    clf, held_out = train_classifier()
    print(f"classifier (SVM) held-out accuracy on real digits: {held_out:.3f}")

    acc = accuracy(model, clf, args.per_digit, args.steps, args.guidance, args.seed)
    overall = sum(acc.values()) / len(acc)
    print(f"accuracy, {args.per_digit}/digit, {args.steps} steps, guidance {args.guidance}:")
    print("  " + "  ".join(f"{d}:{a:.2f}" for d, a in acc.items()) + f"  overall {overall:.3f}")

    a = sample(model, list(range(10)), seed=123)
    b = sample(model, list(range(10)), seed=123)
    c = sample(model, list(range(10)), seed=124)
    solo = torch.cat([sample(model, [d], seed=1000 + d) for d in range(10)])
    batched = sample(model, list(range(10)), seed=[1000 + d for d in range(10)])
    print(
        f"same seed identical: {torch.equal(a, b)}; other seed differs: {not torch.equal(a, c)}; "
        f"per-image seeds match solo runs: max |diff| {(solo - batched).abs().max().item():.2e}"
    )

    sixteen = [i % 10 for i in range(16)]
    t16 = timed(lambda: sample(model, sixteen, steps=args.steps, guidance=args.guidance), 10)
    t1 = timed(lambda: sample(model, [7], steps=args.steps, guidance=args.guidance), 20)
    print(f"16 images @ {args.steps} steps: {t16 * 1000:.0f} ms")
    print(
        f"images/s: batch 1 {1 / t1:.1f}, batch 16 {16 / t16:.1f} "
        f"(ratio {(16 / t16) / (1 / t1):.1f}x)"
    )


if __name__ == "__main__":
    main()
