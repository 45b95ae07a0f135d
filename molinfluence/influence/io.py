"""The IHVP as a result and a file (``hessian_inverse_fast.pt``): s per parameter, its diagnostics and arguments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_path

FORMAT = "molinfluence-ihvp/1"


@dataclass
class IHVPResult:
    """``s = (C + λI)⁻¹ v`` per parameter (CPU tensors, model order), solver diagnostics and the arguments used.

    ``stats["holds"]`` says in words what ``s`` is for the method that made it (e.g. for ``ekfac``: the EK-FAC
    approximation of the Gauss–Newton inverse applied to v, over the Linear modules only).
    """

    ihvp: dict[str, torch.Tensor]
    stats: dict[str, Any]
    args: dict[str, Any]

    @property
    def param_names(self) -> list[str]:
        return list(self.ihvp)

    @property
    def shapes(self) -> dict[str, list[int]]:
        return {n: list(t.shape) for n, t in self.ihvp.items()}


def save_ihvp(result: IHVPResult, path: str | Path) -> Path:
    """Write ``result`` as a torch file of tensors and plain containers (``torch.load(weights_only=True)``), atomically."""
    payload = {
        "format": FORMAT,
        "param_names": result.param_names,
        "shapes": [list(t.shape) for t in result.ihvp.values()],
        "ihvp": {n: t.detach().to("cpu").contiguous() for n, t in result.ihvp.items()},
        "stats": result.stats,
        "args": result.args,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_ihvp(path: str | Path) -> IHVPResult:
    """Read a file written by :func:`save_ihvp` (no pickle code runs); ValueError naming the file if it is not one."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not an IHVP file"
        raise ValueError(f"{path}: not a readable IHVP file ({str(exc).splitlines()[0]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not an IHVP file of format {FORMAT!r}; recompute it with compute_ihvp/save_ihvp")
    ihvp, names, shapes = payload.get("ihvp"), payload.get("param_names"), payload.get("shapes")
    if not isinstance(ihvp, dict) or names != list(ihvp) or not isinstance(shapes, list) or len(shapes) != len(names):
        raise ValueError(f"{path}: the parameter names, shapes and tensors of the IHVP file do not match")
    for name, shape in zip(names, shapes):
        t = ihvp[name]
        if not isinstance(t, torch.Tensor) or list(t.shape) != list(shape) or not t.is_floating_point():
            raise ValueError(f"{path}: tensor {name!r} does not have the recorded shape {shape}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{path}: tensor {name!r} holds non-finite values")
    return IHVPResult(ihvp=dict(ihvp), stats=dict(payload.get("stats") or {}), args=dict(payload.get("args") or {}))
