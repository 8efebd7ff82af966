"""Container images Cloudless builds locally: many devices (and test machines) have no registry.

A static busybox binary on ``FROM scratch`` gives a ~2 MB image with a shell and the usual
tools (``sh``, ``sleep``, ``echo``, ``env``) that builds in about a second and needs no
network at all.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["BUSYBOX_TAG", "build_busybox_image"]

#: Default tag of the test image.
BUSYBOX_TAG = "cloudless/busybox:latest"

_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
CMD ["/bin/sh"]
"""


def build_busybox_image(
    client: Any, tag: str = BUSYBOX_TAG, *, busybox: Path = Path("/bin/busybox")
) -> str:
    """Build (once) a busybox image from the host's static busybox; returns the image id.

    Idempotent: if ``tag`` already exists it is reused, so a session fixture and several
    test processes can all call this cheaply.

    Args:
        client: A ``docker.DockerClient`` (create it with ``version="auto"`` for old engines).
        tag: Image tag to build or reuse.
        busybox: A *statically linked* busybox; the image has no libc to load a dynamic one.

    Raises:
        FileNotFoundError: No busybox binary on this machine.
    """
    import docker.errors  # here: importing the docker SDK costs ~0.1 s of every CLI start

    try:
        return str(client.images.get(tag).id)
    except docker.errors.ImageNotFound:
        pass
    if not busybox.is_file():
        raise FileNotFoundError(
            f"{busybox} not found: the test image needs a static busybox "
            "(install it with `apt-get install busybox-static`)"
        )
    with tempfile.TemporaryDirectory(prefix="cloudless-busybox-") as context:
        shutil.copy2(busybox, Path(context) / "busybox")
        (Path(context) / "Dockerfile").write_text(_DOCKERFILE)
        image, _ = client.images.build(path=context, tag=tag, rm=True, forcerm=True)
    return str(image.id)
