"""Architecture diagrams drawn with matplotlib only (no graphviz, no TensorFlow).

:func:`draw_unet` draws the U-Net built by :func:`medseg_tf.models.unet` from
its hyper-parameters alone, so a notebook can show the architecture without
building the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.patches as mpatches
from matplotlib.lines import Line2D

#: Colours of the diagram elements.
COLORS = {"block": "#c6dbef", "bottleneck": "#9ecae1", "head": "#fdd0a2", "input": "#e5e5e5",
          "pool": "#d62728", "up": "#2ca02c", "skip": "#7f7f7f", "head_arrow": "#ff7f0e"}


def _size_text(input_size: Sequence[int] | None, level: int) -> str:
    if input_size is None:
        return ""
    return "\n" + "×".join(str(int(n) // 2 ** level) for n in input_size)


def draw_unet(ax, depth: int = 4, base_filters: int = 16, *, input_size: Sequence[int] | None = None,
              in_channels: int = 1, num_classes: int = 3, skips: bool = True, title: str | None = None):
    """Draw the U-Net of :func:`medseg_tf.models.unet` on a matplotlib axis.

    Each box is a block of two convolutions (label: output channels and, when
    ``input_size`` is given, the spatial size); the box height shrinks with the
    spatial size and its width grows with the channel count. Red arrows are 2x
    max pooling, green arrows stride-2 transposed convolutions, grey dashed
    arrows the skip connections (concatenation), orange the 1x1 convolution and
    softmax head.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw; its limits and aspect are set, its frame hidden.
    depth : int
        Number of downsamplings (as in ``unet``).
    base_filters : int
        Channels of the first level; doubled per level.
    input_size : sequence of int, optional
        Spatial input size, e.g. ``(64, 64)`` or ``(64, 64, 32)``, to print sizes.
    in_channels, num_classes : int
        Channels of the input and the output.
    skips : bool
        Draw the skip connections (``False`` for the encoder-decoder without skips).
    title : str, optional
        Axis title.

    Returns
    -------
    matplotlib.axes.Axes
        ``ax``.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    dx, dy = 1.25, 1.2

    def box_size(level: int) -> tuple[float, float]:
        w = 0.9 + 0.2 * level / depth  # wider with more channels
        h = 0.62 + 0.4 * 0.6 ** level  # flatter at lower resolution
        return w, h

    def draw_box(x: float, y: float, level: int, text: str, color: str) -> None:
        w, h = box_size(level)
        ax.add_patch(mpatches.FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02",
                                             facecolor=color, edgecolor="black", linewidth=0.8))
        ax.text(x, y, text, ha="center", va="center", fontsize=7)

    def arrow(xy_from, xy_to, color: str, style: str = "-") -> None:
        ax.annotate("", xy=xy_to, xytext=xy_from,
                    arrowprops=dict(arrowstyle="-|>", color=color, linestyle=style, linewidth=1.2,
                                    shrinkA=0, shrinkB=0))

    x_in, y_in = -dx, 0.0
    draw_box(x_in, y_in, 0, f"input\n{in_channels} ch{_size_text(input_size, 0)}", COLORS["input"])
    positions = {}
    for level in range(depth + 1):
        ch = base_filters * 2 ** level
        label = f"{ch} ch{_size_text(input_size, level)}"
        y = -level * dy
        if level < depth:
            positions[("enc", level)] = (level * dx, y)
            positions[("dec", level)] = ((2 * depth - level) * dx, y)
            draw_box(level * dx, y, level, label, COLORS["block"])
            draw_box((2 * depth - level) * dx, y, level, label, COLORS["block"])
        else:
            positions["bottleneck"] = (depth * dx, y)
            draw_box(depth * dx, y, level, label, COLORS["bottleneck"])

    w0, _ = box_size(0)
    arrow((x_in + w0 / 2, y_in), (-w0 / 2, 0.0), "black")
    for level in range(depth):
        deeper = level + 1 < depth
        ex, ey = positions[("enc", level)]
        tx, ty = positions[("enc", level + 1)] if deeper else positions["bottleneck"]  # pooled into
        ux, uy = positions[("dec", level + 1)] if deeper else positions["bottleneck"]  # upsampled from
        dxp, dyp = positions[("dec", level)]
        _, h = box_size(level)
        _, h1 = box_size(level + 1)
        arrow((ex, ey - h / 2), (tx, ty + h1 / 2), COLORS["pool"])
        arrow((ux, uy + h1 / 2), (dxp, dyp - h / 2), COLORS["up"])
        if skips:
            w, _ = box_size(level)
            arrow((ex + w / 2, ey), (dxp - w / 2, dyp), COLORS["skip"], "--")

    ox, oy = positions[("dec", 0)]
    hx = ox + dx
    draw_box(hx, oy, 0, f"output\n{num_classes} ch{_size_text(input_size, 0)}", COLORS["head"])
    arrow((ox + w0 / 2, oy), (hx - w0 / 2, oy), COLORS["head_arrow"])

    handles = [Line2D([], [], color=COLORS["pool"], label="2× max pool"),
               Line2D([], [], color=COLORS["up"], label="2× transposed conv"),
               Line2D([], [], color=COLORS["head_arrow"], label="1×1 conv + softmax"),
               mpatches.Patch(facecolor=COLORS["block"], edgecolor="black", label="2 × (conv, norm, ReLU)")]
    if skips:
        handles.insert(2, Line2D([], [], color=COLORS["skip"], linestyle="--", label="skip (concatenate)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=7,
              frameon=False)
    ax.set_xlim(x_in - 0.6, hx + 0.6)
    ax.set_ylim(-depth * dy - 0.7, 0.7)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    return ax
