"""Resource requests: what one replica reserves on its node (CPU, memory, storage, GPUs,
egress bandwidth), parsed once from quantity strings into integers and written back as
quantity strings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from pydantic import ConfigDict, Field, field_serializer, field_validator

from cloudless.quantity import (
    QuantityError,
    format_bandwidth,
    format_bytes,
    format_cpu,
    parse_bandwidth,
    parse_bytes,
    parse_cpu,
)
from cloudless.spec._base import _Model
from cloudless.spec._messages import _problem, _show

DEFAULT_CPU_MILLIS: Final = 100
MIN_CPU_MILLIS: Final = 1
MAX_CPU_MILLIS: Final = 1024 * 1000
DEFAULT_MEMORY_BYTES: Final = 64 * 1024**2
# Docker refuses limits under 6 MB; one floor for every runtime keeps manifests portable.
MIN_MEMORY_BYTES: Final = 6 * 1024**2
MAX_MEMORY_BYTES: Final = 16 * 1024**4
MAX_STORAGE_BYTES: Final = 1024**5
MAX_GPUS: Final = 64
MAX_BANDWIDTH_BPS: Final = 400 * 1000**3  # a 400G link


def _parse_quantity(
    value: object,
    parse: Callable[[str | int | float], int],
    render: Callable[[int], str],
    what: str,
    low: int,
    high: int,
    unit_hint: str,
) -> int:
    """Parse one resource quantity and check its bounds, phrasing errors for manifests."""
    if not isinstance(value, str | int | float):
        raise _problem(f"must be a {what} quantity, got {_show(value)}", unit_hint)
    try:
        amount = parse(value)
    except QuantityError as error:
        raise _problem(
            f"must be a valid {what} quantity, got {_show(value)} ({error.reason})", unit_hint
        ) from None
    if amount < low:
        raise _problem(
            f"must be at least {render(low)}, got {_show(value)}", f"request {render(low)} or more"
        )
    if amount > high:
        raise _problem(
            f"must be at most {render(high)}, got {_show(value)}",
            f"request {render(high)} or less",
        )
    return amount


class ResourceRequirements(_Model):
    """What one replica reserves on its node; the scheduler packs nodes by these numbers.

    Stored as integers: ``cpu_millis`` (millicores), ``memory_bytes`` and ``storage_bytes``.
    In manifests and dumps the keys are ``cpu``, ``memory`` and ``storage`` with quantity
    strings; a bare number means cores (cpu) or bytes (memory, storage). The integer field
    names are deliberately *not* accepted as input, so ``cpu: 100`` can never be confused with
    100 millicores. Build one from integers with :meth:`from_units`.
    """

    model_config = ConfigDict(validate_by_name=False)

    cpu_millis: int = Field(
        DEFAULT_CPU_MILLIS, validation_alias="cpu", serialization_alias="cpu", examples=["100m"]
    )
    memory_bytes: int = Field(
        DEFAULT_MEMORY_BYTES,
        validation_alias="memory",
        serialization_alias="memory",
        examples=["64Mi"],
    )
    storage_bytes: int = Field(
        0, validation_alias="storage", serialization_alias="storage", examples=["1Gi"]
    )
    #: Whole GPUs; unset (the usual case) means none and keeps older specs' hashes.
    gpu: int | None = Field(None, validation_alias="gpu", serialization_alias="gpu", examples=[1])
    #: Egress bandwidth reserved on the node, bits/s (``10Mbps`` in manifests).
    bandwidth_bps: int | None = Field(
        None, validation_alias="bandwidth", serialization_alias="bandwidth", examples=["10Mbps"]
    )

    @field_validator("cpu_millis", mode="before")
    @classmethod
    def _parse_cpu(cls, value: object) -> int:
        return _parse_quantity(
            value, parse_cpu, format_cpu, "CPU", MIN_CPU_MILLIS, MAX_CPU_MILLIS,
            "use a CPU quantity like 100m (0.1 core), 0.5 or 2",
        )  # fmt: skip

    @field_validator("memory_bytes", mode="before")
    @classmethod
    def _parse_memory(cls, value: object) -> int:
        return _parse_quantity(
            value, parse_bytes, format_bytes, "memory", MIN_MEMORY_BYTES, MAX_MEMORY_BYTES,
            "use a quantity like 64Mi or 1Gi (Docker needs at least 6M)",
        )  # fmt: skip

    @field_validator("storage_bytes", mode="before")
    @classmethod
    def _parse_storage(cls, value: object) -> int:
        return _parse_quantity(
            value, parse_bytes, format_bytes, "storage", 0, MAX_STORAGE_BYTES,
            "use a quantity like 0, 512Mi or 10Gi",
        )  # fmt: skip

    @field_validator("gpu", mode="before")
    @classmethod
    def _parse_gpu(cls, value: object) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _problem(
                f"must be a whole number of GPUs, got {_show(value)}",
                "write an integer such as 1 (GPUs are not shared between replicas)",
            )
        if not 0 <= value <= MAX_GPUS:
            raise _problem(
                f"must be between 0 and {MAX_GPUS}, got {value}", f"request 0 to {MAX_GPUS} GPUs"
            )
        return value

    @field_validator("bandwidth_bps", mode="before")
    @classmethod
    def _parse_bandwidth(cls, value: object) -> int | None:
        if value is None:
            return None
        return _parse_quantity(
            value, parse_bandwidth, format_bandwidth, "bandwidth", 0, MAX_BANDWIDTH_BPS,
            "use a bandwidth like 500Kbps, 10Mbps or 1Gbps",
        )  # fmt: skip

    @field_serializer("bandwidth_bps")
    def _dump_bandwidth(self, value: int | None) -> str | None:
        return None if value is None else format_bandwidth(value)

    @property
    def gpus(self) -> int:
        return self.gpu or 0

    @property
    def bandwidth(self) -> int:
        """Requested bits/s (0 when unset)."""
        return self.bandwidth_bps or 0

    @field_serializer("cpu_millis")
    def _dump_cpu(self, value: int) -> str:
        return format_cpu(value)

    @field_serializer("memory_bytes", "storage_bytes")
    def _dump_bytes(self, value: int) -> str:
        return format_bytes(value)

    @classmethod
    def from_units(
        cls,
        *,
        cpu_millis: int = DEFAULT_CPU_MILLIS,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        storage_bytes: int = 0,
    ) -> ResourceRequirements:
        """Build from integers (millicores, bytes), with the same validation as a manifest."""
        return cls.model_validate(
            {
                "cpu": format_cpu(cpu_millis),
                "memory": format_bytes(memory_bytes),
                "storage": format_bytes(storage_bytes),
            }
        )
