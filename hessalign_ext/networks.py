"""Featurizers and heads, chosen from the input shape as DomainBed does.

- vectors (D,) and small images (spatial size below 28, e.g. the 8×8 digits): an MLP over
  the flattened input;
- 28×28 images: DomainBed's MNIST_CNN;
- larger images: a torchvision ResNet-18/50 with the classification layer removed
  (ImageNet weights when ``hparams["pretrained"]``, random initialization otherwise).

The head is ``nn.Linear(n_outputs, num_classes)``: the Hessian-alignment algorithms need
it linear (its weight and bias are the parameters the curvature ops differentiate).
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class Identity(nn.Module):
    def forward(self, x):
        return x


class MLP(nn.Module):
    """DomainBed's MLP: ``mlp_depth`` linear layers of width ``mlp_width``, ReLU between them.

    ``hparams["mlp_output_relu"]`` adds a ReLU after the last layer, giving the IRM
    ColoredMNIST scripts' featurizer (in → width → ReLU → width → ReLU) with ``mlp_depth=2``.
    Inputs of any shape are flattened.
    """

    def __init__(self, n_inputs, n_outputs, hparams):
        super().__init__()
        depth = int(hparams.get("mlp_depth", 3))
        if depth < 2:
            raise ValueError(f"mlp_depth must be >= 2; got {depth}")
        width = int(hparams.get("mlp_width", 256))
        self.input = nn.Linear(n_inputs, width)
        self.dropout = nn.Dropout(float(hparams.get("mlp_dropout", 0.0)))
        self.hiddens = nn.ModuleList([nn.Linear(width, width) for _ in range(depth - 2)])
        self.output = nn.Linear(width, n_outputs)
        self.output_relu = bool(hparams.get("mlp_output_relu", False))
        self.n_outputs = n_outputs
        if hparams.get("mlp_init", "default") == "xavier":
            for lin in [self.input, *self.hiddens, self.output]:
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)

    def forward(self, x):
        x = x.flatten(1)
        x = F.relu(self.dropout(self.input(x)))
        for hidden in self.hiddens:
            x = F.relu(self.dropout(hidden(x)))
        x = self.output(x)
        return F.relu(x) if self.output_relu else x


class MNIST_CNN(nn.Module):
    """DomainBed's hand-tuned CNN for 28×28 inputs (128 features)."""

    n_outputs = 128

    def __init__(self, input_shape):
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, padding=1)
        self.conv2 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.conv4 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.bn0 = nn.GroupNorm(8, 64)
        self.bn1 = nn.GroupNorm(8, 128)
        self.bn2 = nn.GroupNorm(8, 128)
        self.bn3 = nn.GroupNorm(8, 128)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x):
        x = self.bn0(F.relu(self.conv1(x)))
        x = self.bn1(F.relu(self.conv2(x)))
        x = self.bn2(F.relu(self.conv3(x)))
        x = self.bn3(F.relu(self.conv4(x)))
        return self.avgpool(x).flatten(1)


class ResNet(nn.Module):
    """ResNet-18/50 without its final layer, BatchNorm frozen as DomainBed does.

    ``hparams["pretrained"]`` (DomainBed's default, True): torchvision's ImageNet weights,
    read from the torch hub cache or downloaded into it by torchvision; False: random init.
    """

    def __init__(self, input_shape, hparams):
        super().__init__()
        import torchvision

        if hparams.get("resnet18", False):
            ctor, n_out, wname = torchvision.models.resnet18, 512, "ResNet18_Weights"
        else:
            ctor, n_out, wname = torchvision.models.resnet50, 2048, "ResNet50_Weights"
        weights = getattr(torchvision.models, wname).DEFAULT if hparams.get("pretrained", False) else None
        self.network = ctor(weights=weights)
        self.n_outputs = n_out
        nc = input_shape[0]
        if nc != 3:
            tmp = self.network.conv1.weight.data.clone()
            self.network.conv1 = nn.Conv2d(nc, 64, kernel_size=7, stride=2, padding=3, bias=False)
            for i in range(nc):
                self.network.conv1.weight.data[:, i] = tmp[:, i % 3]
        self.network.fc = Identity()
        self.freeze_bn_enabled = bool(hparams.get("freeze_bn", True))
        self.dropout = nn.Dropout(float(hparams.get("resnet_dropout", 0.0)))
        if self.freeze_bn_enabled:
            self.freeze_bn()

    def forward(self, x):
        return self.dropout(self.network(x))

    def train(self, mode=True):
        super().train(mode)
        if self.freeze_bn_enabled:
            self.freeze_bn()
        return self

    def freeze_bn(self):
        for m in self.network.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()


def Featurizer(input_shape, hparams):
    """Pick a featurizer for ``input_shape`` (see the module docstring)."""
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) == 1:
        return MLP(input_shape[0], hparams.get("mlp_width", 256), hparams)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (D,) or (channels, H, W); got {input_shape}")
    if input_shape[1] < 28 or input_shape[2] < 28:
        n_in = input_shape[0] * input_shape[1] * input_shape[2]
        return MLP(n_in, hparams.get("mlp_width", 256), hparams)
    if input_shape[1:3] == (28, 28):
        return MNIST_CNN(input_shape)
    return ResNet(input_shape, hparams)


def Classifier(in_features, out_features, is_nonlinear=False):
    if is_nonlinear:
        return nn.Sequential(
            nn.Linear(in_features, in_features // 2), nn.ReLU(),
            nn.Linear(in_features // 2, in_features // 4), nn.ReLU(),
            nn.Linear(in_features // 4, out_features))
    return nn.Linear(in_features, out_features)


class WholeFish(nn.Module):
    """Featurizer + classifier in one module, which Fish deep-copies for its inner loop."""

    def __init__(self, input_shape, num_classes, hparams):
        super().__init__()
        featurizer = Featurizer(input_shape, hparams)
        classifier = Classifier(featurizer.n_outputs, num_classes, hparams.get("nonlinear_classifier", False))
        self.net = nn.Sequential(featurizer, classifier)

    def forward(self, x):
        return self.net(x)
