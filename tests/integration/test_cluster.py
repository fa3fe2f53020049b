"""Placement on a real local Ray cluster that declares logical GPUs (no CUDA needed: Ray only counts them)."""

from __future__ import annotations

from pathlib import Path

from bench import cluster
from bench.config import ModelConfig, parse_config
from bench.schedule import Replica

from .conftest import REPO


def _config(tmp_path: Path, tensor_parallel_size: int):
    model = {"name": "big", "source": "org/big", "serve": {"tensor_parallel_size": tensor_parallel_size}}
    data = {"run": {"name": "p", "results_dir": str(tmp_path)}, "models": [model]}
    return parse_config(data, source="placement", base=REPO)


def test_without_gpus_a_model_reserves_no_cpu_so_every_server_stays_up() -> None:
    model = ModelConfig(name="m", source="org/m")
    assert cluster.placement_for(model, cluster_gpus=0) == cluster.Placement(0, 0, None)


def test_tensor_parallel_model_gets_its_gpus_in_one_strict_pack_bundle(tmp_path: Path) -> None:
    import ray
    from ray.util import placement_group_table

    cluster.connect(num_cpus=2, num_gpus=4)
    try:
        config = _config(tmp_path, tensor_parallel_size=2)
        model = config.models[0]
        placement = cluster.placement_for(model, cluster_gpus=4)
        assert placement.bundle == {"GPU": 2, "CPU": 1}
        run = cluster.ModelRun(model, placement, Replica("big"))
        cluster.RayWorkers(config, tmp_path).launch(run)
        assert len(ray.get(run.actor.assigned_gpus.remote(), timeout=120)) == 2
        groups = [g for g in placement_group_table().values() if g["name"] == "distill-bench-big"]
        assert [g["strategy"] for g in groups] == ["STRICT_PACK"]
    finally:
        cluster.shutdown()
