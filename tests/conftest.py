"""Small models and data shared by the tests (nothing here reads ../shared)."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bsnn_lava.zoo import OptionAShortcut, TorchvisionBasicBlock as TVBasicBlock


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1 + 0.05)
    return model.eval()


@torch.no_grad()
def batchnorm_statistics_of(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """Give every BatchNorm the running statistics of ``inputs`` (normalised images), as training leaves
    them, keeping its affine parameters: a deep net's random statistics let its eval-mode activations
    grow block after block far beyond the train-mode ones, which thresholds calibrated on them do not fit."""
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: the statistics of all of the inputs
    model.train()
    model(inputs.to(next(model.parameters()).dtype))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


class TVStyleResNet(nn.Module):
    """torchvision-style ResNet (BasicBlocks, option-B 1x1 conv + BN downsample), avg-pool stem."""

    def __init__(self, channels=3, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(2)
        down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        self.layer1 = nn.Sequential(TVBasicBlock(8, 8), TVBasicBlock(8, 16, 2, down))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class SmallVGG(nn.Module):
    """VGG-style: conv/BN/ReLU, average pooling, a hidden linear layer with ReLU, dropout."""

    def __init__(self, channels=3, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Dropout(0.5),
                                        nn.Linear(32, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class OptionAResNet(nn.Module):
    """A small CIFAR-style ResNet with an identity and an option-A block."""

    def __init__(self, channels=3, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.c1, self.b1 = nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.c3, self.b3 = nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16)
        self.c4, self.b4 = nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        self.short = OptionAShortcut(4)
        self.linear = nn.Linear(16, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + x)
        x = F.relu(self.b4(self.c4(F.relu(self.b3(self.c3(x))))) + self.short(x))
        return self.linear(x.mean((2, 3)))


@pytest.fixture
def images():
    """Random uint8 RGB images, NHWC (16, 16, 16, 3), and labels."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(24, 16, 16, 3), dtype=np.uint8), rng.integers(0, 10, size=24)


def normalized(x_nhwc, mean, std):
    x = torch.as_tensor(x_nhwc, dtype=torch.float64).permute(0, 3, 1, 2) / 255.0
    return (x - torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)) / torch.tensor(
        std, dtype=torch.float64).view(1, -1, 1, 1)


def interrupted_finetune(monkeypatch, after_epochs: int, run) -> None:
    """Run ``run()`` (a fine-tuning with a checkpoint) so that it is "interrupted" (KeyboardInterrupt)
    right after the checkpoint of epoch ``after_epochs``, as a Ctrl-C there would; the checkpoint stays."""
    from bsnn_lava.training import trainer

    real_save, saves = trainer.save_checkpoint, []

    def save_then_stop(path, *args, **kw):
        real_save(path, *args, **kw)
        saves.append(path)
        if len(saves) == after_epochs:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            run()
    finally:
        monkeypatch.setattr(trainer, "save_checkpoint", real_save)
