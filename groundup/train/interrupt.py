"""Ctrl-C during training: finish the step, save a checkpoint, stop.

A SIGINT that lands mid-step (between backward and the optimizer step, or inside AdamW's update) leaves a state
no checkpoint can describe. So while the loop runs, the first Ctrl-C only raises a flag; the loop looks at it
after each completed step, saves the checkpoint (atomically, as every save) and raises TrainingInterrupted, a
KeyboardInterrupt, from which TrainConfig(resume=True) continues exactly. A second Ctrl-C stops at once; the
last saved checkpoint stands.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C after a completed step whose checkpoint was saved."""

    def __init__(self, step: int, max_steps: int, checkpoint: Path) -> None:
        super().__init__(f"interrupted after step {step}/{max_steps}; checkpoint saved to {checkpoint}; "
                         "continue it exactly with TrainConfig(resume=True)")
        self.step, self.max_steps, self.checkpoint = step, max_steps, checkpoint


class DeferredInterrupt:
    """A context in which Ctrl-C sets `pressed` instead of raising (a second Ctrl-C raises at once).

    Active only in the main thread and only over Python's own SIGINT handler: a handler the program installed,
    or SIGINT ignored (nohup), is left alone."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous: Any = None  # the handler to put back

    def __enter__(self) -> DeferredInterrupt:
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
