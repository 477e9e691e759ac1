"""Generator architectures; importing this package registers them all."""

from upscaler.models import compact, edsr, srresnet
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
    "compact",
    "count_parameters",
    "edsr",
    "get_architecture",
    "macs_per_input_pixel",
    "register",
    "srresnet",
]
