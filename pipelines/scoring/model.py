"""The scorer's model: which artifact scores (resolution) and the network each worker keeps.

:func:`resolve_model` picks the registry's champion (or a given model id),
reads its ``meta.json`` and ``model.pt`` and refuses an artifact whose feature
spec does not hash to the ``feature_mapping_id`` it records. The executors get
a :class:`ScoringModel`: the weights travel once per executor as a broadcast
of the ``model.pt`` bytes, and each Python worker builds the network once and
keeps it in a per-process cache keyed by model id (:func:`cached_network`;
Spark reuses Python workers across tasks).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from esmm.config.schema import Config, FeatureSpec


class ScoringInputError(ValueError):
    """The model and the candidates do not fit together; nothing was scored."""


@dataclass
class ScoringModel:
    """What the executors need: the id, the meta (config + spec), the weights as bytes and
    the calibration maps (None: uncalibrated)."""

    model_id: str
    meta: dict[str, Any]
    state_bytes: bytes
    calibration: Any = None  # esmm.calibration.maps.CalibrationMaps

    @property
    def spec(self) -> FeatureSpec:
        from esmm.registry.artifacts import spec_of

        return spec_of(self.meta)


def resolve_model(cfg: Config, model_id: Optional[str] = None) -> ScoringModel:
    """The artifact of ``model_id`` (default: the registry's champion), checked for consistency."""
    from esmm.registry import artifacts as registry

    if model_id is None:
        champ = registry.champion(cfg.lakehouse.path("registry"))
        if champ is None:
            raise ScoringInputError(
                f"no champion in the registry {cfg.lakehouse.path('registry')}: train and promote a "
                f"model first (esmm nightly, or esmm train then promote), or pass --model MODEL_ID"
            )
        model_id, artifact_dir = champ["model_id"], champ["artifact_dir"]
    else:
        rows = [r for r in registry.list_models(cfg.lakehouse.path("registry")) if r["model_id"] == model_id]
        artifact_dir = rows[0]["artifact_dir"] if rows else str(Path(cfg.lakehouse.path("models")) / model_id)
    meta = registry.read_meta(artifact_dir)
    spec = registry.spec_of(meta)
    if spec.mapping_id != meta.get("feature_mapping_id"):
        raise ScoringInputError(
            f"model {model_id} ({artifact_dir}/meta.json): its feature spec hashes to "
            f"{spec.mapping_id} but it was trained on feature mapping {meta.get('feature_mapping_id')}; "
            f"the artifact does not describe its own inputs, refusing to score with it"
        )
    state_bytes = (Path(artifact_dir) / "model.pt").read_bytes()
    from esmm.calibration import maps as calibration

    return ScoringModel(model_id, meta, state_bytes, calibration.load(artifact_dir, model_id))


_MODEL_CACHE: dict[str, Any] = {}  # per Python worker process: model id -> network in eval mode


def cached_network(model_id: str, meta_json: str, state_bytes_bc) -> Any:
    """Build the network once per worker process; later tasks of the job reuse it."""
    net = _MODEL_CACHE.get(model_id)
    if net is None:
        import torch

        from esmm.config.loader import section_from_dict
        from esmm.config.schema import ModelConfig
        from esmm.model.network import build_model
        from esmm.registry.artifacts import spec_of

        meta = json.loads(meta_json)
        net = build_model(section_from_dict(ModelConfig, meta["model"], "meta.model"), spec_of(meta))
        state = torch.load(io.BytesIO(state_bytes_bc.value), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        net.eval()
        _MODEL_CACHE.clear()  # one model per worker at a time: old champions do not pile up
        _MODEL_CACHE[model_id] = net
    return net
