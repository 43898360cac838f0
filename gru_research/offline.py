"""Offline means no packet leaves: the switches that keep W&B, TFDS and TensorFlow local.

With W&B mode ``offline`` or ``disabled`` (docs/design.md §5.3) a run opens no socket to
anything but the local wandb service process (unix or loopback sockets). Left to itself, wandb
0.31 does not honour that: the process-wide settings it builds in ``wandb.setup`` default to
``online``, so its telemetry recorder (OpenTelemetry, built from those settings, not from the
run's) resolves and probes ``api.forge.coreweave.com`` from a thread of the training process
even while the run itself is offline. Each concern below has one small switch; they are applied
in code, so no global wandb settings file and no environment variable can turn them back on.
``online`` runs are left exactly as wandb makes them.

TFDS and TensorFlow get their own switches, applied whenever the project reads a TFDS dataset
from a local folder: TFDS must not look for prepared data or dataset metadata on GCS, and
TensorFlow's Google auth provider must not probe the GCE metadata server.

Every environment variable here is set in this process only (``os.environ``, inherited by the
processes it starts, such as the wandb service), because these libraries read no other switch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

LOCAL_WANDB_MODES = ("offline", "disabled")

WANDB_LOCAL_SETTINGS: dict[str, Any] = {
    # System metrics and machine info are gathered by wandb's system monitor (wandb-symon),
    # which may ask CoreWeave's metadata server (169.254.169.254) and scrapes any OpenMetrics or
    # DCGM endpoints the global settings name; with both off it is never started.
    "x_disable_stats": True,
    "x_disable_machine_info": True,
}
"""``wandb.Settings`` fields that keep an offline run's wandb processes off the network."""

WANDB_LOCAL_ENVIRONMENT = {
    # read by wandb's telemetry recorder (off: it records nothing) and when the service process
    # starts (off: ``wandb-core --no-observability``, no error reports); no Settings field says it
    "WANDB_ERROR_REPORTING": "false",
}
"""Environment variables wandb reads for its telemetry and error reports, set for local modes."""

TENSORFLOW_LOCAL_ENVIRONMENT = {
    # TensorFlow's (TSL's) Google auth provider skips the GCE metadata server when this is true
    "NO_GCE_CHECK": "True",
}
"""Environment variables that stop TensorFlow probing Google Cloud, set before it is imported."""


def is_local_wandb_mode(mode: str) -> bool:
    """Whether W&B ``mode`` promises that nothing leaves the machine (offline or disabled)."""
    return mode in LOCAL_WANDB_MODES


def wandb_settings(mode: str) -> dict[str, Any]:
    """The ``wandb.Settings`` fields for a run in ``mode``: the mode, and for local modes the
    switches of :data:`WANDB_LOCAL_SETTINGS` (online: the mode alone, wandb's behaviour)."""
    return {"mode": mode, **(WANDB_LOCAL_SETTINGS if is_local_wandb_mode(mode) else {})}


def wandb_environment(mode: str) -> dict[str, str]:
    """The environment variables a run in ``mode`` needs set (none for ``online``)."""
    return dict(WANDB_LOCAL_ENVIRONMENT) if is_local_wandb_mode(mode) else {}


def set_environment(variables: Mapping[str, str]) -> None:
    """Set ``variables`` in this process's environment, over any value already there."""
    os.environ.update(variables)


def keep_wandb_local(mode: str) -> None:
    """Make the process-wide wandb state local before a run in ``mode`` is started.

    ``wandb.init(mode="offline")`` makes the run offline, but wandb's telemetry is built from
    the settings of ``wandb.setup`` (its process singleton), which read the global settings files
    and ``WANDB_*`` variables and otherwise default to ``online``. So for local modes this sets
    :func:`wandb_environment` (before the service process starts, which reads it) and hands
    :func:`wandb_settings` to ``wandb.setup``, whose settings then say offline too, so its
    telemetry proxy is not built in this process. ``online``: nothing is changed.
    """
    if not is_local_wandb_mode(mode):
        return
    set_environment(wandb_environment(mode))
    import wandb

    wandb.setup(settings=wandb.Settings(**wandb_settings(mode)))


def is_local_path(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is on this machine (``None``, the default folder, counts): no URL."""
    return path is None or "://" not in os.fspath(path)


def keep_tensorflow_local() -> None:
    """Stop TensorFlow probing the GCE metadata server; call before TensorFlow is imported.

    TensorFlow's file systems authenticate to Google Cloud lazily, and look for GCE credentials
    on the metadata server unless ``NO_GCE_CHECK`` is true; a local folder needs none.
    """
    set_environment(TENSORFLOW_LOCAL_ENVIRONMENT)


def keep_tfds_local() -> None:
    """Turn off TFDS's look-ups of ``gs://tfds-data`` (prepared data and dataset metadata).

    TFDS looks there from ``tfds.builder`` (dataset info) and from ``download_and_prepare``
    (prepared data) unless its module switch ``gcs_utils._is_gcs_disabled`` is set. 4.9.10 ships
    it set, but it is the only switch for the metadata look-up (no public option), so it is set
    here whatever the version or anything imported before says; ``try_gcs=False`` and
    ``try_download_gcs=False``, passed by the callers, cover the rest. Versions without the
    switch are left as they are.
    """
    from tensorflow_datasets.core.utils import gcs_utils

    if hasattr(gcs_utils, "_is_gcs_disabled"):
        gcs_utils._is_gcs_disabled = True
