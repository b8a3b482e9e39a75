"""Small networks the tests build targets from (not a pytest module)."""

from torch import nn


class SkipNet(nn.Module):
    """stem -> body -> head, where the classifier reads the body's input too (a skip connection around ``body``)."""

    def __init__(self):
        super().__init__()
        self.stem, self.body, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4, 5)
        self.num_classes = 5

    def forward(self, x):
        x = self.stem(x)
        return self.head((x + self.body(x)).mean(dim=(2, 3)))
