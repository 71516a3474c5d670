"""--show: the reports in a window."""
from __future__ import annotations

from typing import Sequence

from data_prep.errors import DataPrepError

from .decide import StackPrediction
from .draw import draw_stack, figure_size, stack_title
from .load import TrainedModel


class PredictionViewer:
    """The reports in a window, one stack at a time: left/right (or p/n) change stack, c toggles Grad-CAM,
    q closes. `fig` defaults to a new pyplot figure."""

    def __init__(self, stacks: Sequence[StackPrediction], trained: TrainedModel, fig=None):
        if not stacks:
            raise DataPrepError("nothing to show: no stacks")
        import matplotlib.pyplot as plt
        self.stacks, self.trained = list(stacks), trained
        self.index, self.show_cam = 0, False
        longest = max(len(s.slices) for s in self.stacks)
        self.fig = fig if fig is not None else plt.figure(figsize=figure_size(longest, "image"))
        manager = self.fig.canvas.manager
        if manager is not None and getattr(manager, "key_press_handler_id", None) is not None:
            # matplotlib's navigation keys (c and left = back, q = quit) clash with ours
            self.fig.canvas.mpl_disconnect(manager.key_press_handler_id)
            manager.key_press_handler_id = None
        self.fig.canvas.mpl_connect("key_press_event", self._on_key)
        self.draw()

    def draw(self) -> None:
        stack = self.stacks[self.index]
        extra = (f"\nstack {self.index + 1}/{len(self.stacks)}: left/right change stack, c Grad-CAM "
                 f"{'off' if self.show_cam else 'on'}, q close")
        draw_stack(self.fig, stack, self.trained.classes, "cam" if self.show_cam else "image",
                   stack_title(stack, self.trained, extra), self.trained.segments)
        self.fig.canvas.draw_idle()

    def _on_key(self, event) -> None:
        if event.key in ("right", "n", "left", "p"):
            step = 1 if event.key in ("right", "n") else -1
            target = min(max(self.index + step, 0), len(self.stacks) - 1)
            if target != self.index:
                self.index = target
                self.draw()
        elif event.key == "c":
            self.show_cam = not self.show_cam
            self.draw()
        elif event.key == "q":
            import matplotlib.pyplot as plt
            plt.close(self.fig)


def check_interactive() -> None:
    """Refuse --show, before any work, where matplotlib cannot open a window."""
    import matplotlib.pyplot as plt
    fig = plt.figure()
    interactive = type(fig.canvas).required_interactive_framework is not None
    plt.close(fig)
    if not interactive:
        raise DataPrepError(f"--show: matplotlib backend {plt.get_backend()!r} cannot open a window (no "
                            f"display?); set MPLBACKEND to an interactive one, e.g. MPLBACKEND=TkAgg")


def show(stacks: Sequence[StackPrediction], trained: TrainedModel) -> None:
    """Open the viewer and wait until its window is closed."""
    import matplotlib.pyplot as plt
    PredictionViewer(stacks, trained)
    plt.show()
