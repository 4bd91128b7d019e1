"""Train the embedded demo model: ResNet-20 (1 input channel) on scikit-learn's digits.

Seeded and CPU-only; writes core/assets/demo_resnet20_digits.safetensors and prints the
validation and test accuracy that the README quotes. Run: python scripts/train_demo.py
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from core.data import load_data, make_loader
from core.models.demo import DEMO_WEIGHTS, demo_arch
from core.measure import evaluate
from core.models.checkpoint import save_model
from core.models.zoo import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEMO_WEIGHTS))
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = load_data("demo", seed=args.seed)
    arch = demo_arch()
    model = build(arch)
    train = make_loader(data.train, 64, shuffle=True, seed=args.seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, epochs=args.epochs, steps_per_epoch=len(train))
    best, best_state = -1.0, None
    for epoch in range(args.epochs):
        model.train()
        for images, labels in train:
            loss = F.cross_entropy(model(images), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        val = evaluate(model, make_loader(data.val, 256))
        if val >= best:
            best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
        print(f"epoch {epoch + 1:2d}  loss {loss.item():.3f}  val {val:.4f}")
    model.load_state_dict(best_state)
    test = evaluate(model, make_loader(data.test, 256))
    save_model(model, arch, args.out)
    print(f"best val {best:.4f}  test {test:.4f}  ({len(data.test)} test images) -> {args.out}")


if __name__ == "__main__":
    main()
