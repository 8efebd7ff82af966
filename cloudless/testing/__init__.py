"""Test helpers shipped with Cloudless, so users can test their own workloads and policies."""

from __future__ import annotations

from cloudless.images import BUSYBOX_TAG, build_busybox_image

__all__ = ["BUSYBOX_TAG", "build_busybox_image"]
