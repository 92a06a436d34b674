"""The MSN reconstruction figure: input, masked target and each module's output."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..data.faces import FaceStore  # noqa: E402
from ..models.msn.network import MSN  # noqa: E402
from ..models.msn.regions import REGION_NAMES, region_masks, scale_landmarks  # noqa: E402
from .plot import save_figure  # noqa: E402


def _to_image(tensor: torch.Tensor) -> np.ndarray:
    return tensor.clamp(0, 1).permute(1, 2, 0).numpy()


@torch.no_grad()
def plot_reconstructions(model: MSN, faces: FaceStore, relpaths: list[str], stem: Path) -> list[Path]:
    """Draw one row per face: the input, then each region's masked target and reconstruction.

    The targets use the same region masks as training: the model's input
    size, the face's aligned landmarks and the default region shapes.
    Writes `<stem>.png` and `<stem>.pdf` and returns their paths.
    """
    images = faces.tensor(relpaths)
    small = model.shrink(images)
    size = small.shape[-1]
    landmarks = scale_landmarks(faces.landmarks_of(relpaths), images.shape[-1], size)
    masks = region_masks(landmarks, size)
    outputs = model.reconstruct(images)

    columns = 1 + 2 * len(REGION_NAMES)
    figure, axes = plt.subplots(len(relpaths), columns, figsize=(1.3 * columns, 1.4 * len(relpaths)), squeeze=False)
    for row, relpath in enumerate(relpaths):
        panels = [("input", small[row])]
        for region in REGION_NAMES:
            panels.append((f"{region} target", small[row] * masks[region][row]))
            panels.append((f"{region} output", outputs[region][row]))
        for column, (title, panel) in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(_to_image(panel))
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(title, fontsize=7)
        axes[row, 0].set_ylabel(relpath.split("/")[0].replace("_", " "), fontsize=6)
    figure.tight_layout()

    written = save_figure(figure, stem)
    plt.close(figure)
    return written
