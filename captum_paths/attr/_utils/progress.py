"""Progress bars (tqdm directly: Captum's wrapper changed its signature in 0.9)."""

from contextlib import contextmanager
from typing import Iterator, Optional

from tqdm import tqdm  # plain bars: tqdm.auto warns in notebooks without ipywidgets

__all__ = ["progress_bar", "chunk_slices", "AUTO_PROGRESS_SECONDS"]

#: with ``show_progress=None`` a bar appears once a call has run this long (short calls stay silent)
AUTO_PROGRESS_SECONDS = 5.0


@contextmanager
def progress_bar(
    show_progress: Optional[bool], total: Optional[int] = None, desc: str = "", unit: str = "it"
) -> Iterator:
    """A tqdm bar when ``show_progress`` is True; with ``None``, one that shows itself only after
    :data:`AUTO_PROGRESS_SECONDS`; with False an object whose ``update`` does nothing."""
    if show_progress is None or show_progress:
        delay = AUTO_PROGRESS_SECONDS if show_progress is None else 0.0
        bar = tqdm(total=total, desc=desc, unit=unit, leave=False, delay=delay)
        try:
            yield bar
        finally:
            bar.close()
    else:
        yield _NoBar()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def refresh(self) -> None:
        pass


def chunk_slices(n: int, size: Optional[int]):
    """Slices covering ``range(n)`` in chunks of at most ``size`` (all at once when ``size`` is None)."""
    size = n if size is None or size >= n else size
    return [slice(i, min(i + size, n)) for i in range(0, n, max(size, 1))]
