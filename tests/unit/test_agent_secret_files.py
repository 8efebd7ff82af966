"""Secret files on the agent: the tmpfs check, projection, modes, env files, persistence."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from agent.runtime.base import (
    ReplicaSpec,
    ResolvedSecrets,
    SecretEnvVar,
    SecretFile,
    SecretKeyRef,
    SecretMount,
    SecretVolume,
    secret_volume_env_name,
)
from agent.runtime.docker import (
    SECRET_SHELL_TARGET,
    _is_static_elf,
    _original_argv,
    secret_env_entrypoint,
)
from agent.secretfs import (
    SecretDeliveryError,
    SecretFiles,
    ensure_memory_backed,
    env_file_text,
    filesystem_type,
    projected_files,
)
from agent.server import validate_spec
from agent.supervisor import spec_from_record, spec_to_record
from cloudless.api import agent_pb2
from tests.conftest import unavailable

MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=123k,mode=755
25 24 0:23 / /dev/shm rw,relatime shared:5 - ext4 /dev/vda rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
30 25 0:27 / /dev/shm rw,nosuid,nodev shared:7 master:2 - tmpfs tmpfs rw,size=24g
31 27 0:28 / /run/my\040secrets rw - ramfs ramfs rw
32 27 0:29 / /dev/shmx rw - ext4 /dev/vdb rw
"""


# ---------------------------------------------------------------------------- mountinfo


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/dev/shm/cloudless-secrets/n1", "tmpfs"),  # the later mount on /dev/shm wins
        ("/dev/shm", "tmpfs"),
        ("/dev/shmx/secrets", "ext4"),  # a prefix of the name is not a parent directory
        ("/dev/null", "devtmpfs"),
        ("/run/my secrets/x", "ramfs"),  # octal escapes in mount points
        ("/var/lib/cloudless", "ext4"),
    ],
)
def test_filesystem_type_picks_the_innermost_topmost_mount(path: str, expected: str) -> None:
    assert filesystem_type(path, MOUNTINFO) == expected


def test_non_memory_filesystem_is_refused_with_the_reason(tmp_path: Path) -> None:
    ensure_memory_backed(Path("/dev/shm/cloudless-secrets"), MOUNTINFO)
    with pytest.raises(SecretDeliveryError) as caught:
        ensure_memory_backed(Path("/var/lib/cloudless/secrets"), MOUNTINFO)
    message = str(caught.value)
    assert "is on ext4, not tmpfs or ramfs" in message and "--secrets-dir" in message
    with pytest.raises(SecretDeliveryError, match="unknown filesystem"):
        ensure_memory_backed(Path("/x"), "")


def test_real_mountinfo_says_dev_shm_is_memory_backed() -> None:
    if not Path("/dev/shm").is_dir():
        unavailable("no /dev/shm on this machine")
    fstype = filesystem_type("/dev/shm", Path("/proc/self/mountinfo").read_text())
    assert fstype in {"tmpfs", "ramfs"}


# ---------------------------------------------------------------------------- files


@pytest.fixture
def files(tmp_path: Path) -> SecretFiles:
    # Pretend the test directory is a tmpfs: the check itself is tested above.
    fake = f"99 1 0:99 / {tmp_path} rw - tmpfs tmpfs rw\n"
    return SecretFiles(tmp_path / "secrets", "node-1", read_mountinfo=lambda: fake)


def volume(**overrides: object) -> SecretVolume:
    fields: dict[str, object] = {
        "volume_name": "creds",
        "mount_path": "/etc/creds",
        "namespace": "prod",
        "name": "db",
        "audience": "api",
    }
    fields.update(overrides)
    return SecretVolume(**fields)  # type: ignore[arg-type]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_volume_files_get_modes_and_private_directories(files: SecretFiles) -> None:
    vol = volume(
        files=(SecretFile("password", "password"), SecretFile("user", "db/user", 0o440)),
        default_mode=0o400,
    )
    data = {"password": b"s3cret", "user": b"app", "unused": b"x"}
    directory = files.write_volume("r1", vol, projected_files(vol, data))
    assert (directory / "password").read_bytes() == b"s3cret"
    assert (directory / "db" / "user").read_bytes() == b"app"
    assert mode(directory / "password") == 0o400
    assert mode(directory / "db" / "user") == 0o440
    assert not (directory / "unused").exists()
    assert mode(directory) == 0o750  # group may enter because a file is group-readable
    for private in (files.root, files.base, files.replica_dir("r1"), directory.parent):
        assert mode(private) == 0o700


def test_every_key_without_items_and_removed_keys_disappear(files: SecretFiles) -> None:
    vol = volume()
    directory = files.write_volume("r1", vol, projected_files(vol, {"a": b"1", "b": b"2"}))
    assert sorted(p.name for p in directory.iterdir()) == ["a", "b"]
    assert mode(directory / "a") == 0o400 and mode(directory) == 0o700
    files.write_volume("r1", vol, projected_files(vol, {"a": b"new"}))
    assert sorted(p.name for p in directory.iterdir()) == ["a"]
    assert (directory / "a").read_bytes() == b"new"


def test_missing_key_names_secret_volume_and_keys() -> None:
    vol = volume(files=(SecretFile("password", "p"),))
    with pytest.raises(SecretDeliveryError) as caught:
        projected_files(vol, {"user": b"x"})
    message = str(caught.value)
    assert "secret prod/db has no key 'password' for volume 'creds'" in message
    assert "its keys: user" in message


@pytest.mark.parametrize("bad", ["../escape", "/abs", "a//b", ".", ""])
def test_paths_escaping_the_volume_are_refused(files: SecretFiles, bad: str) -> None:
    vol = volume(files=(SecretFile("k", bad),))
    with pytest.raises(SecretDeliveryError, match="must be relative"):
        files.write_volume("r1", vol, projected_files(vol, {"k": b"v"}))
    assert not (files.root.parent / "escape").exists()


def test_a_planted_symlink_is_never_followed(files: SecretFiles, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    files.root.mkdir()
    files.base.symlink_to(elsewhere)
    with pytest.raises(SecretDeliveryError, match="not a directory owned by the agent"):
        files.write_env("r1", {"A": "b"})
    assert list(elsewhere.iterdir()) == []


def test_refuses_when_the_root_is_not_memory_backed(tmp_path: Path) -> None:
    disk = SecretFiles(tmp_path, "n", read_mountinfo=lambda: MOUNTINFO.replace("/dev/shm", "/x"))
    with pytest.raises(SecretDeliveryError, match="not tmpfs or ramfs"):
        disk.write_env("r1", {"A": "b"})
    assert not (tmp_path / "n").exists()


def test_env_file_round_trips_through_a_real_shell(files: SecretFiles) -> None:
    values = {"A": 'it\'s "quoted" $HOME `x` \\ ;', "B": "line1\nline2", "C": ""}
    path = files.write_env("r1", values)
    assert mode(path) == 0o444
    shell = shutil.which("sh")
    assert shell is not None
    script = f'. {path}; printf "%s|" "$A" "$B" "$C"'
    out = subprocess.run([shell, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout == "|".join(values.values()) + "|"
    assert env_file_text({"X": "1"}) == "export X=1\n"


def test_nul_bytes_cannot_become_env_values(files: SecretFiles) -> None:
    with pytest.raises(SecretDeliveryError, match="NUL"):
        files.write_env("r1", {"A": "a\x00b"})


def test_remove_and_remove_stale(files: SecretFiles) -> None:
    for rid in ("keep", "gone", "also-gone"):
        files.write_env(rid, {"A": "b"})
    assert files.remove_stale({"keep"}) == ["also-gone", "gone"]
    assert [p.name for p in files.base.iterdir()] == ["keep"]
    files.remove("keep")
    assert list(files.base.iterdir()) == []


# ---------------------------------------------------------------------------- specs


def secret_spec() -> ReplicaSpec:
    return ReplicaSpec(
        replica_id="r1",
        namespace="default",
        workload="web",
        node_id="n1",
        image="busybox",
        secret_env=(SecretEnvVar("DB_PASSWORD", SecretKeyRef("prod", "db", "password", "api")),),
        secret_volumes=(volume(files=(SecretFile("password", "password", 0o440),)),),
        resolved=ResolvedSecrets(
            env={"DB_PASSWORD": "s3cret"},
            mounts=(SecretMount("creds", "/dev/shm/x", "/etc/creds"),),
        ),
    )


def test_desired_record_keeps_references_and_never_values() -> None:
    spec = secret_spec()
    record = spec_to_record(spec)
    assert "s3cret" not in repr(record) and "s3cret" not in repr(spec)
    restored = spec_from_record(record)
    assert restored == spec and restored.resolved is None
    assert restored.secret_volumes[0].files[0].mode == 0o440


def test_drivers_refuse_unresolved_specs() -> None:
    with pytest.raises(Exception, match="not resolved"):
        secret_spec().without_secret_values().require_resolved("docker")


def test_volume_env_name() -> None:
    assert secret_volume_env_name("db-creds") == "CLOUDLESS_SECRET_VOLUME_DB_CREDS"


def test_agent_validates_secret_references() -> None:
    spec = agent_pb2.ReplicaSpec(
        replica_id="r1",
        namespace="default",
        workload="web",
        runtime="exec",
        secret_env=[agent_pb2.SecretEnvVar(name="1X", ref=agent_pb2.SecretKeySelector())],
        secret_volumes=[
            agent_pb2.SecretVolume(
                volume_name="creds",
                mount_path="/.cloudless/env",
                namespace="p",
                name="n",
                audience="a",
                files=[agent_pb2.SecretFile(key="k", path="../x", mode=0o1000)],
            )
        ],
    )
    problems = "; ".join(validate_spec(spec))
    for text in ("C identifier", "audience required", "reserved", "'../x'", "0777"):
        assert text in problems


# ---------------------------------------------------------------------------- docker wrapper


def test_static_elf_detection() -> None:
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        unavailable("no /bin/busybox (apt-get install busybox-static)")
    assert _is_static_elf(busybox.read_bytes()[: 64 * 1024])
    assert not _is_static_elf(Path(os.path.realpath(shutil.which("ls") or "/bin/ls")).read_bytes())
    assert not _is_static_elf(b"#!/bin/sh\necho hi\n")


def test_original_argv_follows_kubernetes_command_and_args() -> None:
    image = {"Entrypoint": ["/entry"], "Cmd": ["--default"]}
    base = secret_spec()
    assert _original_argv(base, image) == ["/entry", "--default"]
    only_args = ReplicaSpec(**{**base.__dict__, "args": ("-v",)})
    assert _original_argv(only_args, image) == ["/entry", "-v"]
    command = ReplicaSpec(**{**base.__dict__, "command": ("sh",)})
    assert _original_argv(command, image) == ["sh"]
    assert _original_argv(base, {"Entrypoint": None, "Cmd": None}) == []


def test_wrapper_sources_the_env_file_then_execs_the_command(tmp_path: Path) -> None:
    entrypoint = secret_env_entrypoint(["printenv", "A"])
    assert entrypoint[:3] == [SECRET_SHELL_TARGET, "sh", "-c"]
    script = entrypoint[3].replace("/.cloudless/env", str(tmp_path / "env"))
    (tmp_path / "env").write_text(env_file_text({"A": "from-file"}))
    shell = shutil.which("sh")
    assert shell is not None
    run = subprocess.run([shell, "-c", script, *entrypoint[4:]], capture_output=True, text=True)
    assert run.stdout == "from-file\n"
    missing = subprocess.run(
        [shell, "-c", script, "sh", "no-such-program"], capture_output=True, text=True
    )
    assert missing.returncode == 127 and "not found in PATH" in missing.stderr
