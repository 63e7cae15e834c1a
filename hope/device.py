"""One device check for every command: `hope train` (`train.device`) and the `--device` option of
`hope generate`, `hope eval ...` and `hope info`.

`resolve_device(name)` turns `auto`, `cpu`, `cuda`, `cuda:N` or `mps` into a `torch.device`, or raises a
one-line `HopeError` naming the option when the name is not a device or the device is not on this machine.
"""

from __future__ import annotations

from hope.errors import HopeError


def resolve_device(name: str, option: str = "--device"):
    """The `torch.device` for `name`.

    Args:
        name: auto (CUDA when available, else CPU) | cpu | cuda | cuda:N | mps.
        option: how the user spelled the setting, for the message (`--device`, `train.device`).
    Returns:
        a torch.device that exists on this machine.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise HopeError(f"{option}={name} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise HopeError(f"{option}={name} but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise HopeError(f"{option}={name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise HopeError(f"{option}={name} but no MPS device is available")
    elif device.type != "cpu":
        raise HopeError(f"{option}={name} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device
