"""Instantiate a registered dataset with its configured parameters."""

from __future__ import annotations

from anbench.config import BenchConfig
from anbench.registry import DATASETS


def dataset_source(config: BenchConfig, name: str):
    """The dataset plugin with validated params; `run.data_root` fills an unset `data_root`."""
    params = config.plugin_params("datasets", name)
    if (params is not None and "data_root" in type(params).model_fields
            and params.data_root is None and config.run.data_root):
        params = params.model_copy(update={"data_root": config.run.data_root})
    return DATASETS.get(name)(params)
