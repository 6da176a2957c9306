"""The reference architectures qevo ships, as plain torch.nn modules.

Nothing here is special-cased by the exporter: each model is built only from the ops
qevo supports, and scripts/qevo_export.py traces it with torch.fx like any other module.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin, cout, stride=1, kernel=3):
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout))


class VGG(nn.Module):
    """VGG-style: five 3x3 conv+BN+ReLU layers, three max-pools, two linear layers."""

    def __init__(self, classes=10, in_ch=1, widths=(32, 32, 64, 64, 128), hidden=256):
        super().__init__()
        c1, c2, c3, c4, c5 = widths
        self.features = nn.Sequential(
            conv_bn(in_ch, c1), nn.ReLU(inplace=True),
            conv_bn(c1, c2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            conv_bn(c2, c3), nn.ReLU(inplace=True),
            conv_bn(c3, c4), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            conv_bn(c4, c5), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c5 * 3 * 3, hidden), nn.ReLU(inplace=True),
            nn.Dropout(0.3), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, shortcut="projection"):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut_kind = shortcut
        self.shortcut = nn.Sequential()
        self.pad = 0
        if stride != 1 or cin != cout:
            if shortcut == "projection":  # torchvision style: 1x1 conv + BN
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            else:  # CIFAR "option A": subsample, then zero-pad the new channels
                self.pad = (cout - cin) // 2
                self.stride = stride

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut_kind == "A" and self.pad:
            s = self.stride
            short = F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)
        else:
            short = self.shortcut(x)
        return F.relu(out + short)


class ResNet20(nn.Module):
    """CIFAR-style ResNet-20: 3 stages of 16/32/64 channels, 3 basic blocks each."""

    def __init__(self, classes=10, in_ch=1, shortcut="projection"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1, shortcut))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.layers(x))
        return self.fc(torch.flatten(x, 1))


class AutoEncoder(nn.Module):
    """Convolutional autoencoder: strided convs down to 8x7x7, conv-transposes up, sigmoid."""

    def __init__(self, in_ch=1):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(in_ch, 32, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 8, 3, 1, 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(8, 64, 3, 1, 1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(32, in_ch, 3, 2, 1, output_padding=1), nn.Sigmoid())

    def forward(self, x):
        return self.decoder(self.encoder(x))


def build(name, **kw):
    return {"vgg": VGG, "resnet20": ResNet20, "autoencoder": AutoEncoder}[name](**kw)
