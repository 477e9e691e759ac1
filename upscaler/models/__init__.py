"""Generator architectures; importing this package registers them all."""

from upscaler.models import compact, edsr, edsr_reference, msrresnet, rrdbnet, srresnet, srvgg
from upscaler.models.errors import ModelError
from upscaler.models.registry import (
    ARCHITECTURES,
    Architecture,
    count_parameters,
    get_architecture,
    macs_per_input_pixel,
    register,
)

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "ModelError",
    "compact",
    "count_parameters",
    "edsr",
    "edsr_reference",
    "get_architecture",
    "macs_per_input_pixel",
    "msrresnet",
    "register",
    "rrdbnet",
    "srresnet",
    "srvgg",
]
