"""Fixtures for the napari widget tests: a viewer with the docked widget and tiny stacks."""

from __future__ import annotations

import numpy as np
import pytest

from deconflow._napari._sample_data import simulate


@pytest.fixture(scope="session")
def simulated() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(measured, truth, psf) of the simulated sample, cropped small for speed."""
    measured, truth, psf = simulate()
    return measured[4:20, 8:56, 8:56].copy(), truth[4:20, 8:56, 8:56].copy(), psf


@pytest.fixture
def viewer_widget(make_napari_viewer):
    """A viewer and the deconvolution widget docked from the plugin manifest."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("deconflow", "Deconvolution")
    return viewer, widget


def _notifications(severity: str):
    """Yield the list of messages of ``severity`` ("error", "warning") shown meanwhile."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    wanted = NotificationSeverity(severity)
    seen: list[str] = []

    def record(event) -> None:
        if event.severity == wanted:
            seen.append(str(event.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def errors():
    """Error notifications shown while the test runs (their messages)."""
    yield from _notifications("error")


@pytest.fixture
def warnings_shown():
    """Warning notifications shown while the test runs (their messages)."""
    yield from _notifications("warning")


@pytest.fixture
def wait_idle(qtbot):
    """Wait until a widget's worker has finished (processing Qt events meanwhile)."""

    def wait(widget, timeout: int = 30_000) -> None:
        qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)

    return wait
