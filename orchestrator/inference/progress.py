"""Progress of ``predict`` over many images: a rich bar on a terminal, plain lines otherwise.

Plain lines keep logs and pipes readable (a bar would print control codes there).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from orchestrator.inference.loading import LoadedRun
from orchestrator.inference.predict import PredictResult, predict_images

__all__ = ["predict_with_progress"]


def predict_with_progress(loaded: LoadedRun, paths: Sequence[Path], out_dir: Path, *,
                          console: Console) -> PredictResult:
    """``predict_images`` showing one bar step or one ``[i/n] path`` line per image
    (nothing for a single image)."""
    if len(paths) < 2:
        return predict_images(loaded, paths, out_dir)
    if not console.is_terminal:
        done = iter(range(1, len(paths) + 1))

        def line(path: Path, error: str | None) -> None:
            status = "skipped" if error else "done"
            console.print(f"[{next(done)}/{len(paths)}] {status} {path}", highlight=False,
                          markup=False)

        return predict_images(loaded, paths, out_dir, progress=line)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("predicting", total=len(paths))
        return predict_images(loaded, paths, out_dir,
                              progress=lambda path, error: bar.advance(task))
